"""What the review page shows, computed from a manifest: one record per synthetic row (its
source, its scores, where its thumbnails will be), the real rows of each class, and a summary
per class (counts, acceptance from the balance footer, score histograms).

Nothing here reads an image: thumbnails are named by the image's ``sha256`` (the manifest's
column), so where each one will be is known before any is made (:mod:`fesaug.review.thumbs`).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from fesaug.data.manifest import Manifest, read_manifest
from fesaug.utils.errors import FesaugError

# Known score columns: the label the page shows and which end is better ("high", "low" or None
# when neither is: an edit's intensity, a row's weight). Other float columns of synthetic rows
# are shown under their own name.
KNOWN_SCORES: dict[str, tuple[str, str | None]] = {
    "confidence": ("gate confidence", "high"),
    "judge_confidence": ("judge confidence", "high"),
    "au_consistency": ("AU consistency", "high"),
    "identity_distance": ("identity distance", "low"),
    "external_confidence": ("external confidence", "high"),
    "target_mass": ("target mass", "high"),
    "intensity": ("intensity", None),
    "weight": ("weight", None),
}
HISTOGRAM_BINS = 10


@dataclass(frozen=True)
class Score:
    """A score column of the synthetic rows: ``column`` in the manifest, ``label`` on the page,
    ``better``: ``"high"``, ``"low"`` or None."""

    column: str
    label: str
    better: str | None


@dataclass(frozen=True)
class ThumbJob:
    """One thumbnail to make: of manifest row ``row`` (``target`` None), or the demo
    counterfactual of row ``row`` showing class ``target``. ``key`` names the file."""

    key: str
    row: int
    target: str | None = None


@dataclass
class ClassSummary:
    """One class on the page: rows in the manifest, the balance run's numbers for it (None
    when the manifest has no balance footer) and per score a histogram of its synthetic rows."""

    name: str
    real: int
    synthetic: int
    target: int | None = None
    attempts: int | None = None
    acceptance: float | None = None
    shortfall: int | None = None
    rejected_by_person: int = 0
    gate_pass_rates: dict[str, float | None] = field(default_factory=dict)
    histograms: dict[str, tuple[list[float], list[int]]] = field(default_factory=dict)


@dataclass
class PageData:
    """Everything the page shows. ``synthetic`` and ``real`` hold one dict per row, in class
    then manifest order; image fields are paths relative to the page (``thumbs/...``)."""

    manifest: Manifest
    manifest_sha256: str
    scores: list[Score]
    synthetic: list[dict[str, Any]]
    real: list[dict[str, Any]]
    summary: list[ClassSummary]
    jobs: list[ThumbJob]
    counterfactuals: str | None  # None: none shown; else what they are
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.manifest.classes


def resolve_source(source: str | os.PathLike) -> Path:
    """The manifest of ``source``: a folder written by ``fesaug balance`` or a manifest file."""
    path = Path(source)
    if path.is_dir():
        if not (path / "manifest.parquet").is_file():
            raise FesaugError(
                f"{path} holds no manifest.parquet; give a folder written by `fesaug balance` or a manifest file"
            )
        return path / "manifest.parquet"
    if not path.exists():
        raise FesaugError(f"{path} does not exist; give a folder written by `fesaug balance` or a manifest file")
    return path


def thumb_path(key: str, size: int) -> str:
    """Where the thumbnail ``key`` lies, relative to the page (two-letter folders keep each
    folder small for large sets)."""
    return f"thumbs/{size}/{key[:2]}/{key}.png"


def page_data(manifest: Manifest, manifest_sha256: str, thumb_size: int) -> PageData:
    """The page's content for ``manifest`` with thumbnails of side ``thumb_size``."""
    df = manifest.df
    synthetic_mask = (df["origin"] == "synthetic").to_numpy(dtype=bool)
    if not synthetic_mask.any():
        raise FesaugError(
            f"{manifest.path} has no synthetic rows to review; review the output of `fesaug balance` "
            "(its folder or its manifest.parquet)"
        )
    classes = manifest.classes
    scores = score_columns(manifest)
    ids = df["sample_id"].tolist()
    position = {sid: i for i, sid in enumerate(ids)}
    shas = df["sha256"].tolist()
    jobs: dict[str, ThumbJob] = {}

    # An image's thumbnail is named by its file's sha256, and in a colour manifest also by that:
    # a file a gray manifest shows gray is another thumbnail there.
    suffix = "-rgb" if manifest.channels == 3 else ""

    def thumb(row: int) -> str:
        key = shas[row] + suffix
        jobs.setdefault(key, ThumbJob(key, row))
        return thumb_path(key, thumb_size)

    counterfactual, notes = _counterfactual_rule(df, manifest)
    real_rows = np.flatnonzero(~synthetic_mask)
    syn_rows = np.flatnonzero(synthetic_mask)
    labels = df["label"].to_numpy(dtype=np.int64)
    syn_rows = syn_rows[np.argsort(labels[syn_rows], kind="stable")]
    real_rows = real_rows[np.argsort(labels[real_rows], kind="stable")]
    col = _columns(df)
    real = [_base(col, i, classes) | {"img": thumb(i)} for i in real_rows.tolist()]
    synthetic = []
    for i in syn_rows.tolist():
        rec = _base(col, i, classes) | _provenance(col, i, classes)
        rec["img"] = thumb(i)
        parent = position.get(rec["parent"])
        rec["parent_img"] = None if parent is None else thumb(parent)
        rec["cf_img"] = None
        params = col("demo_params")[parent] if counterfactual and parent is not None else None
        if isinstance(params, str):
            key = _counterfactual_key(params, rec["class"])
            jobs.setdefault(key, ThumbJob(key, parent, rec["class"]))
            rec["cf_img"] = thumb_path(key, thumb_size)
        rec["scores"] = {s.column: _number(col(s.column)[i]) for s in scores}
        synthetic.append(rec)
    summary = class_summary(manifest, synthetic, scores)
    return PageData(
        manifest,
        manifest_sha256,
        scores,
        synthetic,
        real,
        summary,
        list(jobs.values()),
        "the exact face: the source's demo parameters rendered with the target expression" if counterfactual else None,
        notes,
    )


