"""The downstream classifier's augmentation (:func:`augment_batch`), also the expression judge's
random view of synthesized faces in FERSNet's training: per image a flip, shift, rotation and
scale, drawn from a seeded generator and applied to a whole batch in one ``grid_sample``."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = ["augment_batch", "augment_theta", "resample"]


def augment_batch(x: Tensor, gen: torch.Generator | None) -> Tensor:
    """Randomly flip, shift (±4 px), rotate (±10°) and scale (0.9–1.1) each image of a float batch.

    One ``affine_grid``/``grid_sample`` (differentiable, so a loss can be taken through it) with
    per-sample parameters drawn from ``gen`` (``None``: torch's global generator) instead of
    ``torchvision.transforms.v2``: v2 draws one set of parameters per call from torch's global
    generator, so per-sample augmentation would need a Python loop and seeding would touch
    global state. Border padding repeats edge pixels rather than inventing black margins.
    """
    return resample(x, augment_theta(len(x), x.shape[-1], gen))


def augment_theta(n: int, size: int, gen: torch.Generator | None) -> Tensor:
    """The ``(n, 2, 3)`` affine maps of :func:`augment_batch`, drawn from ``gen`` (5 numbers per image)."""
    u = torch.rand(n, 5, generator=gen)
    angle = (u[:, 0] * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * u[:, 1]
    shift = (u[:, 2:4] * 2 - 1) * (2 * 4 / size)  # grid coordinates span 2 over the image
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    return torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    )


def resample(x: Tensor, theta: Tensor) -> Tensor:
    """``x`` resampled through the affine maps ``theta`` (bilinear, edge pixels repeated outside)."""
    grid = nn.functional.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
