"""One FERSNet training step (:func:`train_step`), per batch (losses in
:class:`~fesaug.synthesis.config.LossWeights`):

1. FERSNet translates the sources to their targets and back, and classifies the real sources
   (one module call, :class:`GeneratorStep`, so that DDP sees one forward per backward);
2. the discriminator is updated ``d_steps`` times on real vs. these (detached) synthesized images;
3. FERSNet (encoders, classifier, decoder) is updated on the weighted sum of its losses, with
   the discriminator frozen.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from fesaug.evaluate.augment import augment_batch
from fesaug.evaluate.downstream import DownstreamClassifier
from fesaug.models import Discriminator, FERSNet, to_model_range
from fesaug.synthesis.config import LossWeights
from fesaug.synthesis.runtime import Runtime

__all__ = ["GeneratorStep", "Optimisation", "train_step"]


class GeneratorStep(nn.Module):
    """Every FERSNet forward pass of one generator update, in one call.

    Returns a dict: ``logits``, the FER logits of the real sources; ``fake``, the synthesized
    images; ``cycled``, their translations back to the source labels; ``judged``, the logits of
    the synthesized images as the expression judge sees them (see ``LossWeights.expression``);
    ``painted`` and ``roughness``, the mean area and total variation of the attention masks;
    ``bending`` and ``displacement``, the total variation and mean length of the flow fields
    (``output="warp"``); ``variants``, see below. Masks and flows of both translations count.

    ``judge``: an independent, frozen classifier (``TrainConfig.expression_classifier``); without
    one, FERSNet's own FER branch judges, with frozen weights in eval mode.

    ``paired_intensities``: the synthesized images are also returned at these intensities
    (``(K, B, C, S, S)``; the edit predicted once, applied K times), for the paired loss to take
    the closest (``TrainConfig.paired_intensities``); empty: the full edit only.
    """

    def __init__(
        self, net: FERSNet, judge: DownstreamClassifier | None = None, paired_intensities: tuple[float, ...] = ()
    ) -> None:
        super().__init__()
        self.net = net
        self.judge = judge
        self.paired_intensities = paired_intensities
        if judge is not None:
            judge.eval().requires_grad_(False)

    def forward(self, x: Tensor, source_label: Tensor, target_label: Tensor) -> dict[str, Tensor]:
        out = self.net(x, target_label)
        fake = out.fake
        assert fake is not None and out.edit is not None  # a target was given
        variants = (
            torch.stack(
                [out.edit.apply(x, torch.full_like(target_label, s, dtype=x.dtype))[0] for s in self.paired_intensities]
            )
            if self.paired_intensities
            else fake[None]
        )
        with _frozen_batch_stats(self.net):
            back = self.net(fake, source_label)
        judged = _frozen_classifier_logits(self.net, fake) if self.judge is None else self._judge(fake)
        masks = [m.float() for m in (out.mask, back.mask) if m is not None]
        if masks:  # 0 without an attention mask
            painted = torch.stack([m.mean() for m in masks]).mean()
            roughness = torch.stack([_total_variation(m) for m in masks]).mean()
        else:
            painted = roughness = x.new_zeros(())
        flows = [f.float() for f in (out.flow, back.flow) if f is not None]
        bending = torch.stack([_total_variation(f) for f in flows]).mean() if flows else x.new_zeros(())
        displacement = torch.stack([f.norm(dim=1).mean() for f in flows]).mean() if flows else x.new_zeros(())
        return {
            "logits": out.logits,
            "fake": fake,
            "cycled": back.fake,
            "judged": judged,
            "painted": painted,
            "roughness": roughness,
            "bending": bending,
            "displacement": displacement,
            "variants": variants,
            "flow": out.flow,
        }

    def _judge(self, fake: Tensor) -> Tensor:
        assert self.judge is not None
        self.judge.eval()  # train() on the wrapper must not switch its BatchNorm/dropout
        images = (fake.float() + 1) / 2  # the classifiers read [0, 1]
        if images.shape[-1] != self.judge.image_size:
            images = F.interpolate(
                images, size=self.judge.image_size, mode="bilinear", antialias=True, align_corners=False
            )
        # A random view per face (global RNG, so a resumed run repeats it): the loss must hold
        # for the expression, not for one exact arrangement of pixels.
        return self.judge(augment_batch(images, None))


@dataclass
class Optimisation:
    """The networks a step updates, as the step calls them, and their optimisers."""

    g_step: nn.Module  # GeneratorStep, DDP-wrapped when distributed
    d_train: nn.Module  # the discriminator, DDP-wrapped when distributed
    disc: Discriminator  # the bare discriminator (frozen during generator updates)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    perceptual: nn.Module | None = None  # frozen ST-LPIPS for LossWeights.paired_perceptual


def train_step(
    batch: dict[str, Tensor],
    o: Optimisation,
    w: LossWeights,
    d_steps: int,
    rt: Runtime,
    *,
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """One discriminator and one FERSNet update on ``batch``: the three steps of the module
    docstring; returns the losses (detached) and the share of paired rows."""
    device = rt.device
    x = to_model_range(batch["source"].to(device, non_blocking=True))
    x_target = to_model_range(batch["target"].to(device, non_blocking=True))
    y = batch["source_label"].to(device, non_blocking=True)
    t = batch["target_label"].to(device, non_blocking=True)
    paired = batch["paired"].to(device, non_blocking=True)

    with rt.autocast():
        g = o.g_step(x, y, t)
    fake = g["fake"]

    # Discriminator: a real image is always shown with its true label, the paired target when
    # there is one (same label as the fake next to it), else the source itself.
    real = torch.where(paired[:, None, None, None], x_target, x)
    real_label = torch.where(paired, t, y)
    o.disc.requires_grad_(True)
    for _ in range(d_steps):
        with rt.autocast():
            # One call on real and fake together: the PatchGAN normalises per image, and DDP
            # wants one forward per backward.
            scores = o.d_train(torch.cat([real, fake.detach()]), torch.cat([real_label, t])).float()
        s_real, s_fake = scores.chunk(2)
        loss_d = 0.5 * (F.mse_loss(s_real, torch.ones_like(s_real)) + F.mse_loss(s_fake, torch.zeros_like(s_fake)))
        o.opt_d.zero_grad(set_to_none=True)
        o.scaler.scale(loss_d).backward()
        o.scaler.step(o.opt_d)
        o.scaler.update()

    # FERSNet: the bare discriminator, frozen, so no gradient or DDP hook touches its weights.
    o.disc.requires_grad_(False)
    with rt.autocast():
        s_gen = o.disc(fake, t).float()
    pair_mask = paired.float()
    losses = {
        "fer": F.cross_entropy(g["logits"].float(), y, label_smoothing=label_smoothing),
        "adversarial": F.mse_loss(s_gen, torch.ones_like(s_gen)),
        "cycle": F.l1_loss(g["cycled"].float(), x),
        "paired": _masked_l1(g["variants"].float(), x_target, pair_mask),
        "paired_perceptual": _paired_perceptual(o.perceptual, fake, x_target, pair_mask),
        "expression": F.cross_entropy(g["judged"].float(), t),
        "attention": g["painted"],
        "mask_smoothness": g["roughness"],
        "flow_smoothness": g["bending"],
        "flow_magnitude": g["displacement"],
        "edit_sparsity": (fake.float() - x).abs().mean(),
        "flow_target": _flow_target(g["flow"], batch, pair_mask) if w.flow_target > 0 else pair_mask.new_zeros(()),
    }
    loss_g = sum(getattr(w, name) * value for name, value in losses.items())
    o.opt_g.zero_grad(set_to_none=True)
    o.scaler.scale(loss_g).backward()
    o.scaler.step(o.opt_g)
    o.scaler.update()
    o.disc.requires_grad_(True)
    return {
        **{f"loss_{k}": v.detach() for k, v in losses.items()},
        "loss_g_total": loss_g.detach(),
        "loss_d": loss_d.detach(),
        "paired_fraction": pair_mask.mean(),
    }


# --------------------------------------------------------------------------------------------
# the losses' pieces


def _total_variation(mask: Tensor) -> Tensor:
    return (mask[..., 1:, :] - mask[..., :-1, :]).abs().mean() + (mask[..., :, 1:] - mask[..., :, :-1]).abs().mean()


@contextlib.contextmanager
def _frozen_batch_stats(module: nn.Module) -> Iterator[None]:
    """Forward passes in training mode that leave BatchNorm running statistics unchanged.

    The running statistics classify real faces at evaluation time; letting batches of
    synthesized faces move them would shift the classifier toward the generator's artefacts.
    A momentum of 0 keeps them exactly as they are while batch statistics are still used.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _frozen_classifier_logits(net: FERSNet, images: Tensor) -> Tensor:
    """FER logits of ``images`` with the weights treated as constants (gradients reach only
    ``images``) and in eval mode, as the trained classifier will judge synthesized faces."""
    weights = {name: p.detach() for name, p in net.named_parameters()}
    was_training = net.training
    net.eval()
    try:
        return functional_call(net, weights, (images,)).logits
    finally:
        net.train(was_training)


