"""EmotionAUNet (joint emotion + AU after AWS-Net), its partial-label loss and AU metrics."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from fesaug.models import (
    SHARING_KINDS,
    AWSUnit,
    EmotionAUConfig,
    EmotionAUNet,
    ModelConfigError,
    au_metrics,
    au_pos_weight,
    multitask_loss,
)
from fesaug.utils.errors import FesaugError

pytestmark = pytest.mark.usefixtures("one_thread")

NAN = float("nan")
TINY = EmotionAUConfig(image_size=32, widths=(8, 16, 16), num_classes=3, num_aus=4)


def tiny(sharing: str = "aws", seed: int = 0) -> EmotionAUNet:
    torch.manual_seed(seed)
    return EmotionAUNet(dataclasses.replace(TINY, sharing=sharing))


def batch(b: int = 6, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, 32, 32, generator=g) * 2 - 1
    labels = torch.randint(0, 3, (b,), generator=g)
    aus = torch.randint(0, 2, (b, 4), generator=g).float()
    return x, labels, aus


def grads(model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {
        n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p))
        for n, p in model.named_parameters()
        if n.startswith(prefix)
    }


def backward(model: EmotionAUNet, term: str, x, labels, aus, **kw) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    loss = multitask_loss(model(x), labels, aus, **kw)
    loss[term].backward()
    return grads(model)


def norm(gs: dict[str, torch.Tensor], prefix: str) -> float:
    return sum(float(g.abs().sum()) for n, g in gs.items() if n.startswith(prefix))


# --------------------------------------------------------------------------------------------
# config and structure


def test_config_round_trips_and_rejects_bad_values() -> None:
    assert EmotionAUConfig(**dataclasses.asdict(TINY)) == TINY
    assert EmotionAUConfig(widths=[8, 16]).widths == (8, 16)  # lists from JSON
    # BatchNorm copes with a 1x1 bottleneck, InstanceNorm does not.
    EmotionAUConfig(image_size=16, widths=(8, 16, 16, 16))
    with pytest.raises(ModelConfigError, match="multiple of"):
        EmotionAUConfig(image_size=16, widths=(8, 16, 16, 16), norm="instance")
    with pytest.raises(ModelConfigError, match="multiple of"):
        EmotionAUConfig(image_size=36, widths=(8, 16, 16))
    for bad, match in [
        ({"sharing": "stitch"}, "unknown sharing"),
        ({"norm": "layer"}, "norm"),
        ({"widths": (8,)}, "widths"),
        ({"num_aus": 0}, "num_aus"),
        ({"num_classes": 1}, "num_classes"),
        ({"flu_kernel_size": 2}, "odd"),
    ]:
        with pytest.raises(ModelConfigError, match=match):
            dataclasses.replace(TINY, **bad)


@pytest.mark.parametrize("sharing", SHARING_KINDS)
def test_shapes_and_gates_for_every_sharing_kind(sharing: str) -> None:
    model = tiny(sharing)
    x, *_ = batch(5)
    out = model(x, return_gates=True)
    assert out.emotion_logits.shape == (5, 3) and out.au_logits.shape == (5, 4)
    levels = len(TINY.widths) - 1
    if sharing in ("hard", "none"):
        assert out.gates == {}
    else:
        assert {k.split("/")[0] for k in out.gates} == {f"level{i}" for i in range(1, levels + 1)}
        assert {k.split("/")[1] for k in out.gates} == {"emotion<-au", "au<-emotion"}
    assert model(x).gates is None
    with pytest.raises(FesaugError, match="expected images"):
        model(torch.zeros(2, 1, 16, 16))


def test_none_is_two_independent_networks_and_hard_shares_one() -> None:
    x, labels, aus = batch()
    none = tiny("none").eval()
    emo = backward(none, "emotion", x, labels, aus)
    au = backward(none, "au", x, labels, aus)
    assert norm(emo, "encoders.emotion") > 0 and norm(emo, "heads.emotion") > 0
    assert norm(emo, "encoders.au") == 0 and norm(emo, "heads.au") == 0
    assert norm(au, "encoders.au") > 0 and norm(au, "heads.au") > 0
    assert norm(au, "encoders.emotion") == 0 and norm(au, "heads.emotion") == 0

    # With sharing units, each task's loss reaches the other task's network.
    aws = tiny("aws").eval()
    assert norm(backward(aws, "emotion", x, labels, aus), "encoders.au") > 0
    assert norm(backward(aws, "au", x, labels, aus), "encoders.emotion") > 0

    hard = tiny("hard").eval()
    assert list(hard.encoders) == ["shared"]
    assert norm(backward(hard, "emotion", x, labels, aus), "encoders.shared") > 0
    assert norm(backward(hard, "au", x, labels, aus), "encoders.shared") > 0


# --------------------------------------------------------------------------------------------
# the partial-label loss


def test_row_without_au_labels_gives_no_au_gradient() -> None:
    # eval(): BatchNorm batch statistics would otherwise couple the rows.
    model = tiny("aws").eval()
    x, labels, aus = batch(6)
    masked = aus.clone()
    masked[2] = NAN
    keep = torch.tensor([0, 1, 3, 4, 5])
    with_nan = backward(model, "au", x, labels, masked)
    removed = backward(model, "au", x[keep], labels[keep], aus[keep])
    full = backward(model, "au", x, labels, aus)
    for name in with_nan:
        torch.testing.assert_close(with_nan[name], removed[name], rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(with_nan[n], full[n]) for n in full)  # the row did matter
    # au_mask=False marks unknown entries exactly like NaN.
    mask = torch.ones_like(aus, dtype=torch.bool)
    mask[2] = False
    via_mask = backward(model, "au", x, labels, aus, au_mask=mask)
    for name in with_nan:
        torch.testing.assert_close(via_mask[name], with_nan[name])


def test_au_loss_averages_over_known_entries_with_pos_weight() -> None:
    model = tiny("aws").eval()
    x, labels, aus = batch(4)
    aus[0, 1] = NAN
    aus[3] = NAN
    pw = torch.tensor([1.0, 2.0, 3.0, 4.0])
    out = model(x)
    loss = multitask_loss(out, labels, aus, pos_weight=pw)
    known = ~torch.isnan(aus)
    z, t = out.au_logits[known], aus[known]
    w = pw.expand_as(aus)[known]
    manual = -(w * t * torch.nn.functional.logsigmoid(z) + (1 - t) * torch.nn.functional.logsigmoid(-z)).mean()
    torch.testing.assert_close(loss["au"], manual)
    torch.testing.assert_close(loss["emotion"], torch.nn.functional.cross_entropy(out.emotion_logits, labels))
    weighted = multitask_loss(out, labels, aus, pos_weight=pw, weights=(0.5, 2.0))
    torch.testing.assert_close(weighted["total"], 0.5 * loss["emotion"] + 2.0 * loss["au"])


def test_batch_without_emotion_labels_gives_zero_emotion_loss_and_gradient() -> None:
    model = tiny("aws")
    x, labels, aus = batch(6)
    none = torch.full_like(labels, -1)
    model.zero_grad(set_to_none=True)
    loss = multitask_loss(model(x), none, aus)
    assert loss["emotion"].item() == 0.0
    loss["total"].backward()
    assert norm(grads(model), "heads.emotion") == 0.0
    assert norm(grads(model), "heads.au") > 0
    # ... while one labelled row is enough to train the emotion head.
    one = none.clone()
    one[0] = labels[0]
    model.zero_grad(set_to_none=True)
    multitask_loss(model(x), one, aus)["total"].backward()
    assert norm(grads(model), "heads.emotion") > 0


@pytest.mark.parametrize("sharing", SHARING_KINDS)
def test_gradients_are_never_nan(sharing: str) -> None:
    model = tiny(sharing)
    x, labels, aus = batch(4)
    pw = au_pos_weight(aus.numpy())
    cases = [
        (torch.full_like(labels, -1), torch.full_like(aus, NAN)),  # nothing labelled at all
        (torch.tensor([0, -1, 2, -1]), torch.tensor([[NAN] * 4, [1, 0, NAN, 1], [NAN] * 4, [0, NAN, NAN, 1.0]])),
    ]
    for lab, au in cases:
        model.zero_grad(set_to_none=True)
        loss = multitask_loss(model(x), lab, au, pos_weight=pw)
        assert all(torch.isfinite(v) for v in loss.values())
        loss["total"].backward()
        assert all(torch.isfinite(g).all() for g in grads(model).values())
    assert loss["total"] > 0  # the partly labelled case really trained something


def test_loss_rejects_bad_labels() -> None:
    model = tiny("hard")
    x, labels, aus = batch(3)
    out = model(x)
    with pytest.raises(FesaugError, match="labels must lie"):
        multitask_loss(out, torch.tensor([0, 3, 1]), aus)
    with pytest.raises(FesaugError, match="labels must lie"):
        multitask_loss(out, torch.tensor([0, -2, 1]), aus)
    with pytest.raises(FesaugError, match="integer class ids"):
        multitask_loss(out, labels.float(), aus)
    with pytest.raises(FesaugError, match="au_targets"):
        multitask_loss(out, labels, aus[:, :3])


# --------------------------------------------------------------------------------------------
# the AWS units


def test_aws_weights_are_normalised_and_learn_from_both_tasks() -> None:
    model = tiny("aws")
    x, labels, aus = batch(6)
    out = model(x, return_gates=True)
    for key in [k for k in out.gates if k.endswith("/own")]:
        own, other = out.gates[key], out.gates[key.replace("/own", "/other")]
        assert own.shape == (6, 16) and (own > 0).all() and (other > 0).all()
        torch.testing.assert_close(own + other, torch.ones_like(own))
    units = {f"{t}{i}": u for t in ("emotion", "au") for i, u in enumerate(model.sharing[t], start=1)}
    assert all(isinstance(u, AWSUnit) for u in units.values())
    for term in ("emotion", "au"):
        model.zero_grad(set_to_none=True)
        multitask_loss(model(x), labels, aus)[term].backward()
        # Level-1 units feed both tasks' later layers, so both losses train both directions.
        for name in ("emotion1", "au1"):
            assert units[name].logits.grad is not None and units[name].logits.grad.abs().sum() > 0, (term, name)
    # The last "emotion<-au" unit only feeds the emotion head: the AU loss cannot reach it.
    assert units["emotion2"].logits.grad is None or units["emotion2"].logits.grad.abs().sum() == 0


# --------------------------------------------------------------------------------------------
# pos_weight and metrics


def test_au_pos_weight() -> None:
    occ = np.full((302, 5), NAN)
    occ[:4, 0] = [1, 1, 0, 0]  # 2 neg / 2 pos -> 1
    occ[:4, 1] = [1, 0, 0, 0]  # 3 neg / 1 pos -> 3 (the NaNs below do not count)
    occ[:3, 2] = [0, 0, 0]  # no positives -> max
    occ[:, 3] = 0
    occ[0, 3] = 1  # 301 neg / 1 pos -> clamped to 100
    occ[:3, 4] = [1, 1, 0]  # more positives than negatives -> clamped up to 1
    expected = torch.tensor([1.0, 3.0, 100.0, 100.0, 1.0])
    torch.testing.assert_close(au_pos_weight(occ), expected)
    torch.testing.assert_close(au_pos_weight(torch.tensor(occ)), expected)
    assert au_pos_weight(occ).dtype == torch.float32
    torch.testing.assert_close(au_pos_weight(occ, max_weight=10.0)[3], torch.tensor(10.0))


def test_au_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, (50, 6)).astype(float)
    probs = np.clip(targets * 0.6 + rng.random((50, 6)) * 0.5, 0, 1)
    targets[rng.random((50, 6)) < 0.3] = NAN
    targets[:, 4] = NAN  # an AU no dataset labels: left out of the mean
    targets[:, 5] = np.where(np.isnan(targets[:, 5]), NAN, 0.0)  # known, never positive
    probs[:, 5] = 0.1  # ... and never predicted: F1 0, as sklearn with zero_division=0
    result = au_metrics(probs, targets)
    expected = []
    for k in range(6):
        known = ~np.isnan(targets[:, k])
        if known.any():
            expected.append(f1_score(targets[known, k], probs[known, k] >= 0.5, zero_division=0))
        else:
            expected.append(NAN)
    np.testing.assert_allclose(result["f1"], expected)
    assert np.isnan(result["f1"][4]) and result["f1"][5] == 0.0
    assert result["mean_f1"] == pytest.approx(np.nanmean(expected))
    assert 0.3 < result["mean_f1"] < 1.0
    logits = torch.logit(torch.tensor(probs).clamp(1e-6, 1 - 1e-6))
    np.testing.assert_allclose(au_metrics(logits, torch.tensor(targets), from_logits=True)["f1"], expected)
    high = au_metrics(probs, targets, threshold=0.9)["f1"]
    assert not np.allclose(high[:4], expected[:4])


# --------------------------------------------------------------------------------------------
# training


@pytest.mark.parametrize("sharing", ["aws", "none"])
def test_short_training_on_disjoint_labels_lowers_both_losses(sharing: str) -> None:
    """Half of each batch has only an emotion label, the other half only AU labels."""
    torch.manual_seed(0)
    emo_patterns = torch.randn(3, 1, 32, 32)
    au_patterns = torch.randn(4, 1, 32, 32)

    def make(b: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 3, (b,))
        aus = torch.randint(0, 2, (b, 4)).float()
        x = 0.3 * torch.randn(b, 1, 32, 32) + emo_patterns[labels] + torch.einsum("ba,achw->bchw", aus, au_patterns)
        labels[b // 2 :] = -1
        aus[: b // 2] = NAN
        return (x / 3).clamp(-1, 1), labels, aus

    model = tiny(sharing)
    probe = make(64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def probe_loss() -> dict[str, float]:
        with torch.no_grad():
            return {k: float(v) for k, v in multitask_loss(model(probe[0]), *probe[1:]).items()}

    before = probe_loss()
    aws_before = [u.logits.detach().clone() for u in model.sharing["au"]] if model.sharing else []
    for _ in range(30):
        x, labels, aus = make(32)
        opt.zero_grad()
        multitask_loss(model(x), labels, aus)["total"].backward()
        opt.step()
    after = probe_loss()
    assert after["emotion"] < 0.8 * before["emotion"], (before, after)
    assert after["au"] < 0.9 * before["au"], (before, after)
    for old, unit in zip(aws_before, model.sharing["au"] if model.sharing else []):
        assert not torch.equal(old, unit.logits)
