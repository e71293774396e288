"""The last layer's re-tune on real faces (`fesaug evaluate --retune-head`, decoupled training)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from fesaug.evaluate.downstream import DownstreamConfig, fit, predict_proba
from fesaug.evaluate.retune import retune_head

pytestmark = pytest.mark.usefixtures("one_thread")


def shapes(n: int, seed: int, classes: int) -> tuple[torch.Tensor, np.ndarray]:
    """Noisy 32 px images of a bright horizontal bar (0), vertical bar (1) or both, a cross (2)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 1, 32, 32)).astype(np.uint8)
    y = np.arange(n) % classes
    for i in range(n):
        p = rng.integers(6, 23)
        if y[i] in (0, 2):
            x[i, 0, p : p + 3, 4:28] = 230
        if y[i] in (1, 2):
            x[i, 0, 4:28, p : p + 3] = 230
    return torch.from_numpy(x), y


def macro_f1(model, x, y) -> float:
    pred = predict_proba(model, x).argmax(1)
    return float(f1_score(y, pred, average="macro", labels=range(model.num_classes), zero_division=0))


@pytest.mark.parametrize("classes", [2, 3])
def test_a_spoilt_last_layer_is_refitted_on_the_real_faces_and_validation_scores_it(classes: int) -> None:
    x, y = shapes(96, 0, classes)
    vx, vy = shapes(48, 1, classes)
    config = DownstreamConfig(epochs=6, model="small-cnn", batch_size=16, lr=3e-3, image_size=32, device="cpu")
    model = fit(x, y, vx, vy, config, num_classes=classes).model
    with torch.no_grad():  # a last layer that learnt the wrong thing: its rows shuffled
        model.head.weight.copy_(model.head.weight.roll(1, 0))
        model.head.bias.copy_(model.head.bias.roll(1, 0))
    spoilt = macro_f1(model, vx, vy)
    info = retune_head(model, x, y, vx, vy)
    assert info["applied"] and info["val_macro_f1_before"] == pytest.approx(spoilt)
    # The head now computes the chosen logistic regression (its scaler folded in): the validation
    # score it was chosen by is the model's own.
    assert macro_f1(model, vx, vy) == pytest.approx(info["val_macro_f1_after"]) and info["val_macro_f1_after"] > spoilt
    assert info["C"] in (0.01, 0.1, 1.0, 10.0) and len(info["val_macro_f1_per_C"]) == 4


def test_a_head_validation_prefers_is_kept_and_a_missing_class_skips_the_retune() -> None:
    x, y = shapes(96, 0, 2)
    vx, vy = shapes(48, 1, 2)
    config = DownstreamConfig(epochs=6, batch_size=16, lr=3e-3, image_size=32, device="cpu")
    model = fit(x, y, vx, vy, config, num_classes=2).model
    assert macro_f1(model, vx, vy) == 1.0  # nothing to gain on validation
    before = model.head.weight.detach().clone()
    info = retune_head(model, x, y, vx, vy)
    assert not info["applied"] and torch.equal(model.head.weight, before)
    info = retune_head(model, x[y == 0], y[y == 0], vx, vy)
    assert not info["applied"] and "no real training face" in info["skipped"]


def test_any_model_s_last_layer_is_refitted_as_the_evaluation_refits_its_own() -> None:
    import fesaug

    x, y = shapes(96, 0, 3)
    vx, vy = shapes(48, 1, 3)
    torch.manual_seed(0)
    body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32 * 32, 24), torch.nn.ReLU())
    model = torch.nn.Sequential(body, torch.nn.Linear(24, 3))  # untrained: its last layer is noise
    model.train()
    images, val_images = x.float() / 255, vx.float() / 255

    def val_f1() -> float:
        with torch.no_grad():
            pred = model(val_images).argmax(1).numpy()
        return float(f1_score(vy, pred, average="macro", labels=range(3), zero_division=0))

    noise = val_f1()
    info = fesaug.refit_last_layer(model, model[1], images, y, val_images, torch.as_tensor(vy), batch_size=40)
    assert info["applied"] and info["val_macro_f1_before"] == pytest.approx(noise)
    assert val_f1() == pytest.approx(info["val_macro_f1_after"]) and info["val_macro_f1_after"] > noise + 0.2
    assert model.training  # the model is handed back in the mode it came in