def _paired_perceptual(perceptual: nn.Module | None, fake: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean ST-LPIPS between synthesized faces and their same-subject targets over the paired rows."""
    if perceptual is None or not bool(mask.any()):
        return fake.new_zeros((), dtype=torch.float32)
    rows = mask.bool()
    return perceptual((fake[rows].float() + 1) / 2, (target[rows].float() + 1) / 2).mean()


def _flow_target(flow: Tensor | None, batch: dict[str, Tensor], pair_mask: Tensor) -> Tensor:
    """Weighted mean L1 (pixels) between the predicted flow and the pairs' displacement
    (``batch["flow"]``, weighted by ``batch["flow_weight"]``) over the paired rows."""
    if flow is None:
        return pair_mask.new_zeros(())
    target = batch["flow"].to(flow.device, non_blocking=True)
    weight = batch["flow_weight"].to(flow.device, non_blocking=True) * pair_mask[:, None, None]
    error = (flow.float() - target).abs().sum(1)  # (B, S, S): |dx| + |dy|
    return (error * weight).sum() / weight.sum().clamp(min=1.0)


def _masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean L1 over the rows where ``mask`` is set (0 when none is). ``pred`` ``(K, B, …)``: K
    candidates per row, each row scored by its closest one."""
    per_row = (pred - target).abs().flatten(2).mean(2).min(dim=0).values
    return (per_row * mask).sum() / mask.sum().clamp(min=1)
