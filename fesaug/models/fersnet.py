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

import functools
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from fesaug.models.sharing import SHARING_KINDS, SHARING_UNIT_KINDS, apply_sharing, make_sharing_unit
from fesaug.utils.errors import FesaugError

NORMS: tuple[str, ...] = ("batch", "instance", "none")
OUTPUTS: tuple[str, ...] = ("attention", "direct", "warp")


class ModelConfigError(FesaugError, ValueError):
    """An impossible model configuration (also a ``ValueError`` for callers outside the CLI)."""


@dataclass(frozen=True)
class FERSNetConfig:
    """Everything needed to rebuild a FERSNet and its discriminator.

    ``widths[0]`` is the stem's width; each further entry is one encoder level of both branches,
    followed by one pair of sharing units. Each level halves the resolution, so ``image_size``
    must be divisible by ``2 ** len(widths)``. The defaults are the ``cpu`` preset.
    ``dataclasses.asdict(config)`` round-trips through ``FERSNetConfig.from_record(d)`` (for checkpoints).
    """

    image_size: int = 64
    in_channels: int = 1
    num_classes: int = 7
    widths: tuple[int, ...] = (16, 32, 64, 128)
    sharing: str = "convflu"
    flu_kernel_size: int = 1
    unet_skips: bool = True
    # BatchNorm on the recognition side and InstanceNorm on the synthesis side, as in the
    # authors' 2021 code: per-image statistics keep one face's style out of another's output.
    # With sharing="hard" the single encoder uses fer_norm.
    fer_norm: str = "batch"
    fes_norm: str = "instance"
    decoder_norm: str = "instance"
    disc_width: int = 32
    output: str = "warp"  # warp | attention | direct, see the module docstring
    # output="warp": the largest displacement of a pixel along each axis, as a fraction of the side.
    max_flow: float = 0.125
    # output="warp", at inference (eval mode): displacements shorter than flow_threshold pixels and
    # mask values below mask_threshold count as none. A tenth of a pixel of flow or a 3 % mask
    # changes nothing visible, yet each blurs or tints the whole face a little. Training sees the
    # raw values: a dead zone there (straight-through) made the flow grow past it instead
    # (bench/results/synthesis_recipes_demo.md, thr25_05).
    flow_threshold: float = 0.1
    mask_threshold: float = 0.03

    def __post_init__(self) -> None:
        # Lists come back from JSON/YAML checkpoints; keep the config hashable and comparable.
        object.__setattr__(self, "widths", tuple(self.widths))
        self._validate()

    def settings(self) -> dict[str, Any]:
        """The fields as plain values, with the warp's own (``max_flow``, the thresholds) set to
        None for the other outputs, which do not use them: two configs compute the same model
        exactly when their settings are equal."""
        out = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        return out if self.output == "warp" else out | dict.fromkeys(WARP_FIELDS)

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> FERSNetConfig:
        """The config a checkpoint recorded (``dataclasses.asdict``): a field the record predates
        means the behaviour before it existed (:data:`RECORD_LEGACY`), else its default."""
        return cls(**{**RECORD_LEGACY, **data})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> FERSNetConfig:
        """A named configuration, optionally with some fields replaced."""
        if name not in PRESETS:
            raise ModelConfigError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
        unknown = set(overrides) - set(cls.__dataclass_fields__)
        if unknown:
            raise ModelConfigError(f"unknown model config field(s): {', '.join(sorted(unknown))}")
        return replace(cls(**PRESETS[name]), **overrides)

    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def bottleneck_size(self) -> int:
        return self.image_size // 2**self.levels

    def _validate(self) -> None:
        if self.sharing not in SHARING_KINDS:
            raise ModelConfigError(f"unknown sharing kind {self.sharing!r}; choose one of {', '.join(SHARING_KINDS)}")
        if self.output not in OUTPUTS:
            raise ModelConfigError(f"output must be one of {', '.join(OUTPUTS)} (got {self.output!r})")
        if not 0 < self.max_flow <= 1:
            raise ModelConfigError(f"max_flow must lie in (0, 1] (a fraction of the image side), got {self.max_flow}")
        if not 0 <= self.flow_threshold < self.max_flow * self.image_size:
            raise ModelConfigError(
                f"flow_threshold must lie in [0, max_flow x image_size) pixels, got {self.flow_threshold}"
            )
        if not 0 <= self.mask_threshold < 1:
            raise ModelConfigError(f"mask_threshold must lie in [0, 1), got {self.mask_threshold}")
        for name in ("fer_norm", "fes_norm", "decoder_norm"):
            if getattr(self, name) not in NORMS:
                raise ModelConfigError(f"{name} must be one of {', '.join(NORMS)} (got {getattr(self, name)!r})")
        if len(self.widths) < 2 or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ModelConfigError(
                f"widths must be at least 2 positive integers (stem + one level), got {self.widths!r}"
            )
        for name in ("in_channels", "disc_width"):
            if getattr(self, name) < 1:
                raise ModelConfigError(f"{name} must be at least 1 (got {getattr(self, name)})")
        if self.num_classes < 2:
            raise ModelConfigError(f"num_classes must be at least 2 (got {self.num_classes})")
        if self.flu_kernel_size < 1 or self.flu_kernel_size % 2 == 0:
            raise ModelConfigError(f"flu_kernel_size must be odd, e.g. 1 or 3 (got {self.flu_kernel_size})")
        factor = 2**self.levels
        # InstanceNorm needs more than one pixel, so the bottleneck must be at least 2x2.
        if self.image_size % factor or self.image_size // factor < 2:
            raise ModelConfigError(
                f"image_size {self.image_size} must be a multiple of 2**{self.levels} = {factor} "
                f"(one halving per width in {self.widths}) and at least {2 * factor}; "
                f"use e.g. {max(2, round(self.image_size / factor)) * factor} or fewer widths"
            )


