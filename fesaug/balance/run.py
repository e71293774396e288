"""``fesaug balance``: synthesize the images each class lacks with a trained FERSNet.

:func:`balance` reads a manifest of real images and a ``fesaug train`` checkpoint and writes a
folder any downstream model can use::

    DIR/manifest.parquet         real rows (referenced in place, or embedded) + synthetic rows
    DIR/images/<class>/<id>.png  the synthetic images
    DIR/README.md                dataset card: before/after table, settings, how it was made
    DIR/histogram.png            images per class, real and synthetic

The steps, in the vocabulary of imbalanced-learn:

1. **Targets.** The *working set* is the real rows of the chosen splits outside the held-out
   folds ``holdout_folds`` (by default the fold the generator was held out from).
   :func:`fesaug.balance.targets.resolve_targets` turns ``target_per_class`` (a number or
   ``"max"``), ``sampling_strategy`` and per-class ``targets`` into a wanted count per class.
2. **Sources.** Class ``c`` is synthesized from working-set images of the other classes, taken
   round-robin over subjects so that every identity contributes before any contributes twice,
   subjects who have no real image of ``c`` first (the counterfactuals the data lacks). Once
   every source is used, sources are reused mirrored, then with small random affine jitter, so
   no two candidates are the same input. Order is a function of the seed only (:func:`plan_sources`).
3. **Quality gate.** A candidate is kept when the checkpoint's FER branch gives the target
   class at least ``min_confidence`` and, with ``au_checkpoint`` (an emotion + AU network from
   ``fesaug train --tasks emotion,au``), when the AUs it predicts agree with the target's
   prototype (:func:`fesaug.data.au.au_consistency`); a rejected slot is retried with the next source, at most
   ``max_attempts`` times. Slots still empty are a shortfall, reported and stored.
4. **Output.** Work is cut into chunks of ``batch_size`` slots; each chunk's images and a JSON
   part file are written atomically under ``DIR/.fesaug-balance/``, so an interrupted run
   (even ``kill -9``) resumes where it stopped when the same command is run again. The
   manifest is written last: its presence means the job is finished. Under ``torchrun`` rank
   ``r`` takes chunks ``r, r + world, …``; chunk contents do not depend on the number of
   processes, so the result is the same for any number of them.

Every synthetic row has ``origin="synthetic"``, its ``parent_id``, ``source_label``, target
``label``, the parent's ``subject_id``/``split``/``fold``, ``generator`` (the checkpoint's
sha256), ``seed``, ``confidence`` and ``source_transform``. The footer records the resolved
counts, acceptance rates and, under ``generator_training``, which folds and subjects the
generator saw, so that ``fesaug audit`` can flag synthetic images used against a test fold the
generator was trained on.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF
from tqdm.auto import tqdm

from fesaug.audit.report import Group, audit, plot_report
from fesaug.balance.targets import Targets, check_synthetic_share, check_target_rule, resolve_targets
from fesaug.data.au import au_consistency
from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.images import encode_png, resize_square, sha256_bytes
from fesaug.data.manifest import (
    Manifest,
    read_holdout_names,
    read_manifest,
    relative_image_root,
    working_set,
    write_manifest,
)
from fesaug.data.splits import check_holdout_folds
from fesaug.evaluate.downstream import load_classifier, predict_proba
from fesaug.judges import load_judge
from fesaug.models import MAX_INTENSITY
from fesaug.multitask.training import load_emotion_au
from fesaug.synthesis.generator import Generator, load_generator
from fesaug.utils.distributed import barrier, process_group
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_out_folder,
    file_sha256,
    remove_stale_temporaries,
)
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import jsonable, with_defaults

log = logging.getLogger(__name__)

SOURCE_ORDERS = ("subjects", "similar")
# Expression judges trained elsewhere that can gate synthetic faces (fesaug.judges).
EXTERNAL_JUDGES = ("fer2013",)
WORK_DIR = ".fesaug-balance"
OUTPUTS = ("manifest.parquet", "README.md", "histogram.png", "images", WORK_DIR)


def check_intensity(bounds: Sequence[float]) -> tuple[float, float]:
    """``(LOW, HIGH)`` as floats, or a :class:`UsageError` unless 0 <= LOW <= HIGH <= MAX_INTENSITY."""
    values = tuple(float(v) for v in bounds)
    if len(values) != 2 or not 0.0 <= values[0] <= values[1] <= MAX_INTENSITY:
        raise UsageError(
            f"--intensity must be LOW..HIGH with 0 <= LOW <= HIGH <= {MAX_INTENSITY:g} "
            f"(or one number in [0, {MAX_INTENSITY:g}]), got {bounds}"
        )
    return values[0], values[1]


@dataclass(frozen=True)
class BalanceConfig:
    """Settings of one balance run (everything that decides its output).

    ``target_per_class``: every selected class up to this many images, or ``"max"`` (up to the
    largest class). ``sampling_strategy``: which classes are over-sampled, as in imbalanced-learn
    (``auto`` = ``not-majority``; default ``auto`` with ``"max"``, ``all`` with a number).
    ``targets``: per-class counts that override both. A target below a class's real count is an
    error unless ``undersample`` is set, which then drops real rows of that class (at random,
    from the working set). ``holdout_folds``: folds left out of the working set (``None``: the
    generator's held-out fold); ``exclude_folds`` is its old, deprecated name.
    ``output_size``: side of the synthetic images; ``None`` = the real images' size when they
    all share one square size, else the generator's. ``source_order``: ``subjects`` takes
    sources round-robin over subjects in random order; ``similar`` keeps the round-robin but
    tries first the subjects, and within a subject the images, whose expression the
    checkpoint's FER branch already finds closest to the target (see :func:`plan_sources`).
    ``max_identity_distance``: keep only faces whose dlib identity embedding lies at most this far
    from the source face's (a face that cannot be aligned fails). ``external_judge``: a classifier
    trained on another dataset (``fer2013``) must give the target at least
    ``min_external_confidence``; classes it does not know (contempt) pass it untouched.
    ``intensity``: ``(LOW, HIGH)``: each candidate's edit is scaled by an intensity drawn
    uniformly from that range (seeded like the jitter; ``intensity`` column), so a class gets
    faces at several strengths of its expression instead of one; ``None`` = the learnt edit (1);
    above 1 (up to ``MAX_INTENSITY``) the edit is exaggerated.
    ``synthetic_share``: synthesis fills this share of each class's shortfall (rounded), and
    weights on the class's real rows fill the rest, as repeats of them would; ``synthetic_weight``:
    each synthetic row counts this much (below 1: a synthetic face is worth less than a real
    one). With either set, the manifest gets a ``weight`` column (:func:`row_weights`) whose sum
    per class reaches the target; the defaults (1, 1) synthesize every missing image and
    write no weights.
    """

    target_per_class: int | str = "max"
    sampling_strategy: str | None = None
    targets: Mapping[str, int] = field(default_factory=dict)
    undersample: bool = False
    splits: tuple[str, ...] = ("train",)
    holdout_folds: tuple[int, ...] | None = None
    min_confidence: float = 0.5
    max_attempts: int = 5
    seed: int = 0
    batch_size: int = 64
    embed_images: bool = False
    output_size: int | None = None
    au_checkpoint: str | None = None
    min_au_consistency: float = 0.5
    judge_checkpoint: str | None = None
    min_judge_confidence: float = 0.5
    source_order: str = "subjects"
    max_identity_distance: float | None = None
    external_judge: str | None = None
    min_external_confidence: float = 0.5
    intensity: tuple[float, float] | None = None
    synthetic_share: float = 1.0
    synthetic_weight: float = 1.0

    def __post_init__(self) -> None:
        if self.holdout_folds is not None:
            object.__setattr__(self, "holdout_folds", check_holdout_folds(self.holdout_folds, error=UsageError))
        check_target_rule(self.target_per_class, self.sampling_strategy, self.targets)
        if not 0.0 <= self.min_confidence <= 1.0:
            raise UsageError(f"--min-confidence must lie in [0, 1], got {self.min_confidence}")
        if not 0.0 <= self.min_judge_confidence <= 1.0:
            raise UsageError(f"--min-judge-confidence must lie in [0, 1], got {self.min_judge_confidence}")
        if not 0.0 <= self.min_au_consistency <= 1.0:
            raise UsageError(f"--min-au-consistency must lie in [0, 1], got {self.min_au_consistency}")
        if not 0.0 <= self.min_external_confidence <= 1.0:
            raise UsageError(f"--min-external-confidence must lie in [0, 1], got {self.min_external_confidence}")
        if self.max_identity_distance is not None and not self.max_identity_distance > 0:
            raise UsageError(
                f"--max-identity-distance must be above 0 (dlib's same-person threshold is 0.6), "
                f"got {self.max_identity_distance}"
            )
        if self.intensity is not None:
            object.__setattr__(self, "intensity", check_intensity(self.intensity))
        object.__setattr__(self, "synthetic_share", check_synthetic_share(self.synthetic_share))
        if isinstance(self.synthetic_weight, bool) or not 0 < self.synthetic_weight <= 1:
            raise UsageError(
                f"--synthetic-weight must lie in (0, 1] (what one synthetic image counts against a real "
                f"one), got {self.synthetic_weight!r}"
            )
        object.__setattr__(self, "synthetic_weight", float(self.synthetic_weight))
        if self.external_judge is not None and self.external_judge not in EXTERNAL_JUDGES:
            raise UsageError(
                f"unknown --external-judge {self.external_judge!r}; choose one of {', '.join(EXTERNAL_JUDGES)}"
            )
        for name in ("max_attempts", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.output_size is not None and self.output_size < 8:
            raise UsageError(f"--output-size must be at least 8 pixels, got {self.output_size}")
        if not self.splits:
            raise UsageError("choose at least one --split to balance")
        if self.source_order not in SOURCE_ORDERS:
            raise UsageError(f"unknown --source-order {self.source_order!r}; choose one of {', '.join(SOURCE_ORDERS)}")

    @property
    def weighted(self) -> bool:
        """Whether the output carries a ``weight`` column (a share or weight below 1)."""
        return self.synthetic_share < 1 or self.synthetic_weight < 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = dict(self.targets)
        return d


# exclude_folds: the old name of holdout_folds, still accepted (with a DeprecationWarning) when
# given and read. Not a field, so to_dict(), == and dataclasses.replace() know one name only.
_dataclass_init = BalanceConfig.__init__


@functools.wraps(_dataclass_init)
def _init_accepting_exclude_folds(
    self: BalanceConfig, *args: Any, exclude_folds: Sequence[int] | None = None, **kwargs: Any
) -> None:
    if exclude_folds is not None:
        warnings.warn(
            "BalanceConfig(exclude_folds=...) is deprecated; use holdout_folds=...", DeprecationWarning, stacklevel=2
        )
        if kwargs.get("holdout_folds") is not None:
            raise UsageError("give holdout_folds or its old name exclude_folds, not both")
        kwargs["holdout_folds"] = exclude_folds
    _dataclass_init(self, *args, **kwargs)


def _exclude_folds(self: BalanceConfig) -> tuple[int, ...] | None:
    """Deprecated: :attr:`BalanceConfig.holdout_folds`."""
    warnings.warn("BalanceConfig.exclude_folds is deprecated; use holdout_folds", DeprecationWarning, stacklevel=2)
    return self.holdout_folds


BalanceConfig.__init__ = _init_accepting_exclude_folds  # type: ignore[method-assign]
BalanceConfig.exclude_folds = property(_exclude_folds)  # type: ignore[attr-defined]


@dataclass
class BalanceResult:
    out_dir: Path
    manifest: Path
    counts_before: dict[str, int]
    targets: dict[str, int]
    to_generate: dict[str, int]
    generated: dict[str, int]
    removed: dict[str, int]
    attempts: dict[str, int]
    shortfall: dict[str, int]
    seconds: float
    resumed_chunks: int = 0
    problems: list[str] = field(default_factory=list)  # fesaug audit's findings on the output
    gate_passed: dict[str, dict[str, int]] = field(default_factory=dict)  # gate -> class -> candidates it passed
    weighted: dict[str, float] | None = None  # per class, the sum of the balanced rows' weights (weighted runs only)

    @property
    def counts_after(self) -> dict[str, int]:
        return {c: self.counts_before[c] - self.removed[c] + self.generated[c] for c in self.counts_before}

    @property
    def acceptance(self) -> dict[str, float | None]:
        return {c: (self.generated[c] / a if a else None) for c, a in self.attempts.items()}

    @property
    def gate_pass_rates(self) -> dict[str, dict[str, float | None]]:
        """Per gate and class, the share of candidates that gate passed (the gates judge every
        candidate, so each rate stands alone; ``acceptance`` is their joint effect)."""
        return {
            g: {c: (n / self.attempts[c] if self.attempts[c] else None) for c, n in counts.items()}
            for g, counts in self.gate_passed.items()
        }

    def class_rows(self, columns: Sequence[str], blank: str = "-") -> list[list[Any]]:
        """The per-class table every summary of a run shows (the dataset card, the command's and
        the demo's summaries), one row per class: its name, then ``columns`` of ``real``,
        ``target``, ``synthesized``, ``acceptance`` (a percentage, ``blank`` without attempts),
        ``shortfall``, ``after`` and ``weighted`` (the sum of the class's weights, ``blank`` in an
        unweighted run)."""

        def cell(column: str, c: str) -> Any:
            if column == "acceptance":
                acc = self.acceptance[c]
                return blank if acc is None else f"{acc:.0%}"
            if column == "weighted":
                return blank if self.weighted is None else f"{self.weighted[c]:g}"
            return {
                "real": self.counts_before,
                "target": self.targets,
                "synthesized": self.generated,
                "shortfall": self.shortfall,
                "after": self.counts_after,
            }[column][c]

        return [[c, *(cell(column, c) for column in columns)] for c in self.counts_before]


# --------------------------------------------------------------------------------------------
# 2. sources (1. targets: fesaug.balance.targets)


@dataclass(frozen=True)
class Candidate:
    """One attempt at one slot: synthesize working-set row ``source`` (a position in the
    manifest) as ``target``; ``variant`` 0 = as is, 1 = mirrored, >= 2 = jittered."""

    source: int
    variant: int


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in key]))


def plan_sources(
    labels: np.ndarray,
    subjects: Sequence[str],
    rows: np.ndarray,
    target: int,
    seed: int,
    similarity: np.ndarray | None = None,
) -> list[int]:
    """The order in which working-set rows serve as sources for class ``target``.

    ``labels``/``subjects`` (and ``similarity``, if given) are aligned with ``rows`` (manifest
    positions). Rows of the target class are never sources. Subjects without a real image of
    ``target`` come first; within each group subjects are shuffled, and the list takes one image
    per subject per round. With ``similarity`` (how close each source's expression already is
    to the target, e.g. a classifier's probability of it) each subject's images are taken most
    similar first, and subjects are ordered by their most similar image; ties keep the shuffle.
    Identities still spread first: the round-robin over subjects is kept.
    """
    rng = _rng(seed, target)
    has_target = {s for s, y in zip(subjects, labels) if y == target}
    score = {} if similarity is None else dict(zip(rows.tolist(), np.asarray(similarity, dtype=float).tolist()))
    by_subject: dict[str, list[int]] = {}
    for row, s, y in zip(rows.tolist(), subjects, labels.tolist()):
        if y != target:
            by_subject.setdefault(s, []).append(row)
    order: list[int] = []
    for group in (
        sorted(s for s in by_subject if s not in has_target),
        sorted(s for s in by_subject if s in has_target),
    ):
        queues = (
            [list(rng.permutation(by_subject[s])) for s in rng.permutation(np.array(group, dtype=object))]
            if group
            else []
        )
        if similarity is not None:
            queues = [sorted(q, key=lambda r: -score[r]) for q in queues]  # sorted() is stable: ties keep the shuffle
            queues.sort(key=lambda q: -score[q[0]])
        for rnd in range(max((len(q) for q in queues), default=0)):
            order += [int(q[rnd]) for q in queues if rnd < len(q)]
    return order


def candidate(order: Sequence[int], need: int, slot: int, attempt: int) -> Candidate:
    """Attempt ``attempt`` at slot ``slot`` of a class needing ``need`` images: the
    ``slot + attempt·need``-th use of the source list, so no two attempts share an input."""
    j = slot + attempt * need
    return Candidate(source=order[j % len(order)], variant=j // len(order))


def _jitter(image: torch.Tensor, variant: int, key: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """The source image for ``variant`` and a description for the manifest."""
    if variant == 0:
        return image, "none"
    mirrored = TF.horizontal_flip(image) if variant % 2 else image
    if variant == 1:
        return mirrored, "hflip"
    rng = _rng(*key)
    angle, dx, dy, scale = (
        rng.uniform(-6, 6),
        rng.uniform(-0.04, 0.04),
        rng.uniform(-0.04, 0.04),
        rng.uniform(0.95, 1.05),
    )
    side = image.shape[-1]
    out = TF.affine(
        mirrored,
        angle=float(angle),
        translate=[round(dx * side), round(dy * side)],
        scale=float(scale),
        shear=[0.0, 0.0],
        interpolation=TF.InterpolationMode.BILINEAR,
    )
    flip = "hflip+" if variant % 2 else ""
    return out, f"{flip}affine(angle={angle:.1f},dx={round(dx * side)},dy={round(dy * side)},scale={scale:.3f})"


# --------------------------------------------------------------------------------------------
# the run


@dataclass
class _Plan:
    """Everything the workers need, computed identically on every rank."""

    manifest: Manifest
    generator: Generator
    config: BalanceConfig
    working: np.ndarray  # manifest positions of the working set
    targets: Targets  # from the working set's real counts
    to_synthesize: dict[str, int]  # per class: the targets' shortfall times the synthetic share
    removed_rows: list[int]
    holdout_folds: list[int]  # folds outside the working set, recorded as the footer's holdout_folds
    output_size: int
    orders: dict[int, list[int]]  # class index -> source order
    slots: list[tuple[int, int]]  # (class index, slot) over all classes, in order
    key: dict[str, Any]  # what must match for a resume
    au_checker: Any = None  # an EmotionAUPredictor for the AU check, if asked for
    judge: Any = None  # a DownstreamClassifier for the independent-judge check, if asked for
    identity: Any = None  # fesaug.judges' IdentityJudge for --max-identity-distance, if asked for
    external: Any = None  # an expression judge trained elsewhere for --external-judge, if asked for
    decoded: tuple[np.ndarray, torch.Tensor] | None = None  # source rows and their pixels, if planning needed them

    def sample_id(self, cls: int, slot: int) -> str:
        return f"syn-{self.generator.checkpoint_sha256[:10]}-{self.manifest.classes[cls]}-{slot:06d}"


def _working_set(m: Manifest, splits: Sequence[str], holdout_folds: Sequence[int]) -> np.ndarray:
    df = m.df
    synthetic = int((df["origin"] == "synthetic").sum())
    if synthetic:
        raise FesaugError(
            f"{m.path} already has {synthetic} synthetic row(s); balance a manifest of real images "
            "(the one the synthetic rows were made from)"
        )
    known = sorted(set(df["split"]))
    unknown = [s for s in splits if s not in known]
    if unknown:
        raise UsageError(f"--split {unknown[0]!r} is not in {m.path}; its splits are {', '.join(known)}")
    rows = np.flatnonzero(working_set(df, splits, holdout_folds))
    if rows.size == 0:
        raise FesaugError(
            f"{m.path}: no real rows in split(s) {', '.join(splits)} outside held-out fold(s) {list(holdout_folds)}; "
            "check --split and --holdout-fold"
        )
    return rows


def _subject_keys(m: Manifest, rows: np.ndarray) -> list[str]:
    # A row without a subject id is its own identity.
    ids, subjects = m.df["sample_id"].tolist(), m.df["subject_id"].tolist()
    return [f"row:{ids[r]}" if pd.isna(subjects[r]) else str(subjects[r]) for r in rows.tolist()]


def _output_size(m: Manifest, rows: np.ndarray, generator: Generator, requested: int | None) -> int:
    if requested is not None:
        return requested
    sizes = set(zip(m.df["width"].iloc[rows].tolist(), m.df["height"].iloc[rows].tolist()))
    if len(sizes) == 1:
        w, h = next(iter(sizes))
        if w == h:
            return int(w)
    return generator.image_size


def _make_plan(manifest_path: Path, checkpoint: Path, config: BalanceConfig, device: str | None) -> _Plan:
    m = read_manifest(manifest_path)
    gen = load_generator(checkpoint, device=device)
    if gen.classes != m.classes:
        raise FesaugError(
            f"the checkpoint {checkpoint} was trained on classes {', '.join(gen.classes)} but {manifest_path} has "
            f"{', '.join(m.classes)}; use a checkpoint trained on this dataset (fesaug train --manifest "
            f"{manifest_path})"
        )
    holdout_folds = (
        list(config.holdout_folds)
        if config.holdout_folds is not None
        else ([gen.holdout_fold] if gen.holdout_fold is not None else [])
    )
    working = _working_set(m, config.splits, holdout_folds)
    labels = m.df["label"].to_numpy(dtype=np.int64)
    counts = {c: int((labels[working] == k).sum()) for k, c in enumerate(m.classes)}
    targets = resolve_targets(
        counts,
        target_per_class=config.target_per_class,
        sampling_strategy=config.sampling_strategy,
        targets=config.targets,
        undersample=config.undersample,
    )
    to_generate = targets.to_synthesize(config.synthetic_share)
    removed: list[int] = []
    for k, c in enumerate(m.classes):
        extra = targets.to_remove[c]
        if extra > 0:
            pool = working[labels[working] == k]
            removed += sorted(int(r) for r in _rng(config.seed, k, 1).choice(pool, size=extra, replace=False))
    # Sources exclude rows dropped by under-sampling: the balanced set must not depend on them.
    sources = np.setdiff1d(working, np.asarray(removed, dtype=np.int64))
    subjects = _subject_keys(m, sources)
    pixels = similarity = None
    if config.source_order == "similar" and any(to_generate.values()):
        pixels = _source_pixels(m, sources, gen)
        # Rounded so that the order (and so a resumed run's plan) does not hang on the last bits
        # of float arithmetic, which differ between devices.
        similarity = np.round(gen.classify(pixels).numpy(), 3)
    orders, slots = {}, []
    for k, c in enumerate(m.classes):
        if to_generate[c]:
            orders[k] = plan_sources(
                labels[sources], subjects, sources, k, config.seed, None if similarity is None else similarity[:, k]
            )
            if not orders[k]:
                raise FesaugError(f"no source images for {c!r}: every working-set image is of that class")
            slots += [(k, s) for s in range(to_generate[c])]
    key = {
        "config": config.to_dict(),
        "manifest_sha256": file_sha256(manifest_path),
        "checkpoint_sha256": gen.checkpoint_sha256,
        "targets": dict(targets),
    }
    checker = None
    if config.au_checkpoint is not None:
        checker = load_emotion_au(config.au_checkpoint, device=device)
        if checker.classes != m.classes:
            raise FesaugError(
                f"the --au-check model {config.au_checkpoint} knows classes {', '.join(checker.classes)}, "
                f"but {manifest_path} has {', '.join(m.classes)}; train it on this dataset"
            )
        key["au_checkpoint_sha256"] = file_sha256(config.au_checkpoint)
    judge = None
    if config.judge_checkpoint is not None:
        judge, judge_classes = load_classifier(config.judge_checkpoint, device=device)
        if judge_classes != m.classes:
            raise FesaugError(
                f"the --judge classifier {config.judge_checkpoint} knows classes {', '.join(judge_classes)}, "
                f"but {manifest_path} has {', '.join(m.classes)}; use one trained on this dataset"
            )
        key["judge_checkpoint_sha256"] = file_sha256(config.judge_checkpoint)
    identity = load_judge("identity") if config.max_identity_distance is not None else None
    external = load_judge(config.external_judge, device=device or "cpu") if config.external_judge else None
    return _Plan(
        m,
        gen,
        config,
        working,
        targets,
        to_generate,
        removed,
        sorted(holdout_folds),
        _output_size(m, working, gen, config.output_size),
        orders,
        slots,
        key,
        checker,
        judge,
        identity,
        external,
        None if pixels is None else (sources, pixels),
    )


def _source_pixels(m: Manifest, rows: np.ndarray, gen: Generator) -> torch.Tensor:
    return ManifestDataset(m, rows=rows, image_size=gen.image_size).pixels


# ---- output folder


def _prepare_out_dir(out: Path, key: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` ready for this run: fresh, or the unfinished work of the same run."""
    work = out / WORK_DIR
    check_out_folder(out, "for the balanced dataset")
    if out.exists() and any(out.iterdir()):
        # A kill -9 leaves the temporary files of atomic writes behind (stale: we hold the lock).
        for name in OUTPUTS:
            remove_stale_temporaries(out, name)
        for folder in (*(out / "images").glob("*"), work, work / "parts"):
            remove_stale_temporaries(folder)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise FesaugError(
                f"{out} holds files fesaug balance did not write ({', '.join(foreign[:3])}); "
                "choose an empty or new --out"
            )
        finished = (out / "manifest.parquet").exists()
        same = (work / "plan.json").exists() and _recorded_key(work / "plan.json") == jsonable(key)
        if not overwrite:
            if finished:
                shutil.rmtree(work, ignore_errors=True)  # left by a run stopped just after its manifest
                raise FesaugError(f"{out} already holds a finished balanced dataset; pass --overwrite to make it again")
            if not same:
                raise FesaugError(
                    f"{out} holds an unfinished balance run with other settings, manifest or checkpoint; "
                    "run that command again to finish it, or pass --overwrite to start over"
                )
            return  # resume
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    (work / "parts").mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "plan.json", json.dumps(jsonable(key), indent=2, sort_keys=True))


def _recorded_key(path: Path) -> dict[str, Any]:
    key = json.loads(path.read_text())
    if isinstance(key.get("config"), dict):  # old names read as today's; settings added since mean their defaults
        key["config"] = with_defaults(read_holdout_names(key["config"]), jsonable(BalanceConfig().to_dict()))
    return key


def _part_path(out: Path, chunk: int) -> Path:
    return out / WORK_DIR / "parts" / f"chunk-{chunk:06d}.json"


# ---- workers


def _run_chunk(
    plan: _Plan,
    pixels: torch.Tensor,
    position: dict[int, int],
    chunk: list[tuple[int, int]],
    out: Path,
    pool: ThreadPoolExecutor,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[Future]]:
    """Fill the slots of one chunk through the quality gates; images are written by ``pool``.
    Also returns the attempts per class and, per gate, how many candidates of each class it passed."""
    m, gen, cfg = plan.manifest, plan.generator, plan.config
    df = m.df
    accepted: list[dict[str, Any]] = []
    attempts = dict.fromkeys(m.classes, 0)
    passed: dict[str, dict[str, int]] = {}
    writes: list[Future] = []
    pending = list(chunk)
    need = plan.to_synthesize
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        cands = [candidate(plan.orders[k], need[m.classes[k]], s, attempt) for k, s in pending]
        inputs, transforms = [], []
        for (k, s), cnd in zip(pending, cands):
            image, how = _jitter(pixels[position[cnd.source]], cnd.variant, (cfg.seed, k, s, attempt))
            inputs.append(image)
            transforms.append(how)
        targets = torch.tensor([k for k, _ in pending])
        sources = torch.stack(inputs)
        strength = (
            None
            if cfg.intensity is None
            else [float(_rng(cfg.seed, k, s, attempt, 2).uniform(*cfg.intensity)) for k, s in pending]
        )
        fakes = gen.synthesize(sources, targets, intensity=strength, batch_size=len(inputs))
        scores, gates = _gate_scores(plan, sources, fakes, targets)
        for gate, ok in gates.items():
            for k, good in zip(targets.tolist(), ok):
                counts = passed.setdefault(gate, dict.fromkeys(m.classes, 0))
                counts[m.classes[k]] += int(good)
        still = []
        for i, ((k, s), cnd, how, fake) in enumerate(zip(pending, cands, transforms, fakes)):
            attempts[m.classes[k]] += 1
            if not all(ok[i] for ok in gates.values()):
                still.append((k, s))
                continue
            sid = plan.sample_id(k, s)
            rel = f"images/{m.classes[k]}/{sid}.png"
            src = cnd.source
            accepted.append(
                {
                    "sample_id": sid,
                    "path": rel,
                    "label": k,
                    "subject_id": _none(df["subject_id"].iat[src]),
                    "fold": _none(df["fold"].iat[src]),
                    "split": df["split"].iat[src],
                    "parent_id": df["sample_id"].iat[src],
                    "source_label": int(df["label"].iat[src]),
                    "attempt": attempt,
                    "source_transform": how,
                    "slot": s,
                    **({"intensity": round(strength[i], 6)} if strength is not None else {}),
                    **{
                        column: (None if v[i] is None or not np.isfinite(v[i]) else round(float(v[i]), 6))
                        for column, v in scores.items()
                    },
                }
            )
            writes.append(pool.submit(_write_image, fake, plan.output_size, out / rel, accepted[-1]))
        pending = still
    return accepted, {"attempts": attempts, "passed": passed}, writes


def _gate_scores(
    plan: _Plan, sources: torch.Tensor, fakes: torch.Tensor, targets: torch.Tensor
) -> tuple[dict[str, list[float | None]], dict[str, list[bool]]]:
    """Every active gate's score of each fake (by manifest column) and its pass/fail (by gate).

    A class an AU model or external judge has no opinion on (None / NaN) passes that gate; a face
    the identity judge cannot align fails, since nothing then shows it is still the same person."""
    cfg, names = plan.config, [plan.manifest.classes[k] for k in targets.tolist()]
    confidence = plan.generator.classify(fakes, batch_size=len(fakes))[torch.arange(len(fakes)), targets].tolist()
    scores: dict[str, list[float | None]] = {"confidence": confidence}
    gates = {"fer_branch": [c >= cfg.min_confidence for c in confidence]}
    if plan.au_checker is not None:
        scores["au_consistency"] = au = _au_check(plan, fakes, targets)
        gates["au_check"] = [a is None or a >= cfg.min_au_consistency for a in au]
    if plan.judge is not None:
        scores["judge_confidence"] = jc = _judge(plan, fakes, targets)
        gates["judge"] = [j >= cfg.min_judge_confidence for j in jc]
    if plan.identity is not None:
        d = plan.identity.score(fakes, names, sources)
        scores["identity_distance"] = d.tolist()
        gates["identity"] = [bool(np.isfinite(v) and v <= cfg.max_identity_distance) for v in d]
    if plan.external is not None:
        p = plan.external.score(fakes, names)
        scores["external_confidence"] = p.tolist()
        gates["external"] = [bool(not np.isfinite(v) or v >= cfg.min_external_confidence) for v in p]
    return scores, gates


def _au_check(plan: _Plan, fakes: torch.Tensor, targets: torch.Tensor) -> list[float | None]:
    """Each fake's AU consistency with its target (None: no AU check, or nothing to check)."""
    checker = plan.au_checker
    if checker is None:
        return [None] * len(fakes)
    _, au_probs = checker.predict(resize_pixels(fakes, checker.image_size))
    out: list[float | None] = [None] * len(fakes)
    for k in targets.unique().tolist():
        rows = (targets == k).nonzero().flatten()
        score = au_consistency(au_probs[rows], checker.au_ids, plan.manifest.classes[k])
        for i, v in zip(rows.tolist(), score.tolist() if score is not None else [None] * len(rows)):
            out[i] = v
    return out


def _judge(plan: _Plan, fakes: torch.Tensor, targets: torch.Tensor) -> list[float]:
    """The independent judge's probability of each fake's target.

    The FER branch was trained jointly with the generator, which learns to satisfy it; a
    classifier trained apart on real faces only is not fooled the same way."""
    probs = predict_proba(plan.judge, resize_pixels(fakes, plan.judge.image_size))
    return probs[np.arange(len(fakes)), targets.numpy()].astype(float).tolist()


def _none(value: Any) -> Any:
    if pd.isna(value):
        return None
    return int(value) if isinstance(value, (np.integer,)) else value


def _write_image(fake: torch.Tensor, size: int, path: Path, row: dict[str, Any]) -> None:
    img = resize_square(Image.fromarray(fake[0].numpy()), size)
    data = encode_png(img)
    row.update(sha256=sha256_bytes(data), width=img.width, height=img.height)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def balance(
    manifest: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BalanceConfig | None = None,
    *,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = False,
) -> BalanceResult:
    """Balance ``manifest`` with the generator in ``checkpoint``; write the dataset to ``out_dir``.

    See the module docstring. Re-running the same call after an interruption resumes it; a second
    run into ``out_dir`` while one is running is refused (:func:`fesaug.utils.locking.output_lock`).
    ``progress``: a progress bar on stderr when it is a terminal.
    """
    config = config or BalanceConfig()
    out = Path(out_dir)
    start = time.perf_counter()
    # gloo even on GPUs: the ranks only meet at barriers, and several may share one GPU.
    with process_group() as ranks, output_lock(out):
        rank, world = ranks.rank, ranks.world
        if device is None and torch.cuda.is_available():
            # Ranks share the node's GPUs; several ranks on one GPU is fine for inference.
            device = f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
        plan = _make_plan(Path(manifest), Path(checkpoint), config, device)
        if rank == 0:
            _prepare_out_dir(out, plan.key, overwrite)
        barrier()
        chunks = [plan.slots[i : i + config.batch_size] for i in range(0, len(plan.slots), config.batch_size)]
        done = [i for i in range(len(chunks)) if _part_path(out, i).exists()]
        mine = [i for i in range(rank, len(chunks), world) if not _part_path(out, i).exists()]
        if plan.decoded is not None:
            sources, pixels = plan.decoded
        else:
            sources = (
                np.unique(np.concatenate([np.asarray(o, dtype=np.int64) for o in plan.orders.values()]))
                if plan.orders
                else np.empty(0, dtype=np.int64)
            )
            pixels = _source_pixels(plan.manifest, sources, plan.generator) if mine else torch.empty(0)
        position = {int(r): i for i, r in enumerate(sources.tolist())}
        _generate(plan, chunks, mine, pixels, position, out, progress=progress and rank == 0)
        barrier()
        result = _finish(plan, out, len(chunks), start, resumed=len(done)) if rank == 0 else None
        barrier()
    if result is None:  # other ranks read what rank 0 wrote
        result = _summary_from(out)
    return result


def _generate(
    plan: _Plan,
    chunks: list[list[tuple[int, int]]],
    mine: list[int],
    pixels: torch.Tensor,
    position: dict[int, int],
    out: Path,
    *,
    progress: bool,
) -> None:
    # Two writer threads: PNG encoding (zlib) releases the GIL, so it overlaps the next chunk's
    # generation; waiting for the previous chunk keeps at most two chunks in memory.
    # disable=None: a bar only on a terminal, not carriage-return frames in a redirected log.
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="fesaug-png") as pool,
        tqdm(
            total=sum(len(chunks[i]) for i in mine), unit="img", disable=None if progress else True, desc="balance"
        ) as bar,
    ):
        previous: tuple[int, list, dict, list[Future]] | None = None
        for i in mine:
            rows, attempts, writes = _run_chunk(plan, pixels, position, chunks[i], out, pool)
            if previous is not None:
                _commit(out, *previous)
            previous = (i, rows, attempts, writes)
            bar.update(len(chunks[i]))
        if previous is not None:
            _commit(out, *previous)


