"""The downstream classifier library: models, training with model selection, inference, metrics,
random oversampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

from fesaug.evaluate.downstream import (
    DownstreamConfig,
    augment_batch,
    classification_report,
    features,
    fit,
    load_classifier,
    make_classifier,
    predict_proba,
    random_oversample,
    save_classifier,
)
from fesaug.utils.errors import FesaugError

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = {"model": "small-cnn", "batch_size": 16, "lr": 3e-3, "image_size": 32}


def bars(n: int, seed: int, size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """Noisy images of one bright bar at a random place: label 0 horizontal, 1 vertical."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (n, 1, size, size)).astype(np.uint8)
    y = np.arange(n) % 2
    for i in range(n):
        p = rng.integers(6, size - 9)
        a, b = rng.integers(2, 8), rng.integers(size - 8, size - 2)
        if y[i] == 0:
            x[i, 0, p : p + 3, a:b] = 230
        else:
            x[i, 0, a:b, p : p + 3] = 230
    return torch.from_numpy(x), y


@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
@pytest.mark.parametrize("size", [32, 48])
def test_classifier_output_and_feature_shapes(name: str, size: int) -> None:
    torch.manual_seed(0)
    model = make_classifier(name, 7, size).eval()
    x = torch.randint(0, 256, (3, 1, size, size), dtype=torch.uint8)
    assert model(x.float() / 255).shape == (3, 7)
    proba = predict_proba(model, x)
    assert proba.shape == (3, 7) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert features(model, x).shape == (3, 96 if name == "small-cnn" else 512)


def test_resnet18_has_a_small_image_stem() -> None:
    net = make_classifier("resnet18", 3, 48).net
    assert net.conv1.in_channels == 1 and net.conv1.stride == (1, 1) and net.conv1.kernel_size == (3, 3)
    assert isinstance(net.maxpool, torch.nn.Identity)


def test_unknown_classifier_lists_choices() -> None:
    with pytest.raises(FesaugError, match="small-cnn, resnet18"):
        make_classifier("vgg", 3, 48)
    with pytest.raises(FesaugError, match="model"):
        DownstreamConfig(model="vgg")


def test_features_are_the_input_of_the_head() -> None:
    torch.manual_seed(0)
    model = make_classifier("small-cnn", 4, 32).eval()
    x = torch.randint(0, 256, (5, 1, 32, 32), dtype=torch.uint8)
    feats = torch.from_numpy(features(model, x, batch_size=2))
    with torch.no_grad():
        logits = model.head(feats)
    assert np.allclose(torch.softmax(logits, 1).numpy(), predict_proba(model, x), atol=1e-5)
    assert not model.head._forward_pre_hooks  # the hook is removed again


def test_augment_batch_keeps_shape_and_varies_per_sample() -> None:
    x = torch.rand(1, 1, 32, 32).repeat(6, 1, 1, 1)
    out = augment_batch(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    assert not torch.allclose(out[0], out[1])  # per-sample parameters
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(0)))


def test_augment_batch_moves_a_dot_only_a_few_pixels() -> None:
    # A dot 6 px right of centre: shifts (4 px), rotation (10 deg) and scale (10 %) move it at most
    # ~5.6 px, a horizontal flip mirrors it to the left half.
    x = torch.zeros(400, 1, 33, 33)
    x[:, 0, 16, 22] = 1
    out = augment_batch(x, torch.Generator().manual_seed(0))[:, 0]
    grid = torch.arange(33.0)
    mass = out.sum((1, 2))
    row, col = (out.sum(2) * grid).sum(1) / mass, (out.sum(1) * grid).sum(1) / mass
    dist_right, dist_left = (col - 22).abs(), (col - 10).abs()
    assert ((row - 16).abs() <= 6).all() and (torch.minimum(dist_right, dist_left) <= 6).all()
    assert 0.35 < (dist_left < dist_right).float().mean() < 0.65  # about half flipped
    assert (row - 16).abs().max() > 3  # it does move


