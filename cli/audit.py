"""`fesaug audit`: print an :class:`~fesaug.audit.report.AuditReport` as a table, JSON or CSV, and plot it."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import click

from fesaug.audit.report import BY_COLUMNS, AuditReport, audit, plot_report
from fesaug.cli.params import aligned_table, checked_by
from fesaug.utils.errors import FesaugError
from fesaug.utils.plots import plot_format


@click.command("audit")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option("--by", type=click.Choice(BY_COLUMNS), help="Also count classes per value of this column.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table for people; json (one object) or csv (the histogram) on stdout for scripts.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=checked_by(plot_format),
    help="Write a stacked bar chart of real and synthetic images per class (.png, .svg or .pdf).",
)
@click.option(
    "--target",
    type=click.IntRange(min=1),
    metavar="N",
    help="Images wanted per class: show how many each class is short (csv: without --by only).",
)
@click.option("--strict", is_flag=True, help="Exit with status 1 when any problem is found (for CI).")
@click.option(
    "--no-check-images",
    is_flag=True,
    help="Do not read the images: faster, but missing, corrupt and changed files go unnoticed.",
)
def audit_command(
    manifest: Path, by: str | None, fmt: str, plot: Path | None, target: int | None, strict: bool, no_check_images: bool
) -> None:
    """Class histogram (real vs synthetic) and integrity problems of a MANIFEST.

    \b
    Problems found: missing, corrupt or changed images; duplicate images; subjects in more than
    one fold or split; synthetic rows without provenance, with a missing or mismatched parent,
    in the test split, or from a generator trained on held-out subjects; empty classes.
    They are reported without failing unless --strict is given.
    """
    report = audit(manifest, by=by, target=target, check_images=not no_check_images)
    if plot is not None:
        plot_report(report, plot)
        click.echo(f"wrote {plot}", err=True)
    if fmt == "json":
        click.echo(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    elif fmt == "csv":
        click.echo(_csv(report), nl=False)
        for p in report.problems:  # stdout holds only the CSV, so problems go to stderr
            click.echo(f"problem: {p.kind} ({p.count}): {p.message}", err=True)
    else:
        click.echo(format_table(report))
    if strict and report.problems:
        kinds = ", ".join(p.kind for p in report.problems)
        raise FesaugError(f"{len(report.problems)} kind(s) of problem found ({kinds}) and --strict is set")


def _group_label(value: object) -> str:
    return "(none)" if value is None else str(value)


def _ratio_text(report: AuditReport) -> str:
    ratio = report.imbalance_ratio
    if ratio is None:
        empty = [name for name, c in report.classes.items() if c.total == 0]
        return "undefined (no images)" if report.total == 0 else f"undefined (empty class: {', '.join(empty)})"
    largest = max(report.classes.items(), key=lambda kv: kv[1].effective)
    smallest = min(report.classes.items(), key=lambda kv: kv[1].effective)
    by = " by weight" if largest[1].weighted is not None else ""
    if largest[1].effective == smallest[1].effective:
        return f"{ratio:.2f} (every class has {largest[1].effective:g}{by})"
    return f"{ratio:.2f} ({largest[0]} {largest[1].effective:g} / {smallest[0]} {smallest[1].effective:g}{by})"


def format_table(report: AuditReport) -> str:
    shortfall = report.shortfall
    weighted = any(c.weighted is not None for c in report.classes.values())
    soft = any(c.label_mass is not None for c in report.classes.values())
    header = [
        "class",
        "real",
        "synthetic",
        "total",
        *(["weighted"] if weighted else []),
        *(["label mass"] if soft else []),
        *(["shortfall"] if shortfall is not None else []),
    ]
    rows = [
        [
            name,
            c.real,
            c.synthetic,
            c.total,
            *([f"{c.weighted:g}"] if weighted else []),
            *([f"{c.label_mass:g}"] if soft else []),
            *([shortfall[name]] if shortfall is not None else []),
        ]
        for name, c in report.classes.items()
    ]
    footer = [
        "total",
        report.real,
        report.synthetic,
        report.total,
        *([f"{sum(c.effective for c in report.classes.values()):g}"] if weighted else []),
        *([f"{sum(c.label_mass or 0 for c in report.classes.values()):g}"] if soft else []),
        *([sum(shortfall.values())] if shortfall is not None else []),
    ]
    images = "colour (RGB)" if report.channels == 3 else "gray"
    lines = [f"manifest: {report.manifest} ({images} images)", ""]
    if report.balanced_rows is not None:
        held = sum(g.total for g in report.held_out)
        lines += [
            f"balanced rows ({report.balanced_rows})"
            + (f"; the {held} held-out rows are counted apart below" if held else "")
            + ":",
            "",
        ]
    lines += [*aligned_table(header, rows, footer), ""]
    lines.append(f"subjects:        {report.subjects}")
    lines.append(f"imbalance ratio: {_ratio_text(report)}")
    if shortfall is not None:
        lines.append(f"target:          {report.target} per class, {sum(shortfall.values())} images short")
    if report.held_out:
        lines += ["", "held out from balancing (in the manifest unchanged):"]
        held_rows = [[name, *(g.classes[name].total for g in report.held_out)] for name in report.classes]
        lines += aligned_table(
            ["class", *(str(g.value) for g in report.held_out)],
            held_rows,
            ["total", *(g.total for g in report.held_out)],
        )
    if report.by:
        lines += ["", f"images per class by {report.by}:"]
        by_header = ["class", *(_group_label(g.value) for g in report.groups)]
        by_rows = [[name, *(g.classes[name].total for g in report.groups)] for name in report.classes]
        lines += aligned_table(by_header, by_rows, ["total", *(g.total for g in report.groups)])
    lines.append("")
    if report.problems:
        lines.append("problems:")
        lines += [f"  {p.kind} ({p.count}): {p.message}" for p in report.problems]
    else:
        lines.append("no problems found")
    if not report.images_checked:
        lines.append("images not read (--no-check-images): missing, corrupt and changed files were not checked")
    return "\n".join(lines)


def _csv(report: AuditReport) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if report.by:
        writer.writerow(["class", "real", "synthetic", "total", report.by])
        for g in report.groups:
            writer.writerows(
                [name, c.real, c.synthetic, c.total, "" if g.value is None else g.value]
                for name, c in g.classes.items()
            )
    else:
        shortfall = report.shortfall
        weighted = any(c.weighted is not None for c in report.classes.values())
        soft = any(c.label_mass is not None for c in report.classes.values())
        writer.writerow(
            [
                "class",
                "real",
                "synthetic",
                "total",
                *(["weighted"] if weighted else []),
                *(["label_mass"] if soft else []),
                *(["shortfall"] if shortfall is not None else []),
            ]
        )
        writer.writerows(
            [
                name,
                c.real,
                c.synthetic,
                c.total,
                *([c.weighted] if weighted else []),
                *([c.label_mass] if soft else []),
                *([shortfall[name]] if shortfall is not None else []),
            ]
            for name, c in report.classes.items()
        )
    return buf.getvalue()
