"""FERSNet's decoder, f_dec, and the edit it predicts: a painted image, an attention mask and a
flow field (see :mod:`fesaug.models.fersnet` for the three outputs), applied to the source by
:meth:`Edit.apply` at any intensity."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fesaug.models.blocks import conv_norm_relu, upsample_block
from fesaug.models.fersnet_config import FERSNetConfig


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
        self.bottleneck = conv_norm_relu(2 * w[-1], w[-1], norm)
        self.ups = nn.ModuleList()
        self.fuse = nn.ModuleList()
        for level in reversed(range(config.levels - 1)):
            self.ups.append(upsample_block(w[level + 1], w[level], norm))
            self.fuse.append(conv_norm_relu((2 if self.skips else 1) * w[level] + config.num_classes, w[level], norm))
        self.output, self.in_channels = config.output, config.in_channels
        self.max_flow = config.max_flow * config.image_size  # in pixels
        self.flow_threshold, self.mask_threshold = config.flow_threshold, config.mask_threshold
        self.last_up = upsample_block(w[0], w[0], norm)
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