def _commit(out: Path, chunk: int, rows: list[dict[str, Any]], tally: dict[str, Any], writes: list[Future]) -> None:
    for w in writes:
        w.result()  # re-raises a failed write
    # The part is written after its images: a part on disk means its whole chunk is on disk.
    atomic_write_text(_part_path(out, chunk), json.dumps({"chunk": chunk, "rows": rows, **tally}))


# ---- the manifest


def _finish(plan: _Plan, out: Path, n_chunks: int, start: float, *, resumed: int) -> BalanceResult:
    m, gen, cfg = plan.manifest, plan.generator, plan.config
    parts = [json.loads(_part_path(out, i).read_text()) for i in range(n_chunks)]
    synthetic = sorted((r for p in parts for r in p["rows"]), key=lambda r: (r["label"], r["slot"]))
    attempts = dict.fromkeys(m.classes, 0)
    passed: dict[str, dict[str, int]] = {}
    for p in parts:
        for c, n in p["attempts"].items():
            attempts[c] += n
        for gate, counts in p.get("passed", {}).items():  # parts written before gates were counted have none
            for c, n in counts.items():
                passed.setdefault(gate, dict.fromkeys(m.classes, 0))[c] += n
    generated = {c: sum(1 for r in synthetic if r["label"] == k) for k, c in enumerate(m.classes)}
    removed = {c: sum(1 for r in plan.removed_rows if int(m.df["label"].iat[r]) == k) for k, c in enumerate(m.classes)}
    t = plan.targets
    shortfall = {c: plan.to_synthesize[c] - generated[c] for c in m.classes}
    result = BalanceResult(
        out,
        out / "manifest.parquet",
        dict(t.counts),
        dict(t),
        plan.to_synthesize,
        generated,
        removed,
        attempts,
        shortfall,
        0.0,
        resumed,
        gate_passed=passed,
    )

    real = m.df.drop(index=m.df.index[plan.removed_rows]).reset_index(drop=True)
    root, real_images = _relocate(m, real, out, embed=cfg.embed_images)
    real = real.assign(image=real_images)
    syn = pd.DataFrame(synthetic)
    if len(syn):
        prefix = PurePosixPath(Path(os.path.relpath(out.resolve(), root)).as_posix())
        syn["image"] = [
            {"bytes": (out / p).read_bytes(), "path": p}
            if cfg.embed_images
            else {"bytes": None, "path": str(prefix / p)}
            for p in syn["path"]
        ]
        syn = syn.drop(columns=["path", "slot"]).assign(
            label_name=[m.classes[k] for k in syn["label"]],
            origin="synthetic",
            generator=gen.checkpoint_sha256,
            seed=cfg.seed,
        )
        syn["attempt"] = syn["attempt"].astype("Int64")
    df = pd.concat([real, syn], ignore_index=True) if len(syn) else real
    if cfg.weighted:
        balanced = working_set(df, cfg.splits, plan.holdout_folds)
        df["weight"] = row_weights(df, plan.targets, cfg.synthetic_weight, balanced=balanced, classes=m.classes)
        result.weighted = _weighted_counts(df, m.classes, balanced)
    meta = _footer(plan, result)
    manifest_path = out / "manifest.parquet"
    image_root = "." if cfg.embed_images else relative_image_root(manifest_path, root)
    # Written beside the work files first and renamed last: the manifest marks a finished run,
    # so the card and histogram must exist before it does.
    staged = out / WORK_DIR / "manifest.parquet"
    write_manifest(df, staged, classes=m.classes, meta=meta, overwrite=True, image_root=image_root)
    report = audit(read_manifest(staged), target=max(plan.targets.values()), check_images=False)
    result.problems = [p.message for p in report.problems]
    plot_report(report, out / "histogram.png")
    atomic_write_text(out / "README.md", dataset_card(result, plan, meta, report.held_out))
    os.replace(staged, manifest_path)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def row_weights(
    df: pd.DataFrame,
    targets: Mapping[str, int],
    synthetic_weight: float,
    *,
    balanced: np.ndarray,
    classes: Sequence[str],
) -> np.ndarray:
    """The ``weight`` column of a weighted balance run: each balanced synthetic row counts
    ``synthetic_weight``, and the real rows of each class share what the class still lacks of its
    target equally (at least 1 each), so the weights of a class sum to its target; rows the run
    did not balance (other splits, held-out folds) count 1. A sampler drawing rows in proportion
    to these weights, or a loss weighted by them, sees each class as often as a set of that many
    images would (:meth:`fesaug.data.datasets.ManifestDataset.weights`)."""
    weights = np.ones(len(df), dtype=np.float64)
    labels = df["label"].to_numpy(dtype=np.int64)
    synthetic = (df["origin"] == "synthetic").to_numpy(dtype=bool)
    weights[balanced & synthetic] = synthetic_weight
    for k, c in enumerate(classes):
        real = balanced & ~synthetic & (labels == k)
        n_real, n_syn = int(real.sum()), int((balanced & synthetic & (labels == k)).sum())
        if n_real:
            weights[real] = max(1.0, (targets[c] - synthetic_weight * n_syn) / n_real)
    return weights


