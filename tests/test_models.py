"""FERSNet, its discriminator and the sharing units: shapes, the ConvFLU equations, gradient flow."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from fesaug.models import (
    MAX_INTENSITY,
    SHARING_KINDS,
    SHARING_UNIT_KINDS,
    AWSUnit,
    ConvFLU,
    CrossStitch,
    Discriminator,
    FERSNet,
    FERSNetConfig,
    ModelConfigError,
    count_flops,
    count_parameters,
    from_model_range,
    make_sharing_unit,
    to_model_range,
)
from fesaug.utils.errors import FesaugError

# The paper preset at full width is slow on CPU; its shapes do not depend on the widths.
SMALL_PAPER = {"widths": (8, 16, 32, 32), "disc_width": 8}


def config(preset: str, **overrides) -> FERSNetConfig:
    return FERSNetConfig.preset(preset, **({**SMALL_PAPER, **overrides} if preset == "paper" else overrides))


def images(cfg: FERSNetConfig, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, cfg.in_channels, cfg.image_size, cfg.image_size, generator=g) * 2 - 1


# ----------------------------------------------------------------------------- shapes


@pytest.mark.parametrize("preset", ["cpu", "paper"])
@pytest.mark.parametrize("kind", SHARING_KINDS)
def test_shapes_for_every_sharing_kind_and_preset(preset: str, kind: str) -> None:
    torch.manual_seed(0)
    cfg = config(preset, sharing=kind)
    model, disc = FERSNet(cfg), Discriminator(cfg)
    x, target = images(cfg), torch.tensor([0, 6])
    out = model(x, target)
    assert out.logits.shape == (2, 7)
    assert out.fake is not None and out.fake.shape == x.shape
    assert out.fake.abs().max() <= 1.0
    assert out.gates is None
    assert model(x).fake is None
    assert model.classify(x).shape == (2, 7)
    assert model.synthesize(x, 3).shape == x.shape
    side = {"cpu": 4, "paper": 6}[preset]
    assert disc(out.fake, target).shape == (2, 1, side, side)


def test_plain_decoder_and_3x3_convflu_and_rgb() -> None:
    cfg = FERSNetConfig.preset("cpu", unet_skips=False, flu_kernel_size=3, in_channels=3, num_classes=6)
    x = images(cfg)
    out = FERSNet(cfg)(x, torch.tensor([1, 5]))
    assert out.logits.shape == (2, 6) and out.fake is not None and out.fake.shape == x.shape


def test_full_paper_preset_builds_with_expected_size() -> None:
    cfg = FERSNetConfig.preset("paper")
    assert (cfg.image_size, cfg.widths, cfg.bottleneck_size) == (96, (64, 128, 256, 512), 6)
    model = FERSNet(cfg)
    assert 15e6 < count_parameters(model) < 30e6
    assert sum(model.parameter_counts().values()) == count_parameters(model)


def test_gates_are_reported_per_level_and_direction() -> None:
    model = FERSNet(FERSNetConfig.preset("cpu"))
    gates = model(images(model.config), torch.tensor([0, 1]), return_gates=True).gates
    assert gates is not None
    levels = model.config.levels - 1
    assert set(gates) == {
        f"level{lv}/{d}/{g}" for lv in range(1, levels + 1) for d in ("fer<-fes", "fes<-fer") for g in ("r", "z")
    }
    assert all(float(v.detach().min()) >= 0 and float(v.detach().max()) <= 1 for v in gates.values())
    assert FERSNet(FERSNetConfig.preset("cpu", sharing="hard"))(images(model.config), return_gates=True).gates == {}


def test_classification_skips_the_decoder_and_unneeded_fes_work() -> None:
    calls: list[str] = []
    model = FERSNet(FERSNetConfig.preset("cpu"))
    model.decoder.register_forward_hook(lambda *_: calls.append("decoder"))
    model.sharing["fes"][-1].register_forward_hook(lambda *_: calls.append("last fes unit"))
    model.classify(images(model.config))
    assert calls == []
    independent = FERSNet(FERSNetConfig.preset("cpu", sharing="none"))
    independent.fes_stem.register_forward_hook(lambda *_: calls.append("fes stem"))
    independent.classify(images(independent.config))
    assert calls == []


def test_both_units_of_a_pair_read_the_pre_exchange_features() -> None:
    model = FERSNet(FERSNetConfig.preset("cpu"))
    seen: dict[str, torch.Tensor] = {}
    model.fer_blocks[0].register_forward_hook(lambda m, a, out: seen.__setitem__("fer_block", out))
    model.fes_blocks[0].register_forward_hook(lambda m, a, out: seen.__setitem__("fes_block", out))
    model.sharing["fes"][0].register_forward_hook(lambda m, args, out: seen.__setitem__("fes_unit_other", args[1]))
    model.sharing["fer"][0].register_forward_hook(lambda m, args, out: seen.__setitem__("fer_unit_other", args[1]))
    model(images(model.config), torch.tensor([0, 1]))
    assert seen["fes_unit_other"] is seen["fer_block"]
    assert seen["fer_unit_other"] is seen["fes_block"]


# ----------------------------------------------------------------------------- ConvFLU


def test_convflu_matches_the_figure_equations() -> None:
    torch.manual_seed(0)
    unit = ConvFLU(4, kernel_size=3)
    fx, fy = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    cat = torch.cat([fx, fy], 1)
    r = torch.sigmoid(F.conv2d(cat, unit.W_r.weight, padding=1))
    cand = torch.tanh(F.conv2d(r * fy, unit.W.weight, padding=1) + F.conv2d(fx, unit.U.weight, padding=1))
    z = torch.sigmoid(F.conv2d(cat, unit.W_z.weight, padding=1))
    out, gates = unit.exchange(fx, fy)
    torch.testing.assert_close(out, (1 - z) * fx + z * cand)
    torch.testing.assert_close(gates["r"], r)
    torch.testing.assert_close(gates["z"], z)
    assert all(conv.bias is None for conv in (unit.W_r, unit.W_z, unit.W, unit.U))


def test_convflu_update_gate_selects_own_features_or_candidate() -> None:
    unit = ConvFLU(2, kernel_size=1)
    # Positive inputs and huge weights saturate the sigmoids to exactly 0 or 1.
    fx = torch.tensor([0.5, 2.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    fy = torch.tensor([1.0, 3.0]).view(1, 2, 1, 1).expand(1, 2, 3, 3).contiguous()
    with torch.no_grad():
        unit.W_r.weight.fill_(1000.0)  # r = 1: all of F_y may leak in
        unit.W.weight.copy_(torch.eye(2).view(2, 2, 1, 1) * 0.1)
        unit.U.weight.copy_(torch.eye(2).view(2, 2, 1, 1) * 0.2)
        unit.W_z.weight.fill_(-1000.0)
        assert torch.equal(unit(fx, fy), fx)  # z = 0 keeps the own features
        unit.W_z.weight.fill_(1000.0)
        torch.testing.assert_close(unit(fx, fy), torch.tanh(0.1 * fy + 0.2 * fx))  # z = 1: the candidate


def test_convflu_keeps_spatial_size_and_rejects_even_kernels() -> None:
    for k in (1, 3):
        assert ConvFLU(3, k)(torch.randn(1, 3, 7, 7), torch.randn(1, 3, 7, 7)).shape == (1, 3, 7, 7)
    with pytest.raises(FesaugError, match="odd"):
        ConvFLU(3, 2)


# ----------------------------------------------------------------------------- cross-stitch and AWS


def test_cross_stitch_starts_at_09_01_and_mixes_per_channel() -> None:
    unit = CrossStitch(3)
    assert torch.equal(unit.alpha_own, torch.full((3,), 0.9))
    assert torch.equal(unit.alpha_other, torch.full((3,), 0.1))
    own, other = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(unit(own, other), 0.9 * own + 0.1 * other)
    with torch.no_grad():
        unit.alpha_own.copy_(torch.tensor([1.0, 0.0, 2.0]))
        unit.alpha_other.copy_(torch.tensor([0.0, 1.0, -1.0]))
    out = unit(own, other)
    torch.testing.assert_close(out[:, 0], own[:, 0])
    torch.testing.assert_close(out[:, 1], other[:, 1])
    torch.testing.assert_close(out[:, 2], 2 * own[:, 2] - other[:, 2])


def test_aws_weights_are_normalised_static_at_init_and_learnable() -> None:
    torch.manual_seed(0)
    unit = AWSUnit(8)
    a, b = torch.randn(3, 8, 4, 4), torch.randn(3, 8, 4, 4)
    w = unit.weights(a, b)
    assert w.shape == (3, 8, 2)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 8))
    torch.testing.assert_close(w[..., 0], torch.full((3, 8), 0.9))  # zero-initialised adaptive part
    out, gates = unit.exchange(a, b)
    torch.testing.assert_close(out, 0.9 * a + 0.1 * b)
    out.square().mean().backward()
    assert unit.logits.grad is not None and unit.logits.grad.abs().sum() > 0
    assert unit.adapt[-1].weight.grad is not None and unit.adapt[-1].weight.grad.abs().sum() > 0
    with torch.no_grad():
        unit.adapt[-1].weight.normal_()
    w = unit.weights(a, b)
    torch.testing.assert_close(w.sum(-1), torch.ones(3, 8))
    assert not torch.allclose(w[0], w[1])  # input-dependent once trained


def test_factory_builds_units_and_refuses_structural_or_unknown_kinds() -> None:
    assert isinstance(make_sharing_unit("convflu", 4, 3), ConvFLU)
    assert isinstance(make_sharing_unit("cross-stitch", 4), CrossStitch)
    assert isinstance(make_sharing_unit("aws", 4), AWSUnit)
    with pytest.raises(FesaugError, match="structurally"):
        make_sharing_unit("hard", 4)
    with pytest.raises(FesaugError, match="unknown sharing kind"):
        make_sharing_unit("sluice", 4)


# ----------------------------------------------------------------------------- gradient flow


def _grad_norm(modules) -> float:
    return sum(float(p.grad.abs().sum()) for m in modules for p in m.parameters() if p.grad is not None)


@pytest.mark.parametrize("kind", [*SHARING_UNIT_KINDS, "none"])
def test_fer_loss_reaches_the_fes_encoder_only_through_sharing(kind: str) -> None:
    torch.manual_seed(0)
    model = FERSNet(FERSNetConfig.preset("cpu", sharing=kind))
    model.classify(images(model.config)).logsumexp(1).sum().backward()
    fes_grad = _grad_norm([model.fes_blocks])
    assert (fes_grad > 0) == (kind != "none")
    assert _grad_norm([model.decoder, model.target_embedding]) == 0


@pytest.mark.parametrize("kind", SHARING_UNIT_KINDS)
def test_synthesis_loss_reaches_the_fer_encoder_through_sharing(kind: str) -> None:
    torch.manual_seed(0)
    model = FERSNet(FERSNetConfig.preset("cpu", sharing=kind))
    model.synthesize(images(model.config), torch.tensor([2, 4])).square().mean().backward()
    assert _grad_norm([model.fer_blocks]) > 0
    assert _grad_norm([model.sharing]) > 0


# ----------------------------------------------------------------------------- discriminator


def test_discriminator_is_conditioned_on_the_label() -> None:
    torch.manual_seed(0)
    cfg = FERSNetConfig.preset("cpu")
    disc = Discriminator(cfg).eval()
    x = images(cfg)
    assert disc(x, torch.tensor([0, 0])).shape == (2, 1, 4, 4) == (2, 1, disc.output_size, disc.output_size)
    assert not torch.allclose(disc(x, torch.tensor([0, 0])), disc(x, torch.tensor([5, 5])))
    assert not isinstance(disc.net[1], torch.nn.InstanceNorm2d)  # no norm after the first conv


# ----------------------------------------------------------------------------- configs and inputs


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"sharing": "sluice"}, "unknown sharing kind"),
        ({"image_size": 72}, "multiple of 2\\*\\*4"),
        ({"image_size": 16}, "at least 32"),
        ({"widths": (32,)}, "at least 2 positive"),
        ({"widths": (32, 0)}, "at least 2 positive"),
        ({"fer_norm": "layer"}, "fer_norm must be one of"),
        ({"flu_kernel_size": 2}, "odd"),
        ({"num_classes": 1}, "num_classes"),
        ({"in_channels": 0}, "in_channels"),
        ({"colour": True}, "unknown model config field"),
    ],
)
def test_bad_configs_raise_clear_errors(overrides: dict, message: str) -> None:
    with pytest.raises(ModelConfigError, match=message):
        FERSNetConfig.preset("cpu", **overrides)


def test_config_errors_are_user_errors_and_value_errors() -> None:
    with pytest.raises(FesaugError, match="unknown model preset 'gpu'; choose one of cpu, paper"):
        FERSNetConfig.preset("gpu")
    with pytest.raises(ValueError):
        FERSNetConfig(sharing="")


def test_config_round_trips_through_a_dict() -> None:
    cfg = FERSNetConfig.preset("paper", sharing="aws")
    as_json = {**dataclasses.asdict(cfg), "widths": list(cfg.widths)}
    assert FERSNetConfig(**as_json) == cfg


def test_bad_inputs_raise_clear_errors() -> None:
    model = FERSNet(FERSNetConfig.preset("cpu"))
    with pytest.raises(FesaugError, match=r"expected images of shape \(B, 1, 64, 64\)"):
        model.classify(torch.zeros(2, 3, 64, 64))
    x = images(model.config)
    with pytest.raises(FesaugError, match=r"lie in \[0, 6\]"):
        model.synthesize(x, torch.tensor([0, 7]))
    with pytest.raises(FesaugError, match="integer class ids"):
        model.synthesize(x, torch.tensor([0.0, 1.0]))
    with pytest.raises(FesaugError, match="lie in"):
        Discriminator(model.config)(x, -1)


# ----------------------------------------------------------------------------- helpers


def test_model_range_helpers_round_trip() -> None:
    pixels = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    scaled = to_model_range(pixels)
    assert float(scaled.min()) == -1.0 and float(scaled.max()) == 1.0
    assert torch.equal(from_model_range(scaled, as_uint8=True), pixels)
    torch.testing.assert_close(to_model_range(pixels.float() / 255), scaled)
    assert float(from_model_range(torch.tensor([-3.0, 3.0])).min()) == 0.0
    with pytest.raises(FesaugError, match=r"scaled to \[0, 1\]"):
        to_model_range(pixels.float())


def test_flop_counts_cover_the_decoder_and_leave_batchnorm_stats_alone() -> None:
    model = FERSNet(FERSNetConfig.preset("cpu"))
    x = images(model.config)
    before = model.fer_head.conv[1].running_mean.clone()
    fer_only = count_flops(model, x)
    with_synthesis = count_flops(model, x, torch.tensor([0, 1]))
    assert 0 < fer_only < with_synthesis
    assert torch.equal(model.fer_head.conv[1].running_mean, before)
    assert model.training
    assert count_parameters(model, trainable_only=True) == count_parameters(model)


# ----------------------------------------------------------------------------- deformation output (#17)


def _warp_net(seed: int = 0) -> FERSNet:
    torch.manual_seed(seed)
    return FERSNet(FERSNetConfig(image_size=32, widths=(8, 16, 16), output="warp")).eval()


def _set_head(net: FERSNet, colour: float, mask_logit: float, flow: tuple[float, float]) -> None:
    """Make the decoder's output layers give constants: colour, mask logit and (atanh of) flow."""
    with torch.no_grad():
        for head, values in ((net.decoder.to_image, [colour, mask_logit]), (net.decoder.flow_head, flow)):
            head.weight.zero_()
            head.bias.copy_(torch.tensor(values))


