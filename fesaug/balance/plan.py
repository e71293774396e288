"""What a balance run will do, decided before any image is made: the working set, the targets,
which sources each class is made from and in what order (:func:`plan_sources`), and how a reused
source is varied (:func:`jitter`). :func:`make_plan` computes it identically on every rank."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.transforms.v2 import functional as TF

from fesaug.balance.config import BalanceConfig
from fesaug.balance.gates import Gates, load_gates
from fesaug.balance.targets import Targets, resolve_targets
from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import Manifest, read_manifest, working_set
from fesaug.synthesis.generator import Generator, load_generator
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import file_sha256


@dataclass(frozen=True)
class Candidate:
    """One attempt at one slot: synthesize working-set row ``source`` (a position in the
    manifest) as ``target``; ``variant`` 0 = as is, 1 = mirrored, >= 2 = jittered."""

    source: int
    variant: int


def seeded_rng(*key: int) -> np.random.Generator:
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
    rng = seeded_rng(seed, target)
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


def jitter(image: torch.Tensor, variant: int, key: tuple[int, ...]) -> tuple[torch.Tensor, str]:
    """The source image for ``variant`` and a description for the manifest."""
    if variant == 0:
        return image, "none"
    mirrored = TF.horizontal_flip(image) if variant % 2 else image
    if variant == 1:
        return mirrored, "hflip"
    rng = seeded_rng(*key)
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


@dataclass
class Plan:
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
    gates: Gates  # the quality gates beside the FER branch's
    decoded: tuple[np.ndarray, torch.Tensor] | None = None  # source rows and their pixels, if planning needed them
    # --reject: each replacement slot's candidates, one per attempt (fesaug.balance.reject)
    replacements: dict[tuple[int, int], list[Candidate]] = field(default_factory=dict)
    gains: dict[int, float] = field(default_factory=dict)  # class index -> edit gain (class_intensity)
    calibration: dict[str, Any] | None = None  # how calibrate_intensity chose the gains

    def sample_id(self, cls: int, slot: int) -> str:
        return f"syn-{self.generator.checkpoint_sha256[:10]}-{self.manifest.classes[cls]}-{slot:06d}"

    def candidate(self, cls: int, slot: int, attempt: int) -> Candidate:
        """Attempt ``attempt`` at slot ``slot`` of class ``cls``: :func:`candidate`, or a
        replacement slot's own candidate under ``--reject``."""
        if (cls, slot) in self.replacements:
            return self.replacements[cls, slot][attempt]
        return candidate(self.orders[cls], self.to_synthesize[self.manifest.classes[cls]], slot, attempt)


def make_plan(manifest_path: Path, checkpoint: Path, config: BalanceConfig, device: str | None) -> Plan:
    m = read_manifest(manifest_path)
    gen = load_generator(checkpoint, device=device)
    if gen.classes != m.classes:
        raise FesaugError(
            f"the checkpoint {checkpoint} was trained on classes {', '.join(gen.classes)} but {manifest_path} has "
            f"{', '.join(m.classes)}; use a checkpoint trained on this dataset (fesaug train --manifest "
            f"{manifest_path})"
        )
    m.check_channels(gen.channels, f"the checkpoint {checkpoint}")
    holdout_folds = (
        list(config.holdout_folds)
        if config.holdout_folds is not None
        else ([gen.holdout_fold] if gen.holdout_fold is not None else [])
    )
    working = working_rows(m, config.splits, holdout_folds)
    decoded: dict[str, Any] = {}

    def similarity(sources: np.ndarray) -> np.ndarray:
        decoded["pixels"] = pixels = source_pixels(m, sources, gen)
        # Rounded so that the order (and so a resumed run's plan) does not hang on the last bits
        # of float arithmetic, which differ between devices.
        return np.round(gen.classify(pixels).numpy(), 3)

    sp = plan_slots(m, working, config, similarity)
    targets, removed, to_generate, orders, slots = sp.targets, sp.removed, sp.to_synthesize, sp.orders, sp.slots
    key = {
        "config": config.to_dict(),
        "manifest_sha256": file_sha256(manifest_path),
        "checkpoint_sha256": gen.checkpoint_sha256,
        "targets": dict(targets),
    }
    gates = load_gates(config, m, device)
    key |= gates.key
    gains, calibration = _gains(m, gen, gates, config, where=str(manifest_path))
    if gains:
        key["gains"] = {m.classes[k]: g for k, g in gains.items()}
    size = choose_output_size(m, working, gen, config.output_size)
    decoded_sources = None if "pixels" not in decoded else (sp.sources, decoded["pixels"])
    return Plan(
        m, gen, config, working, targets, to_generate, removed, sorted(holdout_folds), size, orders, slots, key,
        gates, decoded_sources, gains=gains, calibration=calibration,
    )  # fmt: skip