def _weighted_counts(df: pd.DataFrame, classes: Sequence[str], balanced: np.ndarray) -> dict[str, float]:
    labels, weights = df["label"].to_numpy(dtype=np.int64), df["weight"].to_numpy(dtype=np.float64)
    return {c: round(float(weights[balanced & (labels == k)].sum()), 3) for k, c in enumerate(classes)}


def _relocate(m: Manifest, real: pd.DataFrame, out: Path, *, embed: bool) -> tuple[Path, list[dict[str, Any]]]:
    """The output's image root and the real rows' ``image`` structs relative to it.

    Referenced images stay where they are: the root becomes the deepest folder holding both
    them and ``out``, so one relative root serves real and synthetic rows alike.
    """
    images = real["image"].tolist()
    referenced = [Path(m.image_root, im["path"]).resolve().parent for im in images if im.get("bytes") is None]
    if embed:
        positions = {sid: i for i, sid in enumerate(m.df["sample_id"].tolist())}
        structs = [
            {"bytes": m.image_bytes(positions[sid]), "path": im.get("path")} if im.get("bytes") is None else im
            for sid, im in zip(real["sample_id"].tolist(), images)
        ]
        return out.resolve(), structs
    root = Path(os.path.commonpath([str(out.resolve()), *map(str, referenced)])) if referenced else out.resolve()
    structs = [
        im
        if im.get("bytes") is not None
        else {"bytes": None, "path": Path(os.path.relpath(Path(m.image_root, im["path"]).resolve(), root)).as_posix()}
        for im in images
    ]
    return root, structs