def test_zero_flow_and_closed_mask_give_the_input_back_exactly() -> None:
    net = _warp_net()
    _set_head(net, colour=0.3, mask_logit=-1e4, flow=(0.0, 0.0))  # mask 0: nothing painted
    x = images(net.config, batch=3)
    out = net(x, torch.tensor([1, 2, 3]))
    assert torch.equal(out.fake, x) and torch.equal(out.flow, torch.zeros_like(out.flow))


def test_a_known_flow_shifts_the_face_by_that_many_pixels() -> None:
    from fesaug.models.decoder import warp

    x = images(FERSNetConfig(image_size=32, widths=(8, 16, 16)), batch=2)
    flow = torch.zeros(2, 2, 32, 32)
    flow[:, 0], flow[:, 1] = 3.0, -2.0  # read 3 px to the right and 2 px up
    moved = warp(x, flow)
    torch.testing.assert_close(moved[..., 2:, :-3], x[..., :-2, 3:], atol=1e-5, rtol=0)
    # Through the network: a constant flow head output (tanh⁻¹ of 3 px / max_flow) does the same.
    net = _warp_net()
    px = net.decoder.max_flow
    _set_head(net, colour=0.0, mask_logit=-1e4, flow=(float(torch.atanh(torch.tensor(3 / px))), 0.0))
    fake = net(x, torch.tensor([0, 1])).fake
    torch.testing.assert_close(fake[..., :-3], x[..., 3:], atol=1e-4, rtol=0)


