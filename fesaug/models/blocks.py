"""The layers FERSNet and EmotionAUNet are built from: conv-norm-ReLU stages, the FER head, the
target embedding, and the checks of their inputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fesaug.utils.errors import FesaugError


class InstanceNorm(nn.InstanceNorm2d):
    """``nn.InstanceNorm2d(channels, affine=True)`` (the same parameters and state dict, so
    checkpoints load either way), computed faster on a CPU: as a group norm with one channel per
    group (the same statistics, per image and channel, and the same affine map), whose CPU
    kernel is twice as fast as instance norm's and keeps channels-last activations channels-last
    (instance norm copies them to the standard layout and back). Group norm's own backward pass
    is slow on channels-last tensors, so :class:`_ChannelsLastInstanceNorm` computes it from
    per-image sums instead (``bench/results/train_throughput_cpu_b32_t2.md``)."""

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.device.type != "cpu":
            return super().forward(x)
        if torch.is_grad_enabled() and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            return _ChannelsLastInstanceNorm.apply(x, self.weight, self.bias, self.eps)
        return F.group_norm(x, self.num_features, self.weight, self.bias, self.eps)


class _ChannelsLastInstanceNorm(torch.autograd.Function):
    """Instance norm of a channels-last ``(N, C, H, W)`` tensor: group norm's forward kernel, and
    a backward pass of reductions over the pixels of the ``(N, H·W, C)`` view, where a pixel's
    channels are adjacent."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor, eps: float) -> Tensor:
        n, c, h, w = x.shape
        y, mean, rstd = torch.native_group_norm(x, weight, bias, n, c, h * w, c, eps)
        ctx.save_for_backward(x, weight, mean, rstd)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
        x, weight, mean, rstd = ctx.saved_tensors
        n, c, h, w = x.shape
        pixels = h * w
        xv = x.permute(0, 2, 3, 1).reshape(n, pixels, c)  # a view: x is channels-last
        gv = grad.contiguous(memory_format=torch.channels_last).permute(0, 2, 3, 1).reshape(n, pixels, c)
        mean, rstd = mean.view(n, c), rstd.view(n, c)
        sum_g = gv.sum(1)
        sum_g_xhat = rstd * ((gv * xv).sum(1) - mean * sum_g)  # Σ grad · (x - mean) / std, per image and channel
        scale = weight * rstd
        # grad_x = scale · (grad - Σgrad / P - xhat · Σ(grad · xhat) / P) = grad · scale + x · k1 + k0
        k1 = -scale * rstd * sum_g_xhat / pixels
        k0 = -scale * sum_g / pixels - k1 * mean
        gx = torch.addcmul(k0[:, None], xv, k1[:, None]).addcmul_(gv, scale[:, None])
        return gx.view(n, h, w, c).permute(0, 3, 1, 2), sum_g_xhat.sum(0), sum_g.sum(0), None


def norm_layer(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "instance":
        return InstanceNorm(channels)
    return nn.Identity()


def conv_norm_relu(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    # A bias before a normalisation that re-centres the output would be wasted parameters.
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), norm_layer(norm, c_out), nn.ReLU(inplace=True)
    )


def stem_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """The first encoder stage (FERSNet's and EmotionAUNet's): conv, norm, ReLU, 2x downsampling."""
    # One conv at full resolution, as in the 2021 code: it is the most expensive place for a conv.
    return nn.Sequential(conv_norm_relu(c_in, c_out, norm), nn.MaxPool2d(2))


def encoder_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    """A later encoder stage: two conv-norm-ReLU layers, then 2x downsampling."""
    return nn.Sequential(conv_norm_relu(c_in, c_out, norm), conv_norm_relu(c_out, c_out, norm), nn.MaxPool2d(2))


def upsample_block(c_in: int, c_out: int, norm: str) -> nn.Sequential:
    # Nearest upsampling + conv instead of a transposed conv: no checkerboard artefacts in the
    # faces that will later be added to training sets.
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv_norm_relu(c_in, c_out, norm))


def as_labels(labels: Tensor | int, batch: int, num_classes: int, device: torch.device) -> Tensor:
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


def one_hot_labels(labels: Tensor | int, batch: int, num_classes: int, device: torch.device) -> Tensor:
    return F.one_hot(as_labels(labels, batch, num_classes, device), num_classes).float()


def check_images(images: Tensor, config: Any) -> None:
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
        self.conv = conv_norm_relu(channels, channels, norm)
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
