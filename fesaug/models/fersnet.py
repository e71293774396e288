"""FERSNet: joint facial-expression recognition (FER) and synthesis (FES) with feature sharing.

Zhao et al., "Deep Multi-task Learning for Facial Expression Recognition and Synthesis Based on
Selective Feature Sharing", ICPR 2020. Layout (L = len(config.widths), S = config.image_size)::

    image ─ stem (shared) ─┬─ FER block 1 ─╳─ FER block 2 ─╳─ … ─╳─ FER head ─→ logits
                           └─ FES block 1 ─╳─ FES block 2 ─╳─ … ─╳─┐
                                                  f_tra(target) ──(c)─ decoder ─→ fake image

* ``╳`` is a pair of sharing units (one per direction, own weights per level). Both read the
  features from *before* the exchange, so the two updates are simultaneous. With the default
  4 widths there are 3 pairs, as in the ICPR figure.
* The shared stem follows the older version of the paper's figure and the 2021 code.
  ``sharing="hard"`` runs one encoder for both heads (the paper's "w/o ConvFLU");
  ``sharing="none"`` builds two independent networks, stems included (the paper's "w/o MTL").
* ``f_tra`` maps the target one-hot to a bottleneck-sized map that is concatenated with the FES
  bottleneck, as in the ICPR figure.
* ``output="attention"`` makes the decoder paint only where the expression
  changes, as in GANimation (Pumarola et al., ECCV 2018): it predicts a colour image ``C`` and a
  mask ``m`` in [0, 1], and ``fake = m·C + (1 − m)·x``. Pixels the mask leaves alone keep the
  subject's own skin tone, hair and background exactly; ``output="direct"`` is the paper's plain
  ``tanh`` image. ``output="warp"`` (the default) edits by deformation first: the decoder also predicts a
  dense flow field that moves the source's own pixels (``grid_sample``; brows, lids, lip corners
  and jaw are mostly geometry) and paints through the mask only what a warp cannot make (an
  opening mouth, wrinkles, teeth): ``fake = m·C + (1 − m)·warp(x, flow)``; at inference, flow
  and mask values too small to see are dropped (``flow_threshold``, ``mask_threshold``). Both the flow and
  the mask are scaled by an optional per-image ``intensity`` in [0, ``MAX_INTENSITY``], so
  intensity 0 gives the input back exactly, intermediate values give partial edits and values
  above 1 exaggerate the edit (flow and mask scaled, the mask clipped to 1; the other outputs
  scale their mask, or extrapolate from the input, likewise). ``unet_skips`` adds the FES-side post-sharing features
  at every level to the decoder, as in the authors' 2021 code. Their AdaIN conditioning is not
  reproduced.

Images enter and leave the model in [-1, 1] (``tanh`` output); ``to_model_range`` and
``from_model_range`` convert from and to uint8 / [0, 1] images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fesaug.models.blocks import (
    FERHead,
    InstanceNorm,
    TargetEmbedding,
    check_images,
    encoder_block,
    one_hot_labels,
    stem_block,
)
from fesaug.models.decoder import Decoder, Edit, warp
from fesaug.models.fersnet_config import (
    MAX_INTENSITY,
    NORMS,
    OUTPUTS,
    PRESETS,
    WARP_FIELDS,
    FERSNetConfig,
    ModelConfigError,
)
from fesaug.models.sharing import SHARING_UNIT_KINDS, apply_sharing, make_sharing_unit
from fesaug.utils.errors import FesaugError

__all__ = [
    "MAX_INTENSITY",
    "NORMS",
    "OUTPUTS",
    "PRESETS",
    "WARP_FIELDS",
    "Discriminator",
    "Edit",
    "FERSNet",
    "FERSNetConfig",
    "FERSNetOutput",
    "ModelConfigError",
    "count_flops",
    "count_parameters",
    "from_model_range",
    "to_model_range",
    "warp",
]


@dataclass
class FERSNetOutput:
    """``logits``: FER scores ``(B, num_classes)``. ``fake``: synthesized ``(B, C, S, S)`` in
    [-1, 1], only when a target was given. ``mask``: the attention mask ``(B, 1, S, S)`` in
    [0, 1] (1 = painted by the decoder), with ``fake`` when ``output`` is ``attention`` or ``warp``.
    ``flow``: with ``output="warp"``, the displacement ``(B, 2, S, S)`` (x, y) in pixels.
    ``edit``: the decoder's prediction before it was applied (:class:`Edit`), to re-apply it
    at other intensities. ``gates``: sharing-unit gate / mixing tensors keyed
    ``"level{l}/{fer|fes}<-{fes|fer}/{name}"``, only when requested (not detached)."""

    logits: Tensor
    fake: Tensor | None = None
    mask: Tensor | None = None
    gates: dict[str, Tensor] | None = None
    flow: Tensor | None = None
    edit: Edit | None = None


# --------------------------------------------------------------------------------------------
# the networks


class FERSNet(nn.Module):
    """Generator + classifier. See the module docstring for the layout."""

    def __init__(self, config: FERSNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FERSNetConfig()
        w = c.widths
        # `stem` feeds both branches, except with sharing="none" where FES has its own `fes_stem`.
        self.stem = stem_block(c.in_channels, w[0], c.fer_norm)
        self.fes_stem = stem_block(c.in_channels, w[0], c.fes_norm) if c.sharing == "none" else None
        self.fer_blocks = nn.ModuleList(encoder_block(w[i - 1], w[i], c.fer_norm) for i in range(1, c.levels))
        self.fes_blocks = (
            None
            if c.sharing == "hard"
            else nn.ModuleList(encoder_block(w[i - 1], w[i], c.fes_norm) for i in range(1, c.levels))
        )
        # sharing["fer"][i] updates FER features from FES ones after block i+1; sharing["fes"] the reverse.
        self.sharing = (
            nn.ModuleDict(
                {
                    branch: nn.ModuleList(
                        make_sharing_unit(c.sharing, w[i], c.flu_kernel_size) for i in range(1, c.levels)
                    )
                    for branch in ("fer", "fes")
                }
            )
            if c.sharing in SHARING_UNIT_KINDS
            else None
        )
        self.fer_head = FERHead(w[-1], c.num_classes, c.fer_norm)
        self.target_embedding = TargetEmbedding(c.num_classes, w[-1], c.bottleneck_size)
        self.decoder = Decoder(c)
        # Channels-last weights make every convolution's activations channels-last: oneDNN's
        # convolutions run 1.2-12x faster on them on a CPU (bench/results/train_throughput_cpu.md),
        # cuDNN's under mixed precision too. The same arithmetic up to rounding.
        self.to(memory_format=torch.channels_last)

    def forward(
        self, x: Tensor, target: Tensor | None = None, *, intensity: Tensor | None = None, return_gates: bool = False
    ) -> FERSNetOutput:
        """Classify ``x`` (B, C, S, S in [-1, 1]); also translate it to ``target`` labels if given,
        at ``intensity`` ``(B,)`` in [0, MAX_INTENSITY] (default 1: the learnt edit; 0: the input).

        Without a target, the decoder and every FES computation the logits do not depend on are
        skipped (all of the FES branch for ``sharing="none"``).
        """
        check_images(x, self.config)
        gates: dict[str, Tensor] | None = {} if return_gates else None
        fer, fes_pyramid = self._encode(x, need_fes=target is not None, gates=gates)
        logits = self.fer_head(fer)
        fake = mask = flow = edit = None
        if target is not None:
            one_hot = one_hot_labels(target, x.shape[0], self.config.num_classes, x.device)
            edit = self.decoder(fes_pyramid, self.target_embedding(one_hot), one_hot)
            fake, mask, flow = edit.apply(x, intensity)
        return FERSNetOutput(logits=logits, fake=fake, mask=mask, gates=gates, flow=flow, edit=edit)

    def classify(self, x: Tensor) -> Tensor:
        """Expression logits ``(B, num_classes)``."""
        return self(x).logits

    def synthesize(self, x: Tensor, target_labels: Tensor | int, intensity: Tensor | None = None) -> Tensor:
        """``x`` translated to ``target_labels`` (one int for the whole batch, or one per image);
        ``intensity`` ``(B,)`` in [0, MAX_INTENSITY] scales the edit."""
        if isinstance(target_labels, int):
            target_labels = torch.full((x.shape[0],), target_labels, dtype=torch.long, device=x.device)
        fake = self(x, target_labels, intensity=intensity).fake
        assert fake is not None  # a target was given
        return fake

    def _encode(self, x: Tensor, *, need_fes: bool, gates: dict[str, Tensor] | None) -> tuple[Tensor, list[Tensor]]:
        """FER bottleneck features and the FES pyramid (level 0 = stem … bottleneck).

        The pyramid is empty when ``need_fes`` is False.
        """
        kind = self.config.sharing
        if kind == "hard":
            h = self.stem(x)
            pyramid = [h]
            for block in self.fer_blocks:
                h = block(h)
                pyramid.append(h)
            return h, pyramid if need_fes else []

        assert self.fes_blocks is not None  # every kind but "hard" has a FES encoder
        if kind == "none":
            fer = self.stem(x)
            for block in self.fer_blocks:
                fer = block(fer)
            if not need_fes:
                return fer, []
            assert self.fes_stem is not None
            fes = self.fes_stem(x)
            pyramid = [fes]
            for block in self.fes_blocks:
                fes = block(fes)
                pyramid.append(fes)
            return fer, pyramid

        assert self.sharing is not None
        fer = fes = self.stem(x)
        pyramid = [fes]
        last = len(self.fer_blocks)
        for level, (fer_block, fes_block, to_fer, to_fes) in enumerate(
            zip(self.fer_blocks, self.fes_blocks, self.sharing["fer"], self.sharing["fes"]), start=1
        ):
            fer, fes = fer_block(fer), fes_block(fes)
            new_fer = apply_sharing(to_fer, fer, fes, gates, f"level{level}/fer<-fes")
            # The last FES update only feeds the decoder.
            if need_fes or level < last:
                fes = apply_sharing(to_fes, fes, fer, gates, f"level{level}/fes<-fer")
            fer = new_fer
            pyramid.append(fes)
        return fer, pyramid if need_fes else []

    def parameter_counts(self) -> dict[str, int]:
        """Parameters per part; the values sum to ``count_parameters(self)``."""
        parts: dict[str, list[nn.Module | None]] = {
            "stems": [self.stem, self.fes_stem],
            "fer_encoder": [self.fer_blocks],
            "fes_encoder": [self.fes_blocks],
            "sharing": [self.sharing],
            "fer_head": [self.fer_head],
            "fes_decoder": [self.target_embedding, self.decoder],
        }
        return {name: sum(count_parameters(m) for m in modules if m is not None) for name, modules in parts.items()}


class Discriminator(nn.Module):
    """Conditional PatchGAN: image + target one-hot tiled as extra channels → a grid of scores.

    conv4x4 stride 2 + LeakyReLU(0.2) blocks (InstanceNorm on all but the first), width doubling
    up to 8 × ``disc_width``. Blocks are added while the grid stays at least 4x4, at most four,
    so 96x96 → 6x6 as in the authors' code and 64x64 → 4x4. The output has no activation, ready
    for LSGAN (the 2021 code) or a logits-based loss.
    """

    def __init__(self, config: FERSNetConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or FERSNetConfig()
        width = c.disc_width
        layers: list[nn.Module] = [
            nn.Conv2d(c.in_channels + c.num_classes, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        side, blocks = c.image_size // 2, 1
        while blocks < 4 and side % 2 == 0 and side // 2 >= 4:
            out = min(2 * width, 8 * c.disc_width)
            layers += [
                nn.Conv2d(width, out, 4, stride=2, padding=1, bias=False),
                InstanceNorm(out),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width, side, blocks = out, side // 2, blocks + 1
        # Asymmetric padding keeps a 4x4 conv at stride 1 from shrinking the grid.
        layers += [nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(width, 1, 4, padding=1)]
        self.net = nn.Sequential(*layers)
        self.output_size = side
        self.to(memory_format=torch.channels_last)  # see FERSNet

    def forward(self, images: Tensor, labels: Tensor | int) -> Tensor:
        """Scores ``(B, 1, output_size, output_size)`` for ``images`` in [-1, 1] showing ``labels``."""
        check_images(images, self.config)
        b, _, h, w = images.shape
        condition = one_hot_labels(labels, b, self.config.num_classes, images.device)[:, :, None, None]
        return self.net(torch.cat([images, condition.expand(-1, -1, h, w).to(images.dtype)], dim=1))


# --------------------------------------------------------------------------------------------
# value range and cost helpers


def to_model_range(images: Tensor) -> Tensor:
    """uint8 images in [0, 255] or float images in [0, 1] → float images in [-1, 1]."""
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    if not images.is_floating_point():
        raise FesaugError(f"images must be uint8 or float in [0, 1], got {images.dtype}")
    if images.numel():
        low, high = (float(v) for v in images.detach().aminmax())
        if low < 0.0 or high > 1.0:
            raise FesaugError(
                f"float images must be scaled to [0, 1] (got {low:.3g}..{high:.3g}); "
                "pass uint8 images, or divide by 255 first"
            )
    return images * 2.0 - 1.0


def from_model_range(images: Tensor, *, as_uint8: bool = False) -> Tensor:
    """Model output in [-1, 1] → float images in [0, 1] (clamped), or uint8 in [0, 255]."""
    out = ((images + 1.0) / 2.0).clamp(0.0, 1.0)
    return (out * 255.0).round().to(torch.uint8) if as_uint8 else out


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) in ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def count_flops(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs of one forward call ``module(*args, **kwargs)``, per torch's FlopCounterMode.

    Multiplies and adds count separately (2 FLOPs per multiply-accumulate); only matmuls,
    convolutions and attention are counted, so norms and activations are left out. A training
    step costs about 3x this. The module runs in eval mode without gradients, so BatchNorm
    statistics stay unchanged.
    """
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*args, **kwargs)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())
