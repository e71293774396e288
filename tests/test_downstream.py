"""The downstream classifier library: models, training with model selection, inference, metrics,
random oversampling."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import nn

from fesaug.evaluate.augment import augment_batch
from fesaug.evaluate.classifiers import DownstreamClassifier, SeedStack, stackable
from fesaug.evaluate.downstream import (
    DownstreamConfig,
    classification_report,
    features,
    fit,
    fit_seeds,
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


def test_a_classifier_file_written_before_schema_versions_and_colour_loads_as_gray(tmp_path) -> None:
    model = make_classifier("small-cnn", 2, 32).eval()
    save_classifier(model, tmp_path / "c.pt", ["a", "b"])
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert saved.pop("schema_version") == 1 and saved.pop("channels") == 1
    torch.save({**saved, "format_version": 1}, tmp_path / "old.pt")  # as fesaug wrote it before
    loaded, classes = load_classifier(tmp_path / "old.pt", device="cpu")
    assert loaded.channels == 1 and classes == ["a", "b"]
    torch.save({**saved, "schema_version": 99}, tmp_path / "newer.pt")
    with pytest.raises(FesaugError, match="newer fesaug"):
        load_classifier(tmp_path / "newer.pt")


# --------------------------------------------------------------------------------------------
# speed (issue #36): the same function computed faster


def test_pooling_before_the_relu_is_the_same_network_as_before() -> None:
    # small-cnn pools before its ReLU now; a classifier saved with the older conv-BN-ReLU-pool order
    # loads into it and computes the same outputs and the same gradients, bit for bit.
    torch.manual_seed(0)
    model = make_classifier("small-cnn", 3, 32)
    layers = list(model.net)
    for i in range(0, 16, 4):  # conv, BN, ReLU, pool: the order before
        layers[i + 2], layers[i + 3] = torch.nn.ReLU(), torch.nn.MaxPool2d(2)
    older = torch.nn.Sequential(*copy.deepcopy(layers))
    older.load_state_dict(model.net.state_dict())
    x = torch.randn(8, 1, 32, 32)
    model.net.eval(), older.eval()
    assert torch.equal(model.net(x), older(x))
    model.net.train(), older.train()
    torch.manual_seed(1)
    out = model.net(x)
    torch.manual_seed(1)  # the same dropout mask
    out_older = older(x)
    assert torch.equal(out, out_older)
    out.square().sum().backward()
    out_older.square().sum().backward()
    for (name, p), q in zip(model.net.named_parameters(), older.parameters()):
        assert torch.equal(p.grad, q.grad), name


@pytest.mark.parametrize("name", ["small-cnn", "resnet18"])
def test_seed_stack_computes_each_seed_as_its_own_network(name: str) -> None:
    # In float64, so that what is compared is the arithmetic, not its rounding: in float32 the
    # first layers' gradients of ResNet-18 at initialisation carry rounding errors of ~1e-2
    # relative (BatchNorm's backward cancels), whichever way they are computed.
    models, streams = [], []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(make_classifier(name, 4, 16).double())
        models[-1].mean.fill_(0.1 * seed)
        streams.append(torch.get_rng_state())
    stack = SeedStack(copy.deepcopy(models), list(streams))
    x, y = torch.rand(4, 3, 16, 16, dtype=torch.float64), torch.randint(0, 4, (4, 3))
    logits = stack(x.contiguous(memory_format=torch.channels_last))
    nn.functional.cross_entropy(logits.permute(0, 2, 1), y, reduction="none").mean(0).sum().backward()
    stacked = dict(stack.named_parameters())
    for s, model in enumerate(models):
        torch.set_rng_state(streams[s])  # this seed's dropout draws
        own = model(x[:, s : s + 1])
        nn.functional.cross_entropy(own, y[:, s]).backward()
        torch.testing.assert_close(logits[:, s], own, rtol=1e-9, atol=1e-12)
        assert torch.equal(stack.streams[s], torch.get_rng_state())  # each stream advanced as its seed's own
        for pname, p in model.named_parameters():  # ResNet-18's 11M: a norm, not element by element
            assert (stacked[pname].grad.chunk(3)[s] - p.grad).norm() <= 1e-9 * p.grad.norm() + 1e-12, pname
        for bname, value in stack.seed_state(s).items():  # BatchNorm statistics moved per seed
            torch.testing.assert_close(value, model.state_dict()[bname], rtol=1e-9, atol=1e-12, msg=bname)


@pytest.mark.parametrize("channels", [1, 3], ids=["gray", "colour"])
def test_fit_seeds_trains_each_seed_as_fit_does(channels: int) -> None:
    # Each seed sees its own batches, augmentation, erasing and dropout draws: the training losses
    # match fit's for that seed to float rounding (other draws would change them by ~1e-2), and the
    # models end close. Not bit for bit: grouped convolutions round differently, and Adam's first
    # steps turn the sign of a gradient near 0 into a full step, so a few weights may differ by
    # 2 x lr per such step. In colour each seed's group holds its image's three channels.
    x, y = bars(48, seed=0)
    vx, vy = bars(24, seed=1)
    if channels == 3:  # a colour face: the bar in one channel, other noise in the others
        x = torch.cat([x, x.flip(2) // 2, 255 - x], 1)
        vx = torch.cat([vx, vx.flip(2) // 2, 255 - vx], 1)
    config = DownstreamConfig(epochs=2, erasing=0.5, **FAST)
    together = fit_seeds(x, y, vx, vy, config, seeds=[3, 5])
    for seed, result in zip((3, 5), together):
        alone = fit(x, y, vx, vy, dataclasses.replace(config, seed=seed))
        losses = [h["train_loss"] for h in result.history]
        assert losses == pytest.approx([h["train_loss"] for h in alone.history], rel=2e-3)
        assert not result.model.training and result.model.net[0].weight.is_contiguous()
        assert result.model.channels == channels == result.model.net[0].weight.shape[1]
        probabilities = predict_proba(result.model, vx)
        np.testing.assert_allclose(probabilities, predict_proba(alone.model, vx), atol=0.05)
    assert together[0].history[0]["train_loss"] != pytest.approx(together[1].history[0]["train_loss"], rel=1e-3)
    with pytest.raises(FesaugError, match="distinct seeds"):
        fit_seeds(x, y, config=config, seeds=[1, 1])


def test_fit_seeds_trains_an_architecture_it_cannot_group_one_seed_at_a_time() -> None:
    # A fine-tuned FERSNet recogniser, say: layers the seed stack does not know (GroupNorm here).
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    head = nn.Linear(4, 2)
    init = DownstreamClassifier(nn.Sequential(*net, head), head, "custom", 2, 32)
    assert stackable(make_classifier("resnet18", 2, 32).net) and not stackable(init.net)
    x, y = bars(24, seed=0)
    config = DownstreamConfig(epochs=1, **FAST)
    together = fit_seeds(x, y, config=config, seeds=[0, 1], init=init)
    for seed, result in zip((0, 1), together):
        alone = fit(x, y, config=dataclasses.replace(config, seed=seed), init=init)
        assert result.model.name == "custom"
        for a, b in zip(result.model.state_dict().values(), alone.model.state_dict().values()):
            assert torch.equal(a, b)


def test_bfloat16_precision_trains_deterministically_and_is_checked() -> None:
    x, y = bars(32, seed=0)
    config = DownstreamConfig(epochs=1, precision="bfloat16", **FAST)
    first, again = fit(x, y, config=config), fit(x, y, config=config)
    assert [h["train_loss"] for h in first.history] == [h["train_loss"] for h in again.history]
    assert first.model.net[0].weight.dtype == torch.float32  # the weights stay float32
    with pytest.raises(FesaugError, match="precision"):
        DownstreamConfig(precision="float16")


def test_soft_targets_with_all_their_mass_on_the_class_train_as_hard_labels() -> None:
    x, y = bars(48, seed=0)
    vx, vy = bars(24, seed=1)
    config = DownstreamConfig(epochs=2, **FAST)
    hard = fit(x, y, vx, vy, config)
    one_hot = nn.functional.one_hot(torch.as_tensor(y), 2).float()
    soft = fit(x, y, vx, vy, config, soft_targets=one_hot)
    assert [h["train_loss"] for h in soft.history] == pytest.approx([h["train_loss"] for h in hard.history], rel=1e-5)
    np.testing.assert_allclose(predict_proba(soft.model, vx), predict_proba(hard.model, vx), atol=1e-4)


def test_a_soft_target_is_cross_entropy_against_its_mixture_of_classes() -> None:
    # Cross-entropy is linear in its target: before the first step (the first epoch's loss, one
    # batch of all rows), a row labelled 70 % horizontal and 30 % vertical costs 0.7 x its loss
    # as horizontal + 0.3 x its loss as vertical, the same initialisation, batch and dropout.
    x, _ = bars(32, seed=0)
    config = DownstreamConfig(epochs=1, augment=False, **{**FAST, "batch_size": 32})
    zeros, ones = np.zeros(32, np.int64), np.ones(32, np.int64)
    first_loss = {
        name: fit(x, labels, config=config, soft_targets=t, num_classes=2).history[0]["train_loss"]
        for name, labels, t in [
            ("horizontal", zeros, None),
            ("vertical", ones, None),
            ("mixed", zeros, torch.tensor([[0.7, 0.3]]).expand(32, 2)),
        ]
    }
    expected = 0.7 * first_loss["horizontal"] + 0.3 * first_loss["vertical"]
    assert first_loss["mixed"] == pytest.approx(expected, rel=1e-5)
    assert first_loss["horizontal"] != pytest.approx(first_loss["vertical"], rel=1e-3)  # the mixture is not trivial


def test_soft_targets_are_checked() -> None:
    x, y = bars(8, seed=0)
    config = DownstreamConfig(epochs=1, **FAST)
    with pytest.raises(FesaugError, match="one row of 2 class probabilities per training image"):
        fit(x, y, config=config, soft_targets=torch.full((8, 3), 1 / 3))
    with pytest.raises(FesaugError, match="sum to 1"):
        fit(x, y, config=config, soft_targets=torch.full((8, 2), 0.6))
