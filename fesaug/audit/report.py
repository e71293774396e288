"""``fesaug audit``: class histograms (real vs synthetic) and dataset integrity checks.

:func:`audit` reads a manifest and returns an :class:`AuditReport`; the checks themselves live in
:mod:`fesaug.audit.integrity`. ``AuditReport.to_dict()`` is the JSON that ``fesaug audit --format json``
prints::

    {
      "manifest": "path/to/m.parquet",
      "total": 981, "real": 981, "synthetic": 0,
      "subjects": 118,                       # distinct non-null subject_id
      "channels": 1,                         # the images: 1 gray, 3 colour (RGB)
      "imbalance_ratio": 4.61,               # largest / smallest class total; null if a class is empty
      "classes": {"anger": {"real": 135, "synthetic": 0, "total": 135, "shortfall": 115}, ...},
                                             # a manifest with a weight column adds "weighted" per class
      "target": 250, "shortfall_total": 768, # only with a target; "shortfall" per class likewise
      "by": {"column": "fold", "groups": [{"value": 0, "total": 98, "classes": {...}}, ...]},  # only with by
      "held_out": {"total": 96, "groups": [{"value": "fold 0 (train)", "total": 96, "classes": {...}}]},
      "images_checked": true,
      "problems": [{"kind": "duplicate_image", "message": "...", "count": 1, "sample_ids": [...], ...}]
    }

For the output of ``fesaug balance`` the histogram, totals, ratio and shortfall count the rows
the run balanced (``balanced_rows`` says which: its splits outside its held-out folds); the rows
it left as they were, such as a held-out test fold, are counted apart in ``held_out``, one group
per split (``test``) or held-out fold of a balanced split (``fold 0 (train)``). Other manifests
have no ``held_out``: every row counts. ``--by`` groups every row.

A class with no images makes the imbalance ratio infinite; it is reported as null (JSON has no
infinity) and the class is listed in an ``empty_class`` problem, which says why.

A manifest with a ``weight`` column (``fesaug balance --synthetic-share``) is balanced by its
weights, not its rows: each class also gets ``weighted`` (the sum of its rows' weights), and the
imbalance ratio and shortfall count that.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fesaug.audit.integrity import Problem, all_problems, column
from fesaug.balance.targets import Targets
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.utils.errors import UsageError
from fesaug.utils.plots import new_figure, save_figure

BY_COLUMNS = ("origin", "split", "fold")


@dataclass(frozen=True)
class ClassCount:
    real: int = 0
    synthetic: int = 0
    weighted: float | None = None  # the sum of the rows' weights, for a manifest with a weight column
    # The label mass the class receives, for a manifest with soft labels (target_mass): a real row
    # gives 1, a synthetic row its target_mass, and a synthetic row of another class made from one of
    # this class's faces the rest of its label.
    label_mass: float | None = None

    @property
    def total(self) -> int:
        return self.real + self.synthetic

    @property
    def effective(self) -> float:
        """What the class counts for when sampled: its weight, else its rows."""
        return self.total if self.weighted is None else self.weighted

    def to_dict(self) -> dict:
        return {
            "real": self.real,
            "synthetic": self.synthetic,
            "total": self.total,
            **({"weighted": self.weighted} if self.weighted is not None else {}),
            **({"label_mass": self.label_mass} if self.label_mass is not None else {}),
        }


@dataclass(frozen=True)
class Group:
    """The histogram of the rows whose ``by`` column equals ``value`` (None: the column is empty)."""

    value: str | int | None
    classes: dict[str, ClassCount]

    @property
    def total(self) -> int:
        return sum(c.total for c in self.classes.values())

    def to_dict(self) -> dict:
        return {"value": self.value, "total": self.total, "classes": {k: c.to_dict() for k, c in self.classes.items()}}


@dataclass
class AuditReport:
    manifest: Path
    classes: dict[str, ClassCount]
    subjects: int
    problems: list[Problem]
    images_checked: bool
    by: str | None = None
    groups: list[Group] = field(default_factory=list)
    target: int | None = None
    balanced_rows: str | None = None  # which rows a balance run balanced (and ``classes`` counts), in words
    held_out: list[Group] = field(default_factory=list)  # the rows it left unchanged, by split / excluded fold
    channels: int = 1  # the manifest's images: 1 gray, 3 colour (RGB)

    @property
    def total(self) -> int:
        return sum(c.total for c in self.classes.values())

    @property
    def real(self) -> int:
        return sum(c.real for c in self.classes.values())

    @property
    def synthetic(self) -> int:
        return sum(c.synthetic for c in self.classes.values())

    @property
    def imbalance_ratio(self) -> float | None:
        """Largest class total over smallest; None when a class is empty (the ratio is infinite)."""
        totals = [c.effective for c in self.classes.values()]
        return max(totals) / min(totals) if min(totals) > 0 else None

    @property
    def shortfall(self) -> dict[str, int] | None:
        """Images each class still needs to reach ``target`` (0 when it already has enough)."""
        if self.target is None:
            return None
        totals = {name: int(np.ceil(c.effective - 1e-6)) for name, c in self.classes.items()}
        return Targets(counts=totals, wanted=dict.fromkeys(totals, self.target)).to_generate

    def to_dict(self) -> dict:
        classes = {name: c.to_dict() for name, c in self.classes.items()}
        out: dict = {
            "manifest": str(self.manifest),
            "total": self.total,
            "real": self.real,
            "synthetic": self.synthetic,
            "subjects": self.subjects,
            "channels": self.channels,
            "imbalance_ratio": self.imbalance_ratio,
            "classes": classes,
        }
        shortfall = self.shortfall
        if shortfall is not None:
            for name, n in shortfall.items():
                classes[name]["shortfall"] = n
            out["target"] = self.target
            out["shortfall_total"] = sum(shortfall.values())
        if self.by is not None:
            out["by"] = {"column": self.by, "groups": [g.to_dict() for g in self.groups]}
        if self.balanced_rows is not None:
            out["balanced_rows"] = self.balanced_rows
            out["held_out"] = {
                "total": sum(g.total for g in self.held_out),
                "groups": [g.to_dict() for g in self.held_out],
            }
        out["images_checked"] = self.images_checked
        out["problems"] = [p.to_dict() for p in self.problems]
        return out


def _histogram(
    labels: np.ndarray,
    synthetic: np.ndarray,
    classes: list[str],
    weights: np.ndarray | None = None,
    soft: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, ClassCount]:
    real_n = np.bincount(labels[~synthetic], minlength=len(classes))
    syn_n = np.bincount(labels[synthetic], minlength=len(classes))
    weighted = None if weights is None else np.bincount(labels, weights=weights, minlength=len(classes))
    mass = None
    if soft is not None:  # (target_mass, source_label) of each row
        target_mass, source = soft
        rest = target_mass < 1
        mass = np.bincount(labels, weights=target_mass, minlength=len(classes))
        mass += np.bincount(source[rest], weights=1 - target_mass[rest], minlength=len(classes))
    return {
        name: ClassCount(
            int(real_n[k]),
            int(syn_n[k]),
            None if weighted is None else round(float(weighted[k]), 3),
            None if mass is None else round(float(mass[k]), 3),
        )
        for k, name in enumerate(classes)
    }


def _soft(m: Manifest) -> tuple[np.ndarray, np.ndarray] | None:
    if "target_mass" not in m.df.columns:
        return None
    mass = m.df["target_mass"].to_numpy(dtype=np.float64, na_value=1.0)
    return mass, m.df["source_label"].to_numpy(dtype=np.float64, na_value=-1).astype(np.int64)


def _weights(m: Manifest) -> np.ndarray | None:
    return m.df["weight"].to_numpy(dtype=np.float64, na_value=1.0) if "weight" in m.df.columns else None


def _groups(m: Manifest, by: str, labels: np.ndarray, synthetic: np.ndarray) -> list[Group]:
    values = np.array(column(m.df, by), dtype=object)
    keys = sorted(set(values.tolist()), key=lambda v: (v is None, v))  # unassigned rows last
    weights = _weights(m)
    return [
        Group(
            key,
            _histogram(
                labels[values == key],
                synthetic[values == key],
                m.classes,
                None if weights is None else weights[values == key],
            ),
        )
        for key in keys
    ]


def audit(
    manifest_path: str | os.PathLike | Manifest,
    *,
    by: str | None = None,
    target: int | None = None,
    check_images: bool = True,
) -> AuditReport:
    """Class histogram and integrity problems of the manifest at ``manifest_path`` (or of an
    already read :class:`Manifest`).

    ``by`` (one of :data:`BY_COLUMNS`) adds a histogram per value of that column; ``target``
    (images wanted per class) adds each class's shortfall; ``check_images=False`` skips reading
    the images, and with it the ``missing_image``, ``unreadable_image`` and ``hash_mismatch``
    checks. Problems are listed in the report, never raised; an unreadable manifest raises
    :class:`FesaugError`. Generator leakage is checked only when the footer has
    ``generator_training`` (see :func:`fesaug.audit.integrity.generator_leakage`).
    """
    if by is not None and by not in BY_COLUMNS:
        raise UsageError(f"cannot break the histogram down by {by!r}; choose one of {', '.join(BY_COLUMNS)}")
    if target is not None and target < 1:
        raise UsageError(f"the target must be at least 1 image per class (got {target})")
    m = manifest_path if isinstance(manifest_path, Manifest) else read_manifest(manifest_path)
    labels = m.df["label"].to_numpy(dtype=np.int64)
    synthetic = (m.df["origin"] == "synthetic").to_numpy(dtype=bool)
    everything = _histogram(labels, synthetic, m.classes)
    balanced = m.balanced_rows()
    counted = np.ones(len(labels), dtype=bool) if balanced is None else balanced
    weights, soft = _weights(m), _soft(m)
    return AuditReport(
        manifest=m.path,
        classes=_histogram(
            labels[counted],
            synthetic[counted],
            m.classes,
            None if weights is None else weights[counted],
            None if soft is None else (soft[0][counted], soft[1][counted]),
        ),
        subjects=int(m.df["subject_id"].nunique(dropna=True)),
        channels=m.channels,
        problems=all_problems(m, {name: c.total for name, c in everything.items()}, check_images=check_images),
        images_checked=check_images,
        by=by,
        groups=_groups(m, by, labels, synthetic) if by else [],
        target=target,
        balanced_rows=None if balanced is None else _balanced_rows_text(m.meta["balance"]),
        held_out=[] if balanced is None else _held_out(m, ~balanced, labels, synthetic),
    )


def _balanced_rows_text(run: dict) -> str:
    splits, folds = run["splits"], run.get("holdout_folds") or []
    return f"split{'s' if len(splits) > 1 else ''} {', '.join(splits)}" + (
        f" outside fold{'s' if len(folds) > 1 else ''} {', '.join(map(str, folds))}" if folds else ""
    )


def _held_out(m: Manifest, rows: np.ndarray, labels: np.ndarray, synthetic: np.ndarray) -> list[Group]:
    """The rows a balance run left unchanged, one group per split it did not balance (``test``)
    or per held-out fold of a split it did (``fold 0 (train)``)."""
    balanced_splits = set(m.meta["balance"]["splits"])
    splits, folds = column(m.df, "split"), column(m.df, "fold")
    names = np.array(
        [s if s not in balanced_splits else f"fold {f} ({s})" for s, f in zip(splits, folds)], dtype=object
    )
    keys = sorted(set(names[rows].tolist()))
    return [
        Group(key, _histogram(labels[rows & (names == key)], synthetic[rows & (names == key)], m.classes))
        for key in keys
    ]


def plot_report(report: AuditReport, path: str | os.PathLike) -> Path:
    """Write :func:`report_figure` to ``path`` (.png, .svg or .pdf)."""
    return save_figure(report_figure(report), path)


def report_figure(report: AuditReport):
    """A stacked bar chart: real and synthetic images per class, the target as a line.

    Rows a balance run left unchanged (``report.held_out``) are drawn apart: a second, grey bar
    per class, one shade per held-out group, labelled with it."""
    names = list(report.classes)
    x = np.arange(len(names))
    width, shift = (0.8, 0.0) if not report.held_out else (0.45, 0.24)
    real = [c.real for c in report.classes.values()]
    synthetic = [c.synthetic for c in report.classes.values()]
    fig = new_figure(max(6.0, 0.8 * len(names) + 2), 4.5)
    ax = fig.add_subplot()
    ax.bar(x - shift, real, width, label="real", color="#4C72B0")
    bars = ax.bar(x - shift, synthetic, width, bottom=real, label="synthetic", color="#DD8452")
    if any(c.weighted is not None for c in report.classes.values()):
        # What the weight column adds beyond one per row: the repeats a weighted sampler draws.
        extra = [max(0.0, c.effective - c.total) for c in report.classes.values()]
        bars = ax.bar(
            x - shift,
            extra,
            width,
            bottom=np.add(real, synthetic),
            label="real, by weight",
            color="#4C72B0",
            alpha=0.45,
            hatch="//",
        )
    ax.bar_label(bars, labels=[f"{c.effective:g}" for c in report.classes.values()], padding=2, fontsize=8)
    bottom = np.zeros(len(names))
    for group, shade in zip(report.held_out, _GREYS * len(report.held_out)):
        heights = np.array([group.classes[n].total for n in names])
        held = ax.bar(x + shift, heights, width * 0.6, bottom=bottom, label=f"held out: {group.value}", color=shade)
        bottom += heights
    if report.held_out:
        ax.bar_label(held, labels=[str(int(b)) for b in bottom], padding=2, fontsize=7, color="#555555")
    ax.set_xticks(x, names)
    if report.target is not None:
        ax.axhline(report.target, color="#C44E52", linestyle="--", linewidth=1.2, label=f"target ({report.target})")
    ratio = report.imbalance_ratio
    counted = "images" if report.balanced_rows is None else f"balanced images ({report.balanced_rows})"
    ax.set_title(
        f"{report.manifest.name}: {report.total} {counted}, imbalance "
        + (f"{ratio:.2f}" if ratio is not None else "undefined (empty class)"),
        fontsize=10,
    )
    ax.set_ylabel("images")
    # Set, not left to margins(): a bar's base is a "sticky" limit, so a zero-height synthetic bar
    # on the tallest real one would pin the top there and cut the count labels off.
    top = max([c.effective for c in report.classes.values()] + bottom.tolist() + [report.target or 0, 1])
    ax.set_ylim(0, top * 1.12)
    ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # never over a bar
    if len(names) > 6:
        ax.tick_params(axis="x", labelrotation=30)
    return fig


_GREYS = ["#A6A6A6", "#CFCFCF", "#7F7F7F"]