def test_fit_learns_a_separable_task_and_standardises() -> None:
    x, y = bars(160, seed=0)
    vx, vy = bars(60, seed=1)
    result = fit(x, y, vx, vy, DownstreamConfig(epochs=6, **FAST))
    pred = predict_proba(result.model, vx).argmax(1)
    assert accuracy_score(vy, pred) > 0.9
    assert max(h["val_accuracy"] for h in result.history) > 0.9
    assert len(result.history) == 6 and not result.model.training
    assert result.model.mean.item() == pytest.approx(x.float().div(255).mean().item(), rel=1e-5)
    assert result.model.std.item() == pytest.approx(x.float().div(255).std().item(), rel=1e-5)


def test_best_epoch_weights_are_restored() -> None:
    # Validation labels are the opposite of the training rule, so the better the model learns,
    # the worse it scores: the best validation epoch is an early one, not the last.
    # A low learning rate keeps the early epochs from learning the rule outright.
    x, y = bars(64, seed=0)
    vx, vy = bars(40, seed=1)
    config = DownstreamConfig(epochs=6, augment=False, model="small-cnn", batch_size=32, lr=3e-4, image_size=32)
    result = fit(x, y, vx, 1 - vy, config)
    scores = [h["val_macro_f1"] for h in result.history]
    assert result.best_epoch == int(np.argmax(scores)) + 1
    assert result.best_epoch < 6 and scores[-1] < max(scores)
    pred = predict_proba(result.model, vx).argmax(1)
    assert f1_score(1 - vy, pred, average="macro", labels=[0, 1], zero_division=0) == pytest.approx(max(scores))


def test_without_validation_the_last_epoch_is_kept() -> None:
    x, y = bars(40, seed=0)
    result = fit(x, y, config=DownstreamConfig(epochs=2, **FAST))
    assert result.best_epoch == 2 and "val_macro_f1" not in result.history[0]


def test_same_seed_same_predictions_other_seed_differs() -> None:
    x, y = bars(48, seed=0)
    vx, _ = bars(16, seed=1)
    runs = []
    for outside, seed in ((1, 3), (2, 3), (1, 4)):
        torch.manual_seed(outside)  # the global RNG's state must not matter, only the seed
        runs.append(predict_proba(fit(x, y, config=DownstreamConfig(epochs=2, seed=seed, **FAST)).model, vx))
    assert np.array_equal(runs[0], runs[1])
    assert not np.allclose(runs[0], runs[2])


def test_fit_leaves_global_rng_alone() -> None:
    x, y = bars(20, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    fit(x, y, config=DownstreamConfig(epochs=1, **FAST))
    assert torch.equal(torch.rand(3), expected)


def test_sample_weights_select_rows() -> None:
    # All weight on class-0 rows: the model only ever sees class 0, so it predicts it everywhere.
    x, y = bars(48, seed=0)
    weights = (y == 0).astype(float)
    result = fit(x, y, config=DownstreamConfig(epochs=8, augment=False, **FAST), sample_weights=weights, num_classes=2)
    assert (predict_proba(result.model, x).argmax(1) == 0).all()
    with pytest.raises(FesaugError, match="sample_weights"):
        fit(x, y, config=DownstreamConfig(epochs=1, **FAST), sample_weights=np.ones(3))


def test_erasing_and_label_smoothing_are_seeded_and_checked() -> None:
    x, y = bars(24, seed=0)
    config = DownstreamConfig(epochs=2, erasing=1.0, label_smoothing=0.1, **FAST)
    first, again = fit(x, y, config=config), fit(x, y, config=config)
    plain = fit(x, y, config=DownstreamConfig(epochs=2, **FAST))
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in again.history]
    assert first.history[0]["train_loss"] != plain.history[0]["train_loss"]
    for bad in ({"erasing": 1.5}, {"label_smoothing": 1.0}, {"erasing": -0.1}):
        with pytest.raises(FesaugError, match=next(iter(bad))):
            DownstreamConfig(**bad)


def test_epoch_size_sets_the_draws_per_epoch_of_a_weighted_set(monkeypatch: pytest.MonkeyPatch) -> None:
    # A weighted balanced manifest stands for more images than it has rows: an epoch draws that many.
    x, y = bars(24, seed=0)
    draws = []
    real_multinomial = torch.multinomial

    def spy(weights: torch.Tensor, n: int, **kwargs: object) -> torch.Tensor:
        draws.append(n)
        return real_multinomial(weights, n, **kwargs)

    monkeypatch.setattr(torch, "multinomial", spy)
    fit(x, y, config=DownstreamConfig(epochs=2, augment=False, **FAST), sample_weights=np.ones(24), epoch_size=60)
    assert draws == [60, 60]
    with pytest.raises(FesaugError, match="epoch_size"):
        fit(x, y, config=DownstreamConfig(epochs=1, **FAST), epoch_size=60)


