"""The classification scores every evaluation reports, from scikit-learn so they match what readers
compute themselves (re-exported by :mod:`fesaug.evaluate.downstream`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

__all__ = ["classification_report"]


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    scored: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 over all ``classes`` (an absent class counts as F1 0, so a classifier
    cannot look better by never predicting a rare class), per-class recall and F1, and the
    confusion matrix (rows true, columns predicted) — all from scikit-learn.

    ``scored``: the classes the test set can score (default all), when it lacks some the model
    was trained on (a test set from another dataset). Macro-F1 and the per-class scores cover
    those only; accuracy and the confusion matrix count every prediction, so predicting a class
    outside ``scored`` is an error like any other."""
    classes = list(classes)
    scored = classes if scored is None else list(scored)
    labels = [classes.index(c) for c in scored]
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    support = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(classes))[labels]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "recall": {c: float(v) for c, v in zip(scored, recall)},
        "f1": {c: float(v) for c, v in zip(scored, f1)},
        "support": {c: int(v) for c, v in zip(scored, support)},
        "confusion": {
            "classes": classes,
            "matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(classes)))).tolist(),
        },
    }
