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
from torch import nn

from fesaug.evaluate.classifiers import DownstreamClassifier, features

__all__ = ["RETUNE_C", "fit_head", "refit_last_layer", "retune_head"]

# The inverse regularisation strengths tried, from a nearly constant layer to a nearly free one.
RETUNE_C = (0.01, 0.1, 1.0, 10.0)


def retune_head(
    model: DownstreamClassifier,
    x: torch.Tensor,
    y: np.ndarray,
    val_x: torch.Tensor,
    val_y: np.ndarray,
) -> dict[str, Any]:
    """Fit a new last layer for the downstream classifier ``model`` on the real faces ``x``/``y``
    (``uint8`` images; in place, if validation prefers it); returns what was tried and chosen,
    for the fold record."""
    return fit_head(model.head, features(model, x), y, features(model, val_x), val_y)


@torch.no_grad()
def refit_last_layer(
    model: nn.Module,
    head: nn.Linear,
    x: torch.Tensor,
    y: np.ndarray | torch.Tensor,
    val_x: torch.Tensor,
    val_y: np.ndarray | torch.Tensor,
    *,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Decoupled re-training of any classifier's last layer: ``head``, the final ``nn.Linear`` of
    ``model``, is fitted again on the real faces ``x``/``y`` (what ``model`` takes, in batches of
    ``batch_size``) as a class-balanced logistic regression on its inputs, its strength chosen on
    ``val_x``/``val_y``, and replaced in place only if validation macro-F1 rises. What
    ``fesaug evaluate --retune-head`` does to its own classifiers; returns the same record."""
    captured: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach().float().cpu()))
    was_training = model.training
    model.eval()
    try:
        inputs = []
        for images in (x, val_x):
            captured.clear()
            for i in range(0, len(images), batch_size):
                model(images[i : i + batch_size])
            inputs.append(torch.cat(captured).flatten(1).numpy())
    finally:
        hook.remove()
        model.train(was_training)
    return fit_head(head, inputs[0], np.asarray(y), inputs[1], np.asarray(val_y))


def fit_head(
    head: nn.Linear, train_features: np.ndarray, y: np.ndarray, val_features: np.ndarray, val_y: np.ndarray
) -> dict[str, Any]:
    """The re-tune itself, on the last layer's inputs: standardised features, one class-balanced
    logistic regression per strength in :data:`RETUNE_C`, the best on validation written into
    ``head`` (the standardisation folded in) if it beats the trained layer there."""
    classes = np.arange(head.out_features)
    y, val_y = np.asarray(y), np.asarray(val_y)

    def val_f1(pred: np.ndarray) -> float:
        return float(f1_score(val_y, pred, average="macro", labels=classes, zero_division=0))

    trained_logits = val_features @ head.weight.detach().cpu().numpy().T + head.bias.detach().cpu().numpy()
    before = val_f1(trained_logits.argmax(1))
    info: dict[str, Any] = {"val_macro_f1_before": before, "applied": False}
    if len(np.unique(y)) < head.out_features:
        return info | {"skipped": "a class has no real training face"}
    scaler = StandardScaler().fit(train_features)
    train_f, val_f = scaler.transform(train_features), scaler.transform(val_features)
    fits = [LogisticRegression(C=c, class_weight="balanced", max_iter=3000).fit(train_f, y) for c in RETUNE_C]
    scores = [val_f1(clf.predict(val_f)) for clf in fits]
    best = int(np.argmax(scores))
    info |= {"val_macro_f1_after": scores[best], "C": RETUNE_C[best], "val_macro_f1_per_C": scores}
    if scores[best] > before:
        _set_head(head, fits[best], scaler)
        info["applied"] = True
    return info


def _set_head(head: nn.Linear, clf: LogisticRegression, scaler: StandardScaler) -> None:
    """The logistic regression on standardised features as the model's linear head (the scaler folded in)."""
    coef, bias = clf.coef_, clf.intercept_
    if coef.shape[0] == 1:  # scikit-learn's binary form: one logit difference, the first class at 0
        coef, bias = np.vstack([np.zeros_like(coef), coef]), np.concatenate([[0.0], bias])
    weight = coef / scaler.scale_
    bias = bias - weight @ scaler.mean_
    with torch.no_grad():
        head.weight.copy_(torch.as_tensor(weight, dtype=head.weight.dtype))
        head.bias.copy_(torch.as_tensor(bias, dtype=head.bias.dtype))
