"""Subject-independent folds: a subject never appears in two folds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import FesaugError


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