WARP_FIELDS: tuple[str, ...] = ("max_flow", "flow_threshold", "mask_threshold")  # used by output="warp" only

# The largest edit intensity: above 1 the learnt edit is extrapolated. The warp decoder trained on
# pairs makes edits of the right kind but too weak to be recognised (bench/results/
# synthesis_intensity_demo.md); twice the learnt displacement is as far as that stays plausible.
MAX_INTENSITY = 2.0

# Fields added after checkpoints were first written, and what a checkpoint without them did.
RECORD_LEGACY: dict[str, Any] = {"flow_threshold": 0.0, "mask_threshold": 0.0}

PRESETS: dict[str, dict[str, Any]] = {
    # Small enough that a training step of FERSNet + D on 32 images at 64x64 stays well under
    # a second on two CPU cores.
    "cpu": {"image_size": 64, "widths": (16, 32, 64, 128), "disc_width": 32},
    # Input size of the paper's code (96x96) and channel widths of the authors' 2021 network.
    "paper": {"image_size": 96, "widths": (64, 128, 256, 512), "disc_width": 64},
    # The usual colour crops: RAF-DB's aligned 100 px faces at 96, AffectNet-style crops at 112.
    # The cpu preset's widths at those sizes, so they still train on a CPU; the input channels
    # (gray or RGB) come from the manifest, as for every preset.
    "rgb96": {"image_size": 96, "widths": (16, 32, 64, 128), "disc_width": 32},
    "rgb112": {"image_size": 112, "widths": (16, 32, 64, 128), "disc_width": 32},
}


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
# building blocks


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return nn.InstanceNorm2d(channels, affine=True)
    return nn.Identity()


def _conv_norm_relu(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    # A bias before a normalisation that re-centres the output would be wasted parameters.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), _norm(norm, c_out), nn.ReLU(inplace=True)
    )


def stem_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """The first encoder stage (FERSNet's and EmotionAUNet's): conv, norm, ReLU, 2x downsampling."""
    # One conv at full resolution, as in the 2021 code: it is the most expensive place for a conv.
    return nn.Sequential(_conv_norm_relu(c_in, c_out, norm), nn.MaxPool2d(2))


def encoder_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """A later encoder stage: two conv-norm-ReLU layers, then 2x downsampling."""
    return nn.Sequential(_conv_norm_relu(c_in, c_out, norm), _conv_norm_relu(c_out, c_out, norm), nn.MaxPool2d(2))


def _upsample(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    # Nearest upsampling + conv instead of a transposed conv: no checkerboard artefacts in the
    # faces that will later be added to training sets.
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), _conv_norm_relu(c_in, c_out, norm))