def _gains(
    m: Manifest, gen: Generator, gates: Gates, config: BalanceConfig, *, where: str
) -> tuple[dict[int, float], dict[str, Any] | None]:
    """Each class's edit gain: given (``class_intensity``), calibrated, or none."""
    unknown = [c for c in config.class_intensity if c not in m.classes]
    if unknown:
        raise UsageError(f"--class-intensity names {unknown[0]!r}, which {where} does not have; its classes are "
                         f"{', '.join(m.classes)}")  # fmt: skip
    if not config.calibrate_intensity:
        return {m.classes.index(c): g for c, g in config.class_intensity.items()}, None
    from fesaug.balance.calibrate import calibrate_gains

    real = (m.df["origin"] == "real") & m.df["subject_id"].astype(str).isin(gen.validation_subjects)
    return calibrate_gains(m, np.flatnonzero(real.to_numpy()), gen, gates.judge, seed=config.seed)


@dataclass
class SlotPlan:
    """What a balance run fills, before any generator is involved: the targets, the rows
    under-sampling drops, the count to synthesize per class, the rows sources are taken from, each
    class's source order and every (class, slot) to fill."""

    targets: Targets
    removed: list[int]
    to_synthesize: dict[str, int]
    sources: np.ndarray
    orders: dict[int, list[int]]
    slots: list[tuple[int, int]]


def plan_slots(
    m: Manifest,
    working: np.ndarray,
    config: BalanceConfig,
    similarity: Callable[[np.ndarray], np.ndarray] | None = None,
) -> SlotPlan:
    """The slots of a balance run over ``working`` (:class:`SlotPlan`). ``similarity(sources)``:
    each source's probability of each class, for ``source_order="similar"`` (required then)."""
    targets, removed = _targets(m, working, config)
    to_generate = targets.to_synthesize(config.synthetic_share)
    # Sources exclude rows dropped by under-sampling: the balanced set must not depend on them.
    sources = np.setdiff1d(working, np.asarray(removed, dtype=np.int64))
    scores = None
    if config.source_order == "similar" and any(to_generate.values()):
        if similarity is None:
            raise UsageError("--source-order similar ranks sources with a generator's FER branch; none was given")
        scores = similarity(sources)
    orders, slots = _orders(m, sources, to_generate, config.seed, scores)
    return SlotPlan(targets, removed, to_generate, sources, orders, slots)


def _targets(m: Manifest, working: np.ndarray, config: BalanceConfig) -> tuple[Targets, list[int]]:
    """The resolved targets and the rows under-sampling drops (at random, seeded)."""
    labels = m.df["label"].to_numpy(dtype=np.int64)
    counts = {c: int((labels[working] == k).sum()) for k, c in enumerate(m.classes)}
    targets = resolve_targets(
        counts,
        target_per_class=config.target_per_class,
        sampling_strategy=config.sampling_strategy,
        targets=config.targets,
        undersample=config.undersample,
    )
    removed: list[int] = []
    for k, c in enumerate(m.classes):
        extra = targets.to_remove[c]
        if extra > 0:
            pool = working[labels[working] == k]
            removed += sorted(int(r) for r in seeded_rng(config.seed, k, 1).choice(pool, size=extra, replace=False))
    return targets, removed


def _orders(
    m: Manifest, sources: np.ndarray, to_generate: dict[str, int], seed: int, similarity: np.ndarray | None
) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """Each class's source order and every (class, slot) to fill, in order."""
    labels = m.df["label"].to_numpy(dtype=np.int64)[sources]
    subjects = subject_keys(m, sources)
    orders, slots = {}, []
    for k, c in enumerate(m.classes):
        if to_generate[c]:
            orders[k] = plan_sources(
                labels, subjects, sources, k, seed, None if similarity is None else similarity[:, k]
            )
            if not orders[k]:
                raise FesaugError(f"no source images for {c!r}: every working-set image is of that class")
            slots += [(k, s) for s in range(to_generate[c])]
    return orders, slots


def working_rows(m: Manifest, splits: Sequence[str], holdout_folds: Sequence[int]) -> np.ndarray:
    """Manifest positions of the real rows to balance: ``splits`` outside ``holdout_folds``."""
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


def subject_keys(m: Manifest, rows: np.ndarray) -> list[str]:
    """The identity of each row: its subject, or the row itself when it has no subject id."""
    ids, subjects = m.df["sample_id"].tolist(), m.df["subject_id"].tolist()
    return [f"row:{ids[r]}" if pd.isna(subjects[r]) else str(subjects[r]) for r in rows.tolist()]


def choose_output_size(m: Manifest, rows: np.ndarray, generator: Generator, requested: int | None) -> int:
    """``requested``, else the real images' size when they share one square size, else the generator's."""
    if requested is not None:
        return requested
    sizes = set(zip(m.df["width"].iloc[rows].tolist(), m.df["height"].iloc[rows].tolist()))
    if len(sizes) == 1:
        w, h = next(iter(sizes))
        if w == h:
            return int(w)
    return generator.image_size


def source_pixels(m: Manifest, rows: np.ndarray, gen: Generator) -> torch.Tensor:
    """The source rows decoded at the generator's size."""
    return ManifestDataset(m, rows=rows, image_size=gen.image_size).pixels