def _footer(plan: _Plan, r: BalanceResult) -> dict[str, Any]:
    m, gen, cfg = plan.manifest, plan.generator, plan.config
    return {
        **m.inherited_meta(),
        "provenance": provenance("balance", cfg.to_dict()),
        "input_provenance": m.meta.get("provenance"),
        "balance": {
            "input_manifest": str(m.path),
            "input_manifest_sha256": plan.key["manifest_sha256"],
            "checkpoint": str(gen.checkpoint),
            "checkpoint_sha256": gen.checkpoint_sha256,
            "checkpoint_epoch": gen.epoch,
            "splits": list(cfg.splits),
            "holdout_folds": plan.holdout_folds,
            "output_size": plan.output_size,
            "counts_before": r.counts_before,
            "targets": r.targets,
            "to_generate": r.to_generate,
            "generated": r.generated,
            "removed": r.removed,
            "shortfall": r.shortfall,
            "attempts": r.attempts,
            "acceptance": r.acceptance,
            "min_confidence": cfg.min_confidence,
            "max_attempts": cfg.max_attempts,
            "seed": cfg.seed,
            "source_order": cfg.source_order,
            "judge": "the checkpoint's FER branch",
            "intensity": None if cfg.intensity is None else list(cfg.intensity),
            "synthetic_share": cfg.synthetic_share,
            "synthetic_weight": cfg.synthetic_weight,
            **(
                {
                    "weighted": r.weighted,
                    "weights": "each synthetic row counts synthetic_weight; a class's real rows share the rest of its "
                    "target (at least 1 each); rows outside the balanced splits and folds count 1",
                }
                if r.weighted is not None
                else {}
            ),
            **(
                {
                    "au_check": {
                        "checkpoint": cfg.au_checkpoint,
                        "checkpoint_sha256": plan.key["au_checkpoint_sha256"],
                        "min_au_consistency": cfg.min_au_consistency,
                        "au_ids": plan.au_checker.au_ids,
                        "prototypes": "fesaug.data.au.EMOTION_AU_PROTOTYPES",
                    }
                }
                if plan.au_checker
                else {}
            ),
            **(
                {
                    "judge_check": {
                        "checkpoint": cfg.judge_checkpoint,
                        "checkpoint_sha256": plan.key["judge_checkpoint_sha256"],
                        "min_judge_confidence": cfg.min_judge_confidence,
                    }
                }
                if plan.judge is not None
                else {}
            ),
            **(
                {
                    "identity_check": {
                        "model": "dlib face-recognition ResNet v1 (fesaug.judges.identity)",
                        "max_identity_distance": cfg.max_identity_distance,
                    }
                }
                if plan.identity is not None
                else {}
            ),
            **(
                {
                    "external_check": {
                        "judge": cfg.external_judge,
                        "min_external_confidence": cfg.min_external_confidence,
                        "not_judged": [c for c in m.classes if not plan.external.known(c)],
                    }
                }
                if plan.external is not None
                else {}
            ),
            "gate_passed": r.gate_passed,
            "gate_pass_rates": r.gate_pass_rates,
        },
        "generator_training": {
            gen.checkpoint_sha256: {
                "folds": gen.training_folds,
                # Validation subjects chose the weights, so they count as seen.
                "subjects": sorted(set(gen.training_subjects) | set(gen.validation_subjects)),
            }
        },
        "holdout_folds": plan.holdout_folds,
    }