def _as_labels(labels: Tensor | int, batch: int, num_classes: int, device: torch.device) -> Tensor:
    """Validated class ids ``(batch,)`` (long, on ``device``); one int stands for the whole batch."""
    if isinstance(labels, int):
        labels = torch.full((batch,), labels, dtype=torch.long, device=device)
    if labels.shape != (batch,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise FesaugError(
            f"target labels must be integer class ids of shape ({batch},), got {labels.dtype} {tuple(labels.shape)}"
        )
    if batch and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise FesaugError(
            f"target labels must lie in [0, {num_classes - 1}], got {int(labels.min())}..{int(labels.max())}"
        )
    return labels.to(device=device, dtype=torch.long)


def _one_hot(labels: Tensor | int, batch: int, num_classes: int, device: torch.device) -> Tensor:
    return F.one_hot(_as_labels(labels, batch, num_classes, device), num_classes).float()


def check_images(images: Tensor, config: FERSNetConfig) -> None:
    """A :class:`FesaugError` unless ``images`` is a batch of the shape ``config`` (anything with
    ``in_channels`` and ``image_size``) expects."""
    expected = (config.in_channels, config.image_size, config.image_size)
    if images.dim() != 4 or tuple(images.shape[1:]) != expected:
        raise FesaugError(
            f"expected images of shape (B, {', '.join(map(str, expected))}) scaled to [-1, 1], "
            f"got {tuple(images.shape)}; resize/convert them or change image_size/in_channels"
        )


class FERHead(nn.Module):
    """f_cls: conv + global average pool + linear, giving expression logits."""

    def __init__(self, channels: int, num_classes: int, norm: str) -> None:
        super().__init__()
        self.conv = _conv_norm_relu(channels, channels, norm)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(self.conv(features).mean(dim=(2, 3)))


class TargetEmbedding(nn.Module):
    """f_tra: target one-hot → Linear → reshape to the bottleneck grid → 1x1 conv.

    The 2020 sketch ends f_tra with a 1x1 conv too; its intermediate transposed conv from 1x1 to
    the bottleneck size is folded into the Linear, which costs far fewer parameters.
    """

    def __init__(self, num_classes: int, channels: int, size: int) -> None:
        super().__init__()
        self.channels, self.size = channels, size
        self.fc = nn.Linear(num_classes, channels * size * size)
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, one_hot: Tensor) -> Tensor:
        grid = F.relu(self.fc(one_hot)).view(-1, self.channels, self.size, self.size)
        return self.conv(grid)


class Decoder(nn.Module):
    """f_dec: bottleneck (+ target map) → upsample once per level back to the image size.

    With ``skips``, level l's FES features (after sharing) are concatenated after the matching
    upsampling step (U-Net); without, it is the plain decoder of the ICPR figure. The target
    one-hot is also tiled into every upsampling level (see ``forward``).
    """

    def __init__(self, config: FERSNetConfig) -> None:
        super().__init__()
        w, norm = config.widths, config.decoder_norm
        self.skips = config.unet_skips
        self.bottleneck = _conv_norm_relu(2 * w[-1], w[-1], norm)
        self.ups = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in reversed(range(config.levels - 1)):
            self.ups.append(_upsample(w[level + 1], w[level], norm))
            self.fuse.append(_conv_norm_relu((2 if self.skips else 1) * w[level] + config.num_classes, w[level], norm))
        self.output, self.in_channels = config.output, config.in_channels
        self.max_flow = config.max_flow * config.image_size  # in pixels
        self.flow_threshold, self.mask_threshold = config.flow_threshold, config.mask_threshold
        self.last_up = _upsample(w[0], w[0], norm)
        self.to_image = nn.Conv2d(w[0], config.in_channels + (config.output != "direct"), 1)  # (+ the mask)
        self.flow_head = None
        if config.output == "warp":
            # The flow comes from a coarse level (a quarter of the side where the model has one)
            # and is upsampled: smooth by construction, and each of its values gathers the loss
            # over a patch of pixels, so a brow can be moved as a whole.
            self.flow_level = min(1, config.levels - 2)
            self.flow_head = nn.Conv2d(w[self.flow_level], 2, 3, padding=1)
            # Start from the identity: no displacement and a mostly closed mask, so early training
            # edits the face instead of redrawing it.
            with torch.no_grad():
                self.flow_head.weight.zero_()
                self.flow_head.bias.zero_()
                self.to_image.bias[config.in_channels].fill_(-4.0)

    def forward(self, features: list[Tensor], target_map: Tensor, one_hot: Tensor) -> Edit:
        """``features``: FES feature pyramid, level 0 (stem) to the bottleneck; ``one_hot``: the
        target labels. Returns the :class:`Edit`, which :meth:`Edit.apply` turns into the image."""
        h = self.bottleneck(torch.cat([features[-1], target_map], dim=1))
        coarse = None
        for level, up, fuse, skip in zip(reversed(range(len(self.ups))), self.ups, self.fuse, reversed(features[:-1])):
            h = up(h)
            # The target is tiled into every level too: with skips, features of the source
            # expression reach the decoder around the bottleneck, and a target seen only there
            # was learned to be ignored (StarGAN tiles it at the input for the same reason).
            target = one_hot[:, :, None, None].expand(-1, -1, *h.shape[2:]).to(h.dtype)
            h = fuse(torch.cat([h, skip, target] if self.skips else [h, target], dim=1))
            if self.flow_head is not None and level == self.flow_level:
                coarse = self.flow_head(h)
        out = self.to_image(self.last_up(h))
        c = self.in_channels
        if self.output == "direct":
            return Edit(torch.tanh(out))
        mask = torch.sigmoid(out[:, c : c + 1])
        flow = None
        if coarse is not None:
            flow = torch.tanh(F.interpolate(coarse.float(), size=out.shape[-2:], mode="bilinear", align_corners=True))
            flow = flow * self.max_flow
            if not self.training:
                flow = flow * (flow.norm(dim=1, keepdim=True) >= self.flow_threshold)
                mask = mask * (mask >= self.mask_threshold)
        return Edit(torch.tanh(out[:, :c]), mask, flow)


