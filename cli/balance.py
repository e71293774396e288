"""`fesaug balance`: synthesize the images each class lacks and write a balanced dataset folder."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fesaug.cli.params import DEVICE, add_options, aligned_table, balance_options
from fesaug.utils.errors import FesaugError

if TYPE_CHECKING:
    from fesaug.balance import BalanceConfig
    from fesaug.balance.config import BalanceResult


def _targets(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in values:
        name, sep, count = item.partition("=")
        if not sep or not name or not count.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not CLASS=N (e.g. --target fear=200)")
        out[name.strip()] = int(count)
    return out


# What to balance, with which generator, and where the dataset goes.
INPUT_OPTIONS = [
    click.option(
        "--manifest",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="Manifest of real images to balance.",
    ),
    click.option(
        "--checkpoint",
        required=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="FERSNet checkpoint from `fesaug train` (best.pt or last.pt).",
    ),
    click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help="Output folder: manifest.parquet, images/, README.md, histogram.png.",
    ),
]
# How many images each class should have, and which rows count.
TARGET_OPTIONS = [
    balance_options("target_per_class"),
    click.option(
        "--sampling-strategy",
        metavar="STRATEGY",
        help="Classes to raise, as in imbalanced-learn: auto (= not-majority), not-majority, not-minority, "
        "minority, all. Default: auto with max, all with a number.",
    ),
    click.option(
        "--target",
        "targets",
        multiple=True,
        metavar="CLASS=N",
        callback=_targets,
        help="Exact count for one class (repeatable); overrides the two options above.",
    ),
    click.option(
        "--undersample", is_flag=True, help="Allow targets below a class's real count by dropping real images."
    ),
    click.option(
        "--split",
        "splits",
        multiple=True,
        default=("train",),
        show_default=True,
        metavar="NAME",
        help="Split(s) to balance and take sources from (repeatable).",
    ),
    click.option(
        "--holdout-fold",
        "holdout_folds",
        multiple=True,
        type=click.IntRange(min=0),
        metavar="K",
        help="Fold whose subjects are never sources nor counted (repeatable). "
        "Default: the fold the checkpoint was held out from.",
    ),
]
# The gates a synthetic image passes before it is kept.
GATE_OPTIONS = [
    balance_options("min_confidence", "max_attempts"),
    click.option(
        "--au-check",
        "au_checkpoint",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="CHECKPOINT",
        help="Also keep an image only if this emotion + AU model (fesaug train --tasks emotion,au) sees "
        "the target's prototype AUs in it (e.g. happy: AU6+AU12).",
    ),
    click.option(
        "--min-au-consistency",
        type=click.FloatRange(0, 1),
        default=0.5,
        show_default=True,
        help="With --au-check: the least mean probability of the target's prototype AUs.",
    ),
    click.option(
        "--judge",
        "judge_checkpoint",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="CHECKPOINT",
        help="Also keep an image only if this classifier, trained on real faces apart from the generator "
        "(a fold-K/real.pt of fesaug evaluate), recognises its target.",
    ),
    balance_options("min_judge_confidence"),
    click.option(
        "--max-identity-distance",
        type=click.FloatRange(min=0, min_open=True),
        metavar="D",
        help="Also keep an image only if dlib's face-recognition embedding of it lies at most D from its source "
        "face's (0.6 is dlib's same-person threshold; needs pip install 'fesaug[judges]').",
    ),
    click.option(
        "--external-judge",
        type=click.Choice(["fer2013"]),
        help="Also keep an image only if this expression classifier, trained on another dataset (FER2013), sees "
        "its target; classes it does not know (contempt) pass untouched.",
    ),
    click.option(
        "--min-external-confidence",
        type=click.FloatRange(0, 1),
        default=0.5,
        show_default=True,
        help="With --external-judge: the least probability it must give the target.",
    ),
]
# How the images are made, labelled and stored.
SYNTHESIS_OPTIONS = [
    balance_options(
        "intensity",
        "source_order",
        "synthetic_share",
        "synthetic_weight",
        "synthetic_labels",
        "soft_label_source",
        "soft_gamma",
        "min_judge_margin",
        "class_intensity",
        "calibrate_intensity",
    ),
    click.option(
        "--output-size",
        type=click.IntRange(min=8),
        metavar="PIXELS",
        help="Side of the synthetic images. Default: the real images' size when they share one, else the generator's.",
    ),
    click.option(
        "--seed",
        type=click.IntRange(min=0),
        default=0,
        show_default=True,
        help="Seed of the source order and jitter: same seed, same images.",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=64,
        show_default=True,
        help="Images generated per step; also the unit of resumable work.",
    ),
    click.option("--embed-images", is_flag=True, help="Store every image (real and synthetic) inside the manifest."),
]
RUN_OPTIONS = [
    click.option(
        "--reject",
        type=click.Path(dir_okay=False, path_type=Path),
        metavar="FILE",
        help="Replace the synthetic rows whose sample ids FILE lists (the rejects.txt of `fesaug review`) in the "
        "finished --out, with new candidates from other sources; give it to the command that made --out.",
    ),
    DEVICE,
    click.option("--strict", is_flag=True, help="Exit with status 1 when a class cannot reach its target."),
    click.option("--overwrite", is_flag=True, help="Replace a finished (or different unfinished) run in --out."),
]


@click.command("balance")
@add_options(*INPUT_OPTIONS, *TARGET_OPTIONS, *GATE_OPTIONS, *SYNTHESIS_OPTIONS, *RUN_OPTIONS)
def balance_command(
    manifest: Path,
    checkpoint: Path,
    out: Path,
    reject: Path | None,
    device: str,
    strict: bool,
    overwrite: bool,
    **settings: Any,
) -> None:
    """Synthesize images with a trained FERSNet until every class reaches its target.

    \b
    Examples:
      fesaug balance --manifest ck.parquet --checkpoint runs/ck/checkpoints/best.pt --out ck-balanced
      fesaug balance --manifest ck.parquet --checkpoint best.pt --out b --target-per-class 300
      fesaug balance --manifest ck.parquet --checkpoint best.pt --out b --sampling-strategy minority
      torchrun --nproc-per-node 2 -m fesaug balance --manifest ck.parquet --checkpoint best.pt --out b
      fesaug balance --manifest ck.parquet --checkpoint best.pt --out b --reject rejects.txt

    Re-run the same command after an interruption to finish the job. Look at the synthetic
    faces with `fesaug review b` and replace the bad ones with --reject.
    """
    from fesaug.balance import balance

    main_process = os.environ.get("RANK", "0") == "0"
    result = balance(
        manifest,
        checkpoint,
        out,
        _config(**settings),
        overwrite=overwrite,
        device=None if device == "auto" else device,
        progress=main_process,
        reject=reject,
    )
    if not main_process:
        return
    click.echo(format_summary(result))
    short = {c: n for c, n in result.shortfall.items() if n}
    for c, n in short.items():
        click.echo(
            f"Warning: {c!r} is {n} image(s) short of its target {result.targets[c]}: the gate rejected too many "
            "candidates; lower --min-confidence, raise --max-attempts or train the generator longer",
            err=True,
        )
    for problem in result.problems:
        click.echo(f"Warning: audit: {problem}", err=True)
    if strict and short:
        raise FesaugError(f"{len(short)} class(es) did not reach their target and --strict is set")


def _config(
    *,
    target_per_class: int | str | None,
    holdout_folds: tuple[int, ...],
    au_checkpoint: Path | None,
    judge_checkpoint: Path | None,
    **settings: Any,
) -> BalanceConfig:
    """The run's settings: every other option is the :class:`~fesaug.balance.BalanceConfig` field of
    its name; these four are spelled as the library spells them (max, no folds, paths as text)."""
    from fesaug.balance import BalanceConfig

    return BalanceConfig(
        target_per_class=target_per_class or "max",
        holdout_folds=holdout_folds or None,
        au_checkpoint=None if au_checkpoint is None else str(au_checkpoint),
        judge_checkpoint=None if judge_checkpoint is None else str(judge_checkpoint),
        **settings,
    )


def format_summary(r: BalanceResult) -> str:
    from fesaug.balance.card import gate_table

    weighted = ("weighted",) if r.weighted else ()
    rows = r.class_rows(("real", "target", "synthesized", "acceptance", "shortfall", "after", *weighted))
    table = aligned_table(
        ["class", "real", "target", "synthesized", "accepted", "short", "after", *weighted],
        rows,
        [
            "total",
            sum(r.counts_before.values()),
            sum(r.targets.values()),
            sum(r.generated.values()),
            "",
            sum(r.shortfall.values()),
            sum(r.counts_after.values()),
            *([f"{sum(r.weighted.values()):g}"] if r.weighted else []),
        ],
    )
    made = sum(r.generated.values())
    speed = f" in {r.seconds:.1f} s ({made / r.seconds:.0f} images/s)" if r.seconds and made else ""
    resumed = f"; resumed {r.resumed_chunks} finished chunk(s)" if r.resumed_chunks else ""
    # With more than the FER branch's gate, say which gate rejected what.
    gates = (
        ["", "share of candidates each gate passed:", *aligned_table(*gate_table(r))] if len(r.gate_passed) > 1 else []
    )
    return "\n".join(
        [
            *table,
            *gates,
            "",
            *(_rejection_lines(r) or [f"synthesized {made} image(s){speed}{resumed}"]),
            f"wrote {r.manifest}, {r.out_dir / 'README.md'}, {r.out_dir / 'histogram.png'}",
        ]
    )


def _rejection_lines(r: BalanceResult) -> list[str]:
    """What a --reject run did: the faces it replaced, per class, and any it could not."""
    rec = r.rejection
    if rec is None:
        return []
    per_class = ", ".join(f"{c} {n}" for c, n in rec["rejected"].items() if n)
    short = sum(rec["not_replaced"].values())
    if rec.get("already_done"):
        return [f"--reject: round {rec['round']} already replaced these {len(rec['ids'])} face(s); nothing to do"]
    return [
        f"replaced {len(rec['ids']) - short} of {len(rec['ids'])} face(s) rejected by a person ({per_class}) "
        f"from other sources in {r.seconds:.1f} s; {sum(r.rejected_by_person.values())} rejected over "
        f"{rec['round']} round(s)"
        + (f"; resumed {r.resumed_chunks} finished chunk(s)" if r.resumed_chunks else "")
        + (f"; {short} could not be replaced (the gates rejected every candidate)" if short else "")
    ]