def score_columns(manifest: Manifest) -> list[Score]:
    """The float columns with a value on some synthetic row, known ones first in
    :data:`KNOWN_SCORES` order; the external judge's label names it (``FER2013 confidence``)."""
    df = manifest.df
    syn = df[df["origin"] == "synthetic"]
    present = [
        c
        for c in df.columns
        if pd.api.types.is_float_dtype(df[c])
        and c not in ("align_angle", "align_eye_distance")
        and syn[c].notna().any()
    ]
    ordered = [c for c in KNOWN_SCORES if c in present] + [c for c in present if c not in KNOWN_SCORES]
    judge = ((manifest.meta.get("balance") or {}).get("external_check") or {}).get("judge")
    out = []
    for c in ordered:
        label, better = KNOWN_SCORES.get(c, (c.replace("_", " "), None))
        if c == "external_confidence" and judge:
            label = f"{str(judge).upper()} confidence"
        out.append(Score(c, label, better))
    return out


def class_summary(manifest: Manifest, synthetic: list[dict[str, Any]], scores: list[Score]) -> list[ClassSummary]:
    """Per class: rows in the manifest, the balance footer's target, attempts, acceptance,
    shortfall, gate pass rates and person-rejected count, and a histogram of each score over
    the class's synthetic rows (bins shared by all classes, so they compare)."""
    df, run = manifest.df, manifest.meta.get("balance") or {}
    real = df[df["origin"] == "real"]["label"].value_counts()
    edges = {s.column: _edges([r["scores"][s.column] for r in synthetic]) for s in scores}
    out = []
    for k, c in enumerate(manifest.classes):
        mine = [r for r in synthetic if r["class"] == c]
        attempts = _get(run, "attempts", c)
        generated = _get(run, "generated", c)
        summary = ClassSummary(
            c,
            int(real.get(k, 0)),
            len(mine),
            target=_get(run, "targets", c),
            attempts=attempts,
            acceptance=generated / attempts if attempts and generated is not None else None,
            shortfall=_get(run, "shortfall", c),
            rejected_by_person=int(_get(run, "rejected_by_person", c) or 0),
            gate_pass_rates={g: rates.get(c) for g, rates in (run.get("gate_pass_rates") or {}).items()},
        )
        for s in scores:
            values = np.array([r["scores"][s.column] for r in mine if r["scores"][s.column] is not None], dtype=float)
            counts, _ = np.histogram(values, bins=edges[s.column])
            summary.histograms[s.column] = (edges[s.column].tolist(), counts.astype(int).tolist())
        out.append(summary)
    return out