def test_intensity_scales_the_edit_and_zero_gives_the_input() -> None:
    net = _warp_net()
    x = images(net.config, batch=2)
    t = torch.tensor([4, 5])
    assert torch.equal(net(x, t, intensity=torch.zeros(2)).fake, x)
    full, half = net(x, t), net(x, t, intensity=torch.full((2,), 0.5))
    torch.testing.assert_close(half.flow, full.flow * 0.5)
    torch.testing.assert_close(half.mask, full.mask * 0.5)
    assert torch.equal(net(x, t, intensity=torch.ones(2)).fake, full.fake)


def test_an_intensity_above_one_exaggerates_the_edit_and_keeps_the_mask_a_mask() -> None:
    net = _warp_net()
    x = images(net.config, batch=2)
    t = torch.tensor([4, 5])
    _set_head(net, colour=0.5, mask_logit=0.0, flow=(0.3, -0.2))  # mask 0.5 everywhere, a steady flow
    full, strong = net(x, t), net(x, t, intensity=torch.full((2,), MAX_INTENSITY))
    torch.testing.assert_close(strong.flow, full.flow * MAX_INTENSITY)
    assert strong.mask.max() <= 1 and torch.equal(strong.mask, (full.mask * MAX_INTENSITY).clamp(max=1))


