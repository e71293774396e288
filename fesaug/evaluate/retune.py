"""Decoupled re-training of the last layer (cRT, Kang et al., ICLR 2020) on real faces only.

A classifier trained on a balanced set learns its features from every row, real, repeated or
synthetic; its last layer also learns the synthetic rows' quirks as if they were the classes'. The
re-tune keeps the features and fits a new last layer on the fold's *real* training faces alone,
class-balanced, as a multinomial logistic regression (scikit-learn) on the penultimate features.
The regularisation is chosen on the validation subjects, and the new layer replaces the old one only
if it scores higher there, so the re-tune never trades a validated model for a worse one. The same
step applies to every condition, ``oversample`` included, so comparisons stay fair.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.preprocessing import StandardScaler

from fesaug.evaluate.classifiers import DownstreamClassifier, features

__all__ = ["RETUNE_C", "retune_head"]

# The inverse regularisation strengths tried, from a nearly constant layer to a nearly free one.
RETUNE_C = (0.01, 0.1, 1.0, 10.0)


def retune_head(
    model: DownstreamClassifier,
    x: torch.Tensor,
    y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
) -> dict[str, Any]:
    """Fit a new last layer for ``model`` on the real faces ``x``/``y`` (in place, if validation
    prefers it); returns what was tried and chosen, for the fold record."""
    classes = np.arange(model.num_classes)
    y, val_y = np.asarray(y), np.asarray(val_y)

    def val_f1(pred: np.ndarray) -> float:
        return float(f1_score(val_y, pred, average="macro", labels=classes, zero_division=0))

    # The trained layer's validation score from the same features the new one is fitted on: one pass.
    val_features = features(model, val_x)
    head = model.head
    trained_logits = val_features @ head.weight.detach().cpu().numpy().T + head.bias.detach().cpu().numpy()
    before = val_f1(trained_logits.argmax(1))
    info: dict[str, Any] = {"val_macro_f1_before": before, "applied": False}
    if len(np.unique(y)) < model.num_classes:
        return info | {"skipped": "a class has no real training face"}
    train_features = features(model, x)
    scaler = StandardScaler().fit(train_features)
    train_f, val_f = scaler.transform(train_features), scaler.transform(val_features)
    fits = [LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(train_f, y) for c in RETUNE_C]
    scores = [val_f1(clf.predict(val_f)) for clf in fits]
    best = int(np.argmax(scores))
    info |= {"val_macro_f1_after": scores[best], "C": RETUNE_C[best], "val_macro_f1_per_C": scores}
    if scores[best] > before:
        _set_head(model, fits[best], scaler)
        info["applied"] = True
    return info


def _set_head(model: DownstreamClassifier, clf: LogisticRegression, scaler: StandardScaler) -> None:
    """The logistic regression on standardised features as the model's linear head (the scaler folded in)."""
    coef, bias = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # scikit-learn's binary form: one logit difference, the first class at 0
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    weight = coef / scaler.scale_
    bias = bias - weight @ scaler.mean_
    head = model.head
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