def _edges(values: list[float | None]) -> np.ndarray:
    """Histogram bin edges: [0, 1] for scores that lie in it (probabilities), else their range."""
    finite = np.array([v for v in values if v is not None], dtype=float)
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if lo >= 0.0 and hi <= 1.0:
        lo, hi = 0.0, 1.0
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, HISTOGRAM_BINS + 1)


def _get(run: Mapping[str, Any], key: str, cls: str) -> Any:
    values = run.get(key)
    return values.get(cls) if isinstance(values, Mapping) else None


def _columns(df: pd.DataFrame) -> Any:
    """``col(name)``: column ``name`` as a list (made once; a column the manifest lacks reads as
    nulls), since per-row ``.iat`` lookups cost seconds on 20,000 rows."""
    cache: dict[str, list[Any]] = {}

    def col(name: str) -> list[Any]:
        if name not in cache:
            cache[name] = df[name].tolist() if name in df.columns else [None] * len(df)
        return cache[name]

    return col


def _base(col: Any, i: int, classes: list[str]) -> dict[str, Any]:
    fold = col("fold")[i]
    return {
        "id": col("sample_id")[i],
        "class": classes[int(col("label")[i])],
        "subject": _text(col("subject_id")[i]),
        "fold": None if _missing(fold) else int(fold),
        "split": col("split")[i],
    }


def _provenance(col: Any, i: int, classes: list[str]) -> dict[str, Any]:
    source, attempt = col("source_label")[i], col("attempt")[i]
    return {
        "source_class": None if _missing(source) else classes[int(source)],
        "parent": _text(col("parent_id")[i]),
        "transform": _text(col("source_transform")[i]),
        "attempt": None if _missing(attempt) else int(attempt),
        "replaces": _text(col("replaces")[i]),
    }


def _counterfactual_rule(df: pd.DataFrame, manifest: Manifest) -> tuple[bool, list[str]]:
    """Whether to show demo counterfactuals (the real rows carry ``demo_params`` this fesaug
    can render), and a note for the page when they carry params it cannot."""
    if "demo_params" not in df.columns:
        return False, []
    params = df["demo_params"].dropna()
    if params.empty:
        return False, []
    from fesaug.data.demo import RENDERER_VERSION

    version = (manifest.meta.get("demo") or {}).get("renderer", RENDERER_VERSION)
    if version != RENDERER_VERSION:
        return False, [
            f"No counterfactuals: the demo set was rendered by renderer version {version}, this fesaug renders "
            f"version {RENDERER_VERSION} (re-create it with `fesaug demo-data --overwrite`)."
        ]
    return True, []


def _counterfactual_key(params: str, target: str) -> str:
    from fesaug.data.demo import RENDERER_VERSION

    return hashlib.sha256(f"counterfactual|{RENDERER_VERSION}|{target}|{params}".encode()).hexdigest()


def _missing(value: Any) -> bool:
    return value is None or (not isinstance(value, str) and bool(pd.isna(value)))


def _text(value: Any) -> str | None:
    return None if _missing(value) else str(value)


def _number(value: Any) -> float | None:
    return None if _missing(value) else round(float(value), 6)


def load(source: str | os.PathLike, thumb_size: int) -> PageData:
    """:func:`page_data` of a balanced folder or manifest (see :func:`resolve_source`)."""
    from fesaug.utils.files import file_sha256

    path = resolve_source(source)
    return page_data(read_manifest(path), file_sha256(path), thumb_size)
