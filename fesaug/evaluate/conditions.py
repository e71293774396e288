"""The conditions ``fesaug evaluate`` compares, each defined once.

A condition is what a downstream classifier trains on in a fold (:class:`TrainingSet`), and how:
from scratch, or fine-tuned from FERSNet's FER branch (the paper's recipe). The fold machinery
(:mod:`fesaug.evaluate.runner`) trains, scores, caches and records every condition the same way,
so adding one is one :class:`Condition` and its :func:`register` call; the report and the
comparisons pick it up by name.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from fesaug.balance.output import row_weights
from fesaug.balance.targets import Targets, resolve_targets
from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.manifest import read_manifest
from fesaug.evaluate.downstream import random_oversample
from fesaug.evaluate.truth import exact_counterfactuals

if TYPE_CHECKING:
    from fesaug.evaluate.fold import Fold

__all__ = [
    "COMPARISONS",
    "DEFAULT_CONDITIONS",
    "REGISTRY",
    "Condition",
    "TrainingSet",
    "register",
    "run_order",
]


@dataclass
class TrainingSet:
    """What one downstream training of a condition sees: ``uint8`` images, labels, optional
    sampling weights (rows drawn in proportion, as many draws per epoch as they sum to),
    ``info`` recorded beside the condition's scores, and optional soft ``targets`` (``N×classes``
    probabilities: synthetic rows of a balance run with ``--synthetic-labels soft``)."""

    x: torch.Tensor
    y: np.ndarray
    weights: torch.Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    targets: torch.Tensor | None = None


@dataclass(frozen=True)
class Condition:
    """One condition. ``data(fold, r, size)`` builds its training set for seed offset ``r`` at
    ``size`` px; ``None`` means nothing is trained (FERSNet's own branch is scored as it is).
    ``fine_tune``: start from FERSNet's FER branch at a tenth of the learning rate, at the
    generator's image size, instead of a fresh classifier. ``needs_generator``: it needs the
    fold's trained FERSNet. ``after``: conditions that run first when they are selected too (their
    records decide this one's counts). ``note``: its one-line description in the report."""

    name: str
    note: str
    data: Callable[[Fold, int, int], TrainingSet] | None
    needs_generator: bool = False
    fine_tune: bool = False
    after: tuple[str, ...] = ()


REGISTRY: dict[str, Condition] = {}


def register(condition: Condition) -> Condition:
    """Add ``condition`` to :data:`REGISTRY` (in report order)."""
    if condition.name in REGISTRY:
        raise ValueError(f"condition {condition.name!r} is registered twice")
    REGISTRY[condition.name] = condition
    return condition


def run_order(selected: Collection[str]) -> list[Condition]:
    """The ``selected`` conditions in registry order, each after the selected ones it names in ``after``."""
    order: list[Condition] = []

    def add(name: str) -> None:
        condition = REGISTRY[name]
        if condition not in order:
            for first in condition.after:
                if first in selected:
                    add(first)
            order.append(condition)

    for name in REGISTRY:
        if name in selected:
            add(name)
    return order


DEFAULT_CONDITIONS = ("real", "oversample", "fes")
# Paired over folds when both ran: synthesis against its two baselines, the truth ceiling against
# oversampling and against synthesis (on the demo set), and the paper's recipe
# (fine-tuning on synthetic faces) against the FER branch it starts from and against the same
# fine-tuning on repeated real faces (what the synthetic faces add beyond more training).
COMPARISONS = (
    ("fes", "real"),
    ("fes", "oversample"),
    ("mixed", "real"),
    ("mixed", "oversample"),
    ("truth", "oversample"),
    ("truth-half", "oversample"),
    ("truth", "fes"),
    ("fersnet+fes", "fersnet"),
    ("fersnet+fes", "fersnet+oversample"),
)


def oversample_index(fold: Fold, r: int) -> tuple[np.ndarray, list[str]]:
    """Positions in ``train_rows`` of the oversampled training set (repeats included) and the
    classes that could not be oversampled; for seed offset ``r``, the same draw for every
    condition that uses it."""
    y = fold.labels[fold.train_rows]
    real = dict(zip(fold.m.classes, np.bincount(y, minlength=len(fold.m.classes)).tolist()))
    fes = fold.dir / "fes.json"
    if fes.exists():  # the same per-class counts as the synthetic condition reached
        wanted = Targets(real, {c: int(n) for c, n in json.loads(fes.read_text())["train_counts"].items()})
    else:
        b = fold.config.balance
        wanted = resolve_targets(
            real,
            target_per_class=b.target_per_class,
            sampling_strategy=b.sampling_strategy,
            targets=b.targets,
            undersample=False,
        )
    # A class without a real training image cannot be oversampled (synthesis can still make
    # it from other classes' faces); it is recorded, so the report can say why counts differ.
    extra = wanted.to_generate
    targets = {k: real[c] + extra[c] for k, c in enumerate(fold.m.classes) if real[c]}
    missing = [c for c in fold.m.classes if not real[c] and extra[c] > 0]
    return random_oversample(y, targets, fold.config.seed + r), missing


def _real(fold: Fold, r: int, size: int) -> TrainingSet:
    return TrainingSet(fold.pixels_at(size)[fold.train_rows], fold.labels[fold.train_rows])


def _oversample(fold: Fold, r: int, size: int) -> TrainingSet:
    index, missing = oversample_index(fold, r)
    x, y = fold.pixels_at(size)[fold.train_rows], fold.labels[fold.train_rows]
    return TrainingSet(x[index], y[index], info={"not_oversampled": missing} if missing else {})


def _soft(train: ManifestDataset) -> torch.Tensor | None:
    return train.targets if train.has_soft_labels else None


def _fes(fold: Fold, r: int, size: int) -> TrainingSet:
    train = fold.balanced_train(size)
    return TrainingSet(train.pixels, train.labels, fold.balanced_weights(), targets=_soft(train))


def _fes_unweighted(fold: Fold, r: int, size: int) -> TrainingSet:
    # The paper's fine-tuning recipe reads the balanced rows as they are, without a weighted run's weights.
    train = fold.balanced_train(size)
    return TrainingSet(train.pixels, train.labels, targets=_soft(train))


def _mixed(fold: Fold, r: int, size: int) -> TrainingSet:
    """Each class's shortfall filled half by synthetic images, half by real repeats: what
    synthesis adds when it only has to supply part of the new images. The synthetic half is
    the first of each class in the balanced manifest, which follows balance's plan (round-robin
    over subjects, so the half still spans them). A class without real training images keeps
    all its synthetic ones, as it cannot be oversampled."""
    balanced = fold.balanced_train(size)
    synthetic = balanced.manifest.df["origin"].to_numpy()[balanced.rows] != "real"
    y = fold.labels[fold.train_rows]
    chosen, targets = [], {}
    for k in range(len(fold.m.classes)):
        mine = np.flatnonzero(synthetic & (balanced.labels == k))  # positions in manifest (= plan) order
        n_real = int((y == k).sum())
        keep = mine[: len(mine) // 2] if n_real else mine
        chosen.append(keep)
        if n_real:
            targets[k] = n_real + len(mine) - len(keep)
    index, syn = random_oversample(y, targets, fold.config.seed + r), np.concatenate(chosen)
    x = torch.cat([fold.pixels_at(size)[fold.train_rows][index], balanced.pixels[syn]])
    soft = _soft(balanced)
    if soft is not None:  # the real repeats' targets are one-hot
        real_targets = torch.nn.functional.one_hot(torch.as_tensor(y[index]), len(fold.m.classes)).float()
        soft = torch.cat([real_targets, soft[syn]])
    labels = np.concatenate([y[index], balanced.labels[syn]])
    return TrainingSet(x, labels, info={"n_synthetic": len(syn)}, targets=soft)


register(Condition("real", "real training images only", _real))
register(
    Condition(
        "oversample",
        "real images randomly oversampled to the `fes` counts, classic augmentation",
        _oversample,
        after=("fes",),
    )
)
register(Condition("fes", "real + FERSNet-synthesized images (fesaug balance)", _fes, needs_generator=True))
register(
    Condition(
        "mixed",
        "the `fes` counts, each class's shortfall half synthetic images, half real repeats",
        _mixed,
        needs_generator=True,
    )
)


def _truth(fold: Fold, r: int, size: int, *, half: bool = False) -> TrainingSet:
    """The fold's training images, balanced with the exact counterfactuals of the faces
    ``fesaug balance`` would make (:mod:`fesaug.evaluate.truth`), at the same per-class counts as
    ``fes`` reached when it ran; rendered once per fold and intensity."""
    scale = fold.config.truth_intensity * (0.5 if half else 1.0)
    config = fold.config.balance
    if ("truth", scale) not in fold.memo:
        holdout = () if fold.k is None else (fold.k,)
        split = read_manifest(fold.split_manifest)
        config = dataclasses.replace(config, splits=("train",), holdout_folds=holdout)
        limit = None
        fes = fold.dir / "fes.json"
        if fes.exists() and not config.weighted:  # a weighted run's counts are weight sums, not faces
            reached = json.loads(fes.read_text())["train_counts"]
            real = np.bincount(fold.labels[fold.train_rows], minlength=len(fold.m.classes))
            limit = {c: int(reached[c]) - int(real[k]) for k, c in enumerate(fold.m.classes)}
        exact = exact_counterfactuals(split, config, holdout, scale, limit)
        dropped = set(split.df["sample_id"].iloc[exact.removed])
        fold.memo["truth", scale] = (exact, dropped)
    exact, dropped = fold.memo["truth", scale]
    train = fold.train_rows[~fold.m.df["sample_id"].iloc[fold.train_rows].isin(dropped).to_numpy()]
    x = torch.cat([fold.pixels_at(size)[train], resize_pixels(exact.pixels, size)])
    y = np.concatenate([fold.labels[train], exact.labels])
    weights = None
    if config.weighted:
        frame = pd.DataFrame({"label": y, "origin": ["real"] * len(train) + ["synthetic"] * len(exact.labels)})
        balanced = np.ones(len(y), dtype=bool)
        w = row_weights(frame, exact.targets, config.synthetic_weight, balanced=balanced, classes=fold.m.classes)
        weights = torch.as_tensor(w)
    info = {
        "n_synthetic": len(exact.labels),
        "truth_intensity": scale,
        "reused_sources": int((exact.variants > 0).sum()),
    }
    return TrainingSet(x, y, weights, info)


register(
    Condition(
        "truth",
        "real + the exact counterfactuals of the sources balance would use (demo set; a perfect generator)",
        _truth,
        after=("fes",),
    )
)
register(
    Condition(
        "truth-half",
        "as `truth`, each exact face at half its source's intensity (a timid but clean edit)",
        functools.partial(_truth, half=True),
        after=("fes",),
    )
)
register(Condition("fersnet", "FERSNet's own FER branch (reference, not a downstream model)", None, True))
register(
    Condition(
        "fersnet+fes",
        "FERSNet's FER branch fine-tuned on real + synthetic images (the paper's recipe)",
        _fes_unweighted,
        needs_generator=True,
        fine_tune=True,
    )
)
register(
    Condition(
        "fersnet+oversample",
        "FERSNet's FER branch fine-tuned on real images oversampled to the same counts (control)",
        _oversample,
        needs_generator=True,
        fine_tune=True,
        after=("fes",),
    )
)
# Not selectable: trained by the synthesis report (classification accuracy score).
SYNTHETIC_ONLY_NOTE = "synthetic images only (classification accuracy score)"