def test_gradients_reach_the_flow_and_residual_heads() -> None:
    net = _warp_net().train()
    x = images(net.config, batch=4)
    net(x, torch.tensor([0, 1, 2, 3])).fake.sub(x.flip(-1)).abs().mean().backward()
    for head in (net.decoder.to_image, net.decoder.flow_head):  # colour and mask; flow x and y
        assert (head.weight.grad.abs().flatten(1).sum(1) > 0).all()


def test_a_warp_model_starts_from_the_identity_flow() -> None:
    net = _warp_net()
    out = net(images(net.config), torch.tensor([0, 1]))
    assert torch.equal(out.flow, torch.zeros_like(out.flow)) and out.mask.mean() < 0.05


def test_flow_and_mask_below_their_thresholds_change_nothing_at_inference() -> None:
    torch.manual_seed(0)
    net = FERSNet(
        FERSNetConfig(image_size=32, widths=(8, 16, 16), output="warp", flow_threshold=0.25, mask_threshold=0.05)
    ).eval()
    px = net.decoder.max_flow
    # A 0.1-pixel flow and a 2 % mask: under both thresholds, so the input comes back exactly.
    _set_head(
        net,
        colour=0.3,
        mask_logit=float(torch.logit(torch.tensor(0.02))),
        flow=(float(torch.atanh(torch.tensor(0.1 / px))), 0.0),
    )
    x = images(net.config, batch=2)
    assert torch.equal(net(x, torch.tensor([0, 1])).fake, x)
    # Training sees the raw values, so the heads learn from them.
    out = net.train()(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out.flow[:, 0], torch.full_like(out.flow[:, 0], 0.1))
    assert not torch.equal(out.fake, x)
    # Above the thresholds the values pass unchanged at inference too.
    _set_head(net, colour=0.3, mask_logit=0.0, flow=(float(torch.atanh(torch.tensor(0.5 / px))), 0.0))
    out = net.eval()(x, torch.tensor([0, 1]))
    torch.testing.assert_close(out.mask, torch.full_like(out.mask, 0.5))
    torch.testing.assert_close(out.flow[:, 0], torch.full_like(out.flow[:, 0], 0.5))


@pytest.mark.parametrize("field, value", [("flow_threshold", -0.1), ("flow_threshold", 100.0), ("mask_threshold", 1.0)])
def test_bad_thresholds_are_refused(field: str, value: float) -> None:
    with pytest.raises(ModelConfigError, match=field):
        FERSNetConfig(output="warp", **{field: value})


def test_a_checkpoint_config_recorded_before_a_field_existed_keeps_its_behaviour() -> None:
    recorded = dataclasses.asdict(FERSNetConfig(output="warp", flow_threshold=0.5, mask_threshold=0.1))
    del recorded["flow_threshold"], recorded["mask_threshold"]
    from fesaug.synthesis.records import CHECKPOINT

    config = FERSNetConfig(**CHECKPOINT.read({"model_config": recorded}, where="test")["model_config"])
    assert (config.output, config.flow_threshold, config.mask_threshold) == ("warp", 0.0, 0.0)