def dataset_card(r: BalanceResult, plan: _Plan, meta: Mapping[str, Any], held_out: Sequence[Group] = ()) -> str:
    """The ``README.md`` written next to a balanced manifest; ``held_out``: the rows it left
    unchanged, counted per group (:attr:`fesaug.audit.report.AuditReport.held_out`)."""
    gen, cfg = plan.generator, plan.config
    columns = ("real", "target", "synthesized", "acceptance", "shortfall", "after") + (
        ("weighted",) if r.weighted else ()
    )
    lines = [
        "# Balanced facial-expression dataset (fesaug balance)",
        "",
        f"Made from `{plan.manifest.path}` with the FERSNet checkpoint `{gen.checkpoint}` "
        f"(sha256 `{gen.checkpoint_sha256[:16]}…`, epoch {gen.epoch}).",
        f"Command: `{meta['provenance']['command']}`",
        "",
        "| class | " + " | ".join(columns) + " |" + "".join(f" held out: {g.value} |" for g in held_out),
        "|---|" + "---:|" * (len(columns) + len(held_out)),
    ]
    for row in r.class_rows(columns, blank="—"):
        lines.append(
            "| " + " | ".join(map(str, row)) + " |" + "".join(f" {g.classes[row[0]].total} |" for g in held_out)
        )
    lines += [
        "",
        "Counts are over the *working set*: real rows of split(s) "
        + ", ".join(f"`{s}`" for s in cfg.splits)
        + (f" outside fold(s) {', '.join(map(str, plan.holdout_folds))}" if plan.holdout_folds else "")
        + ". "
        "All other real rows are in the manifest unchanged"
        + (" and counted apart (*held out*, by split, or by fold of a balanced split)" if held_out else "")
        + ".",
        "",
        "## How the synthetic images were made",
        "",
        f"- Sources: real images of the other classes, round-robin over subjects, subjects lacking the target class "
        f"first; seed {cfg.seed}. "
        + (
            "Subjects, and each subject's images, whose expression the checkpoint's FER branch finds closest to the "
            "target are tried first (`--source-order similar`). "
            if cfg.source_order == "similar"
            else ""
        )
        + "Reused sources are mirrored or jittered (`source_transform` column)."
        + (
            f" Each edit is scaled by an intensity drawn uniformly from {cfg.intensity[0]:g}..{cfg.intensity[1]:g} "
            "(`intensity` column; 1 = the generator's learnt translation, above 1 exaggerated)."
            if cfg.intensity
            else ""
        ),
        "- Quality gate: kept when the checkpoint's FER branch gives the target class at least "
        f"{cfg.min_confidence:g}, "
        f"at most {cfg.max_attempts} attempt(s) per image. This judge is optimistic (the generator was trained "
        "against it); judge the images with an independent classifier (`fesaug evaluate`) before trusting them.",
        *(
            [
                f"- AU check: also kept only when the emotion + AU model `{cfg.au_checkpoint}` gives the target's "
                f"prototype AUs a mean probability of at least {cfg.min_au_consistency:g} (`au_consistency` column)."
            ]
            if cfg.au_checkpoint
            else []
        ),
        *(
            [
                f"- Independent judge: also kept only when the classifier `{cfg.judge_checkpoint}`, trained on "
                "real faces "
                f"apart from the generator, gives the target at least {cfg.min_judge_confidence:g} "
                "(`judge_confidence` column)."
            ]
            if cfg.judge_checkpoint
            else []
        ),
        *(
            [
                f"- Identity: also kept only when dlib's face-recognition embedding of the image lies at most "
                f"{cfg.max_identity_distance:g} from its source face's (0.6 is dlib's same-person threshold; "
                "`identity_distance` column); a face it cannot align is rejected."
            ]
            if cfg.max_identity_distance is not None
            else []
        ),
        *(
            [
                f"- External judge: also kept only when the {cfg.external_judge.upper()} expression classifier, "
                "trained on "
                f"another dataset, gives the target at least {cfg.min_external_confidence:g} "
                "(`external_confidence` column); "
                "classes it does not know pass untouched."
            ]
            if cfg.external_judge
            else []
        ),
        *(
            ["", "Share of candidates each gate passed, per class:", "", *_markdown(*gate_table(r))]
            if r.gate_passed
            else []
        ),
        f"- Synthetic images are {plan.output_size}×{plan.output_size} PNGs under `images/<class>/`.",
        "- Each synthetic row keeps its parent's `subject_id`, `split` and `fold`, and names its `parent_id`.",
        "",
        "## Using it safely",
        "",
        f"The generator was trained on fold(s) {', '.join(map(str, gen.training_folds)) or '(none recorded)'}"
        + (f" and never saw fold {gen.holdout_fold}" if gen.holdout_fold is not None else "")
        + ". "
        "Test only on folds the generator never saw, and never train on synthetic images whose parents are test "
        "subjects. `fesaug audit manifest.parquet` checks both.",
        "",
        "```python",
        "from fesaug.data import ManifestDataset",
        'train = ManifestDataset("manifest.parquet", image_size=' + str(plan.output_size) + ")",
        *(
            [
                "from torch.utils.data import DataLoader, WeightedRandomSampler",
                "sampler = WeightedRandomSampler(train.weights, num_samples=len(train))  # draws classes as balanced",
                "loader = DataLoader(train, batch_size=64, sampler=sampler)",
            ]
            if r.weighted
            else []
        ),
        "```",
        *(
            [
                "",
                f"Synthesis filled {cfg.synthetic_share:.0%} of each class's shortfall and each synthetic row counts "
                f"{cfg.synthetic_weight:g}; the `weight` column makes up the rest on the class's real rows (the "
                "*weighted* "
                "column above), as repeating them would. Sample rows in proportion to `weight` (above) or weight "
                "the loss "
                "by it: read without weights, the classes are not balanced.",
            ]
            if r.weighted
            else []
        ),
        "",
        "The synthetic images derive from the source dataset's faces and fall under its licence.",
        "",
    ]
    return "\n".join(lines)


