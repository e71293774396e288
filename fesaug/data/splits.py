"""Who is trained on, validated on and held out: subject-independent folds (a subject never
appears in two folds, :func:`assign_folds`) and a run's split of a manifest (:func:`split_subjects`).

The held-out fold has one name everywhere: ``holdout_fold`` for one fold (``TrainConfig``, a
checkpoint's ``config`` and ``split``) and ``holdout_folds`` for several (``BalanceConfig``, the
balance footer, a manifest's footer, a split record). :func:`check_holdout_folds` validates them
for every caller; the names older versions recorded are read as these by each record's migration
(:data:`fesaug.data.manifest.HOLDOUT_RENAMES`).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from fesaug.data.manifest import Manifest
from fesaug.utils.errors import FesaugError


def manifest_folds(manifest: Manifest) -> list[int]:
    """The folds the manifest's rows are in, in order."""
    return sorted(int(f) for f in manifest.df["fold"].dropna().unique())


def check_holdout_folds(
    folds: Iterable[int],
    manifest: Manifest | None = None,
    *,
    option: str = "--holdout-fold",
    error: type[FesaugError] = FesaugError,
) -> tuple[int, ...]:
    """Validate held-out fold numbers, once for every caller; returns them as a tuple of ints.

    Each must be a whole number of 0 or more; with ``manifest``, the manifest must have folds and
    each of ``folds``. ``option``: the flag the messages name. A failure raises ``error``, so each
    caller keeps its exit status: :class:`FesaugError` (1) for training's ``--holdout-fold`` (the
    fold is checked against the manifest only when training starts), :class:`UsageError` (2) for
    ``BalanceConfig`` and ``fesaug evaluate --folds``."""
    folds = tuple(folds)
    bad = [f for f in folds if isinstance(f, bool) or not isinstance(f, (int, np.integer)) or f < 0]
    if bad:
        raise error(f"{option} must be a fold number (0 or more), got {bad[0]!r}")
    folds = tuple(int(f) for f in folds)
    if manifest is not None and folds:
        present = manifest_folds(manifest)
        if not present:
            raise error(f"{manifest.path} has no folds, so {option} cannot be used; re-create it with folds")
        missing = [f for f in folds if f not in present]
        if missing:
            raise error(f"{option}: {manifest.path} has no fold {missing[0]} (folds: {', '.join(map(str, present))})")
    return folds


def assign_folds(labels: Sequence[int], groups: Sequence[str], n_folds: int, seed: int = 0) -> np.ndarray:
    """Fold index per sample from scikit-learn's StratifiedGroupKFold (groups = subject ids).

    Stratification keeps every fold's class mix close to the whole; grouping keeps each subject's
    images together, so no face is in both training and test folds.
    """
    labels = np.asarray(labels)
    groups = np.asarray(groups, dtype=object)
    n_subjects = len(set(groups.tolist()))
    if n_folds < 2:
        raise FesaugError(f"--folds must be at least 2 (got {n_folds})")
    if n_subjects < n_folds:
        raise FesaugError(
            f"cannot make {n_folds} subject-independent folds from {n_subjects} subject(s); "
            "use fewer --folds or check --subject-pattern"
        )
    folds = np.full(len(labels), -1, dtype=np.int64)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, test_idx) in enumerate(splitter.split(np.zeros(len(labels)), labels, groups)):
        folds[test_idx] = k
    return folds


@dataclass
class Split:
    """Row positions (in ``manifest.df``) and subjects of each part of a run's data."""

    holdout_fold: int | None
    train_rows: np.ndarray
    val_rows: np.ndarray
    train_subjects: list[str]
    val_subjects: list[str]
    heldout_subjects: list[str]
    train_folds: list[int]
    val_folds: list[int]
    holdout_folds: list[int]  # the folds of every held-out row (holdout_fold's, and the test split's)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if not k.endswith("_rows")}