@dataclass
class Edit:
    """What the decoder predicts for one translation, at full intensity, before it touches the
    source: ``image`` (the painted image, or with a mask the colour ``C``), ``mask`` in [0, 1]
    and ``flow`` (x, y displacement in pixels); see the module docstring."""

    image: Tensor
    mask: Tensor | None = None
    flow: Tensor | None = None

    def apply(self, source: Tensor, intensity: Tensor | None = None) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """The synthesized image, and the mask and flow it used, at ``intensity`` ``(B,)`` in
        [0, MAX_INTENSITY] (default 1): the mask and flow are scaled (the mask clipped to 1), and
        without a mask the painted image is blended with, or extrapolated from, the source."""
        scale = None if intensity is None else intensity[:, None, None, None]
        if self.mask is None:
            image = self.image
            return (
                (image if scale is None else (scale.to(image.dtype) * (image - source) + source).clamp(-1, 1)),
                None,
                None,
            )
        mask = self.mask if scale is None else (self.mask * scale.to(self.mask.dtype)).clamp(max=1)
        if self.flow is None:
            return mask * self.image + (1.0 - mask) * source, mask, None
        flow = self.flow if scale is None else self.flow * scale.to(self.flow.dtype)
        return mask * self.image + (1.0 - mask) * warp(source, flow).to(self.image.dtype), mask, flow


def warp(images: Tensor, flow: Tensor) -> Tensor:
    """``images`` ``(B, C, H, W)`` resampled at each pixel's position plus ``flow`` ``(B, 2, H, W)``
    (x, y, in pixels; bilinear, borders repeated): output pixel (i, j) reads the input at
    (i + flow_y, j + flow_x).

    Written as the input plus the change the displacement makes, so a zero flow returns the
    input bit for bit rather than up to interpolation rounding."""
    b, _, h, w = images.shape
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, h, device=images.device, dtype=flow.dtype),
        torch.linspace(-1, 1, w, device=images.device, dtype=flow.dtype),
        indexing="ij",
    )
    base = torch.stack([xs, ys], dim=-1)[None].expand(b, -1, -1, -1)
    # Pixels → normalised units: align_corners=True maps -1 and 1 onto the corner pixels' centres.
    scale = torch.tensor([2 / max(w - 1, 1), 2 / max(h - 1, 1)], device=images.device, dtype=flow.dtype)
    moved = base + flow.permute(0, 2, 3, 1) * scale
    x = images.to(flow.dtype)
    sample = functools.partial(F.grid_sample, mode="bilinear", padding_mode="border", align_corners=True)
    return x + (sample(x, moved) - sample(x, base))


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
            one_hot = _one_hot(target, x.shape[0], self.config.num_classes, x.device)
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
                nn.InstanceNorm2d(out, affine=True),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width, side, blocks = out, side // 2, blocks + 1
        # Asymmetric padding keeps a 4x4 conv at stride 1 from shrinking the grid.
        layers += [nn.ZeroPad2d((1, 0, 1, 0)), nn.Conv2d(width, 1, 4, padding=1)]
        self.net = nn.Sequential(*layers)
        self.output_size = side

    def forward(self, images: Tensor, labels: Tensor | int) -> Tensor:
        """Scores ``(B, 1, output_size, output_size)`` for ``images`` in [-1, 1] showing ``labels``."""
        check_images(images, self.config)
        b, _, h, w = images.shape
        condition = _one_hot(labels, b, self.config.num_classes, images.device)[:, :, None, None]
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