GATE_NAMES = {
    "fer_branch": "FER branch",
    "au_check": "AU check",
    "judge": "judge",
    "identity": "identity",
    "external": "external judge",
}


def gate_table(r: BalanceResult) -> tuple[list[str], list[list[str]]]:
    """Header and rows: per class, the share of candidates each gate passed (for the dataset
    card and the CLI summary)."""
    rates = r.gate_pass_rates
    header = ["class", *(GATE_NAMES.get(g, g) for g in rates)]
    rows = [
        [c, *("–" if rates[g][c] is None else f"{rates[g][c]:.0%}" for g in rates)]
        for c in r.counts_before
        if r.attempts.get(c)
    ]
    return header, rows


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|---|" + "---:|" * (len(header) - 1),
        *("| " + " | ".join(x) + " |" for x in rows),
    ]


def _summary_from(out: Path) -> BalanceResult:
    meta = read_manifest(out / "manifest.parquet").meta["balance"]
    return BalanceResult(
        out,
        out / "manifest.parquet",
        meta["counts_before"],
        meta["targets"],
        meta["to_generate"],
        meta["generated"],
        meta["removed"],
        meta["attempts"],
        meta["shortfall"],
        0.0,
        gate_passed=meta.get("gate_passed", {}),
        weighted=meta.get("weighted"),
    )
