"""What every judge shares: the scoring interface, image normalisation, missing-extra errors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from fesaug.utils.errors import FesaugError


class Judge(ABC):
    """A model trained elsewhere that scores synthetic faces.

    ``score(images, targets, parents)`` returns one float per image (NaN: not judged, e.g. a
    class the model does not know or a face it cannot read); ``column`` is the manifest column
    the score is recorded in, ``higher_is_better`` its direction.
    """

    name: str
    column: str
    higher_is_better: bool

    @abstractmethod
    def score(
        self, images: Tensor | np.ndarray, targets: Sequence[str], parents: Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        """One score per image; ``targets``: each image's intended class; ``parents``: the real
        face each image was made from (same order), for judges that compare the two."""


def as_gray_uint8(images: Tensor | np.ndarray) -> Tensor:
    """Faces as a ``(N, 1, H, W)`` uint8 tensor.

    Accepts fesaug's tensors ``(N, C, H, W)`` (C = 1 or 3, uint8 or float in [0, 1]) and image
    arrays ``(N, H, W)`` or ``(N, H, W, C)``; colour becomes luminance (ITU-R 601-2, as PIL's
    ``convert("L")`` and the manifests' own decoding do).
    """
    x = _as_uint8(images)
    if x.shape[1] == 3:
        # PIL's integer formula, so a face read here equals the same file decoded by the manifests.
        r, g, b = x.to(torch.int32).unbind(1)
        x = ((r * 299 + g * 587 + b * 114 + 500) // 1000).to(torch.uint8)[:, None]
    return x.contiguous()


def as_rgb_uint8(images: Tensor | np.ndarray) -> Tensor:
    """Faces as a ``(N, 3, H, W)`` uint8 tensor, for models trained on colour photos (dlib,
    LPIPS): colour faces as they are, gray ones repeated to three channels. Accepts what
    :func:`as_gray_uint8` does."""
    x = _as_uint8(images)
    return (x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x).contiguous()


def _as_uint8(images: Tensor | np.ndarray) -> Tensor:
    """Faces as ``(N, 1 or 3, H, W)`` uint8: arrays moved channels-first, floats scaled, alpha dropped."""
    if isinstance(images, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(images))
        if x.dim() == 3:
            x = x[:, None]
        elif x.dim() == 4 and x.shape[-1] in (1, 3, 4):
            x = x.permute(0, 3, 1, 2)
    elif isinstance(images, Tensor):
        x = images
    else:
        raise FesaugError(f"faces must be a torch tensor or numpy array, got {type(images).__name__}")
    if x.dim() != 4 or x.shape[1] not in (1, 3, 4):
        raise FesaugError(
            f"faces must be (N, 1 or 3, H, W) tensors or (N, H, W[, C]) arrays, got shape {tuple(x.shape)}"
        )
    if x.dtype != torch.uint8:
        x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
    if x.shape[1] == 4:  # RGBA: the alpha channel carries no face
        x = x[:, :3]
    return x