def test_fit_rejects_wrong_inputs() -> None:
    x, y = bars(8, seed=0)
    with pytest.raises(FesaugError, match="image_size"):
        fit(x, y, config=DownstreamConfig(epochs=1))  # 32 px images, 64 px config
    with pytest.raises(FesaugError, match="uint8"):
        fit(x.float(), y, config=DownstreamConfig(epochs=1, **FAST))
    with pytest.raises(FesaugError, match="both"):
        fit(x, y, val_x=x, config=DownstreamConfig(epochs=1, **FAST))


def test_classification_report_matches_sklearn_with_absent_class() -> None:
    classes = ["anger", "happy", "fear", "sad", "surprise"]
    y_true = np.array([0, 0, 1, 1, 1, 3, 3, 0])  # no "fear" (2) in y_true, no "surprise" (4) at all
    y_pred = np.array([0, 1, 1, 1, 2, 3, 0, 0])
    r = classification_report(y_true, y_pred, classes)
    labels = [0, 1, 2, 3, 4]
    assert r["accuracy"] == accuracy_score(y_true, y_pred)
    assert r["macro_f1"] == f1_score(y_true, y_pred, average="macro", labels=labels, zero_division=0)
    assert (
        list(r["recall"].values())
        == recall_score(y_true, y_pred, average=None, labels=labels, zero_division=0).tolist()
    )
    assert list(r["f1"].values()) == f1_score(y_true, y_pred, average=None, labels=labels, zero_division=0).tolist()
    assert r["confusion"]["matrix"] == confusion_matrix(y_true, y_pred, labels=labels).tolist()
    assert r["recall"]["fear"] == 0.0 and r["f1"]["fear"] == 0.0 and r["support"]["fear"] == 0
    assert r["macro_f1"] == pytest.approx(np.mean(list(r["f1"].values())))  # absent classes count as 0
    assert r["f1"]["surprise"] == 0.0
    assert list(r["recall"]) == classes and len(r["confusion"]["matrix"]) == 5


def test_random_oversample_counts_and_determinism() -> None:
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 1, 0])
    idx = random_oversample(labels, {1: 5, 2: 4}, seed=0)
    assert np.array_equal(idx[: len(labels)], np.arange(len(labels)))  # every original once, first
    assert np.bincount(labels[idx]).tolist() == [5, 5, 4]
    assert np.array_equal(idx, random_oversample(labels, {1: 5, 2: 4}, seed=0))
    assert not np.array_equal(idx, random_oversample(labels, {1: 5, 2: 4}, seed=1))
    assert np.array_equal(random_oversample(labels, {0: 5}, seed=0), np.arange(len(labels)))


def test_random_oversample_rejects_impossible_targets() -> None:
    labels = np.array([0, 0, 0, 1])
    with pytest.raises(FesaugError, match="below"):
        random_oversample(labels, {0: 2}, seed=0)
    with pytest.raises(FesaugError, match="no rows"):
        random_oversample(labels, {2: 3}, seed=0)


def test_saved_classifier_loads_with_the_same_predictions_and_classes(tmp_path) -> None:
    x = torch.randint(0, 256, (6, 1, 32, 32), dtype=torch.uint8)
    model = make_classifier("small-cnn", 3, 32).eval()
    model.mean.fill_(0.4)
    save_classifier(model, tmp_path / "c.pt", ["a", "b", "c"])
    loaded, classes = load_classifier(tmp_path / "c.pt", device="cpu")
    assert classes == ["a", "b", "c"] and loaded.name == "small-cnn" and float(loaded.mean) == pytest.approx(0.4)
    np.testing.assert_array_equal(predict_proba(loaded, x), predict_proba(model, x))
    with pytest.raises(FesaugError, match="2 class names for a 3-class model"):
        save_classifier(model, tmp_path / "d.pt", ["a", "b"])
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(FesaugError, match="not a fesaug downstream classifier"):
        load_classifier(tmp_path / "other.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FesaugError, match="cannot read the classifier"):
        load_classifier(tmp_path / "broken.pt")