def split_subjects(manifest: Manifest, holdout_fold: int | None, val_fraction: float, seed: int) -> Split:
    """Hold out fold ``holdout_fold`` and split ``test``; carve validation subjects from the rest.

    Validation subjects are one fold of a stratified, subject-grouped split of the training
    subjects into ``round(1 / val_fraction)`` parts, so their class mix follows the training set.
    A manifest with its own ``validation`` split keeps it: those rows validate, the rest train,
    and ``val_fraction`` is not used (``fesaug evaluate`` writes such a manifest per fold, so
    FERSNet, the balanced data and the downstream classifier all see one split).
    """
    df = manifest.df
    real = (df["origin"] == "real").to_numpy()
    folds = df["fold"]
    if holdout_fold is not None:
        check_holdout_folds([holdout_fold], manifest)
    in_fold = (
        (folds == holdout_fold).fillna(False).to_numpy(dtype=bool)
        if holdout_fold is not None
        else np.zeros(len(df), bool)
    )
    heldout = real & (in_fold | (df["split"] == "test").to_numpy())
    pool = real & ~heldout
    subjects = df["subject_id"]
    if subjects[pool].isna().any():
        first = df["sample_id"][pool & subjects.isna().to_numpy()].iloc[0]
        raise FesaugError(
            f"{manifest.path}: row {first} has no subject_id; training splits and pairs images by subject, "
            "so every real row needs one (re-ingest with a subject pattern)"
        )
    heldout_subjects = set(subjects[heldout].dropna())
    leaking = sorted(heldout_subjects & set(subjects[pool]))
    if leaking:
        raise FesaugError(
            f"{manifest.path}: subject(s) {', '.join(leaking[:5])} have rows both in the held-out data and in "
            "training data; re-assign folds by subject (`fesaug audit` lists them)"
        )
    pool_rows = np.flatnonzero(pool)
    if pool_rows.size == 0:
        raise FesaugError(
            f"{manifest.path}: no real training rows are left after holding out fold {holdout_fold} and the test split"
        )
    pool_subjects = subjects.iloc[pool_rows].astype(str).to_numpy()
    is_val = (df["split"].iloc[pool_rows] == "validation").to_numpy()
    if is_val.any():
        overlap = sorted(set(pool_subjects[is_val]) & set(pool_subjects[~is_val]))
        if overlap:
            raise FesaugError(
                f"{manifest.path}: subject(s) {', '.join(overlap[:5])} have rows in the validation split and in "
                "training rows; re-assign splits by subject (`fesaug audit` lists them)"
            )
    elif val_fraction > 0:
        n_subjects = len(set(pool_subjects))
        if n_subjects < 2:
            raise FesaugError(
                f"{manifest.path}: only {n_subjects} training subject(s), too few to carve a validation set; set "
                "val_fraction: 0"
            )
        n_parts = min(n_subjects, max(2, round(1 / val_fraction)))
        labels = df["label"].to_numpy(dtype=np.int64)[pool_rows]
        with warnings.catch_warnings():
            # scikit-learn warns when a class has fewer subjects than parts; stratification is
            # then best-effort, which is all a validation split of a small dataset can be.
            warnings.simplefilter("ignore", UserWarning)
            is_val = assign_folds(labels, pool_subjects, n_parts, seed) == 0
    train_rows, val_rows = pool_rows[~is_val], pool_rows[is_val]

    def fold_list(rows: np.ndarray) -> list[int]:
        return sorted(int(f) for f in folds.iloc[rows].dropna().unique())

    return Split(
        holdout_fold=holdout_fold,
        train_rows=train_rows,
        val_rows=val_rows,
        train_subjects=sorted(set(pool_subjects[~is_val])),
        val_subjects=sorted(set(pool_subjects[is_val])),
        heldout_subjects=sorted(map(str, heldout_subjects)),
        train_folds=fold_list(train_rows),
        val_folds=fold_list(val_rows),
        holdout_folds=fold_list(np.flatnonzero(heldout)),
    )
