"""Feature-sharing units that link the FER and FES branches of FERSNet.

Every unit updates one branch from the other: ``unit(f_own, f_other) -> f_own_updated``, with
``f_own`` and ``f_other`` of the same shape ``(B, C, H, W)``. A bidirectional exchange at one
level is a *pair* of units, one per direction, each with its own weights. ``unit.exchange(...)``
returns the update together with the gate / mixing tensors, for logging or regularisation.

Kinds built here (``make_sharing_unit``):

* ``convflu``: the Convolutional Feature Leaky Unit of FERSNet (Zhao et al., ICPR 2020).
* ``cross-stitch``: Misra et al., CVPR 2016, per-channel and unconstrained.
* ``aws``: a reconstruction of the adaptive-weights-sharing unit of AWS-Net (Wang et al.,
  ICIP 2019), whose equations are not public.

The other two sharing kinds, ``hard`` (one encoder for both tasks) and ``none`` (two independent
networks), are not units: the model realises them by its structure.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fesaug.utils.errors import FesaugError

SHARING_UNIT_KINDS: tuple[str, ...] = ("convflu", "cross-stitch", "aws")
SHARING_KINDS: tuple[str, ...] = (*SHARING_UNIT_KINDS, "hard", "none")


class SharingUnit(nn.Module, ABC):
    """Updates the features of one branch (``own``) with those of the other branch."""

    def forward(self, f_own: Tensor, f_other: Tensor) -> Tensor:
        return self.exchange(f_own, f_other)[0]

    @abstractmethod
    def exchange(self, f_own: Tensor, f_other: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The updated ``f_own`` and the gate / mixing tensors that produced it (not detached)."""


class ConvFLU(SharingUnit):
    """Convolutional Feature Leaky Unit, exactly as in the FERSNet figure (x = own, y = other)::

        r   = σ(W_r ∗ [F_x, F_y])             leaky gate: how much of F_y may leak into the candidate
        F̃   = tanh(W ∗ (r ⊙ F_y) + U ∗ F_x)   candidate
        z   = σ(W_z ∗ [F_x, F_y])             update gate
        F_x' = (1 − z) ⊙ F_x + z ⊙ F̃

    Convention: ``z`` weights the *candidate*, as in the paper's figure, so ``z → 0`` keeps the
    own features untouched and ``z → 1`` replaces them with the candidate. The authors' code
    (2020 and 2021) uses the flipped convention ``F_x' = z ⊙ F_x + (1 − z) ⊙ F̃``; their ``z`` is
    our ``1 − z``. Logged ``z`` values are therefore "fraction taken from the candidate".

    Gates are element-wise (per channel and pixel). No convolution has a bias, as in both code
    versions. ``kernel_size`` 1 follows the 2021 code, 3 the 2020 sketch; padding keeps H×W.
    """

    def __init__(self, channels: int, kernel_size: int = 1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise FesaugError(f"ConvFLU kernel size must be odd and positive, e.g. 1 or 3 (got {kernel_size})")
        pad = kernel_size // 2
        self.W_r = nn.Conv2d(2 * channels, channels, kernel_size, padding=pad, bias=False)
        self.W_z = nn.Conv2d(2 * channels, channels, kernel_size, padding=pad, bias=False)
        self.W = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.U = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)

    def exchange(self, f_own: Tensor, f_other: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        both = torch.cat([f_own, f_other], dim=1)
        r = torch.sigmoid(self.W_r(both))
        candidate = torch.tanh(self.W(r * f_other) + self.U(f_own))
        z = torch.sigmoid(self.W_z(both))
        return (1 - z) * f_own + z * candidate, {"r": r, "z": z}


class CrossStitch(SharingUnit):
    """One row of a per-channel cross-stitch: ``F_own' = α_own ⊙ F_own + α_other ⊙ F_other``.

    The pair of units at a level (one per direction) forms the per-channel 2×2 mixing matrix of
    Misra et al. The weights are unconstrained, as in the paper, and start at the convex
    (0.9, 0.1) the paper suggests. The paper also trains α with a larger learning rate; that is
    a choice for the optimiser (the model keeps all units under ``FERSNet.sharing``).
    """

    def __init__(self, channels: int, init_own: float = 0.9, init_other: float = 0.1) -> None:
        super().__init__()
        self.alpha_own = nn.Parameter(torch.full((channels,), float(init_own)))
        self.alpha_other = nn.Parameter(torch.full((channels,), float(init_other)))

    def exchange(self, f_own: Tensor, f_other: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        own = self.alpha_own.view(1, -1, 1, 1)
        other = self.alpha_other.view(1, -1, 1, 1)
        return own * f_own + other * f_other, {"own": self.alpha_own, "other": self.alpha_other}


class AWSUnit(SharingUnit):
    """Adaptive weights sharing, a **reconstruction** of AWS-Net's unit (Wang et al., ICIP 2019).

    Only the abstract is public: a unit after each layer pair learns "where and to what extent"
    one task borrows from the other. Our reading, which is a guess and not the paper's equations:

        logits = a + g(GAP([F_own, F_other]))        a ∈ R^{C×2} static, g a small MLP
        (w_own, w_other) = softmax(logits) over {own, other}, per sample and channel
        F_own' = w_own ⊙ F_own + w_other ⊙ F_other

    * "to what extent": the softmax keeps the mix convex, unlike cross-stitch.
    * "where": a separate weight per channel, and per sample through ``g``.
    * ``a`` starts at the cross-stitch (0.9, 0.1) split; ``g``'s last layer is zero-initialised,
      so the unit starts as a static convex cross-stitch and learns input dependence only if
      it helps.
    """

    def __init__(self, channels: int, init_own: float = 0.9, reduction: int = 4) -> None:
        super().__init__()
        if not 0.0 < init_own < 1.0:
            raise FesaugError(f"AWS init_own must be strictly between 0 and 1 (got {init_own})")
        self.logits = nn.Parameter(torch.tensor([math.log(init_own), math.log(1.0 - init_own)]).repeat(channels, 1))
        hidden = max(channels // reduction, 8)
        self.adapt = nn.Sequential(
            nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 2 * channels)
        )
        nn.init.zeros_(self.adapt[-1].weight)
        nn.init.zeros_(self.adapt[-1].bias)

    def weights(self, f_own: Tensor, f_other: Tensor) -> Tensor:
        """Mixing weights ``(B, C, 2)`` over (own, other); each ``[b, c, :]`` sums to 1."""
        pooled = torch.cat([f_own, f_other], dim=1).mean(dim=(2, 3))
        delta = self.adapt(pooled).view(f_own.shape[0], -1, 2)
        return F.softmax(self.logits + delta, dim=-1)

    def exchange(self, f_own: Tensor, f_other: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        w = self.weights(f_own, f_other)
        w_own, w_other = w[..., 0], w[..., 1]
        mixed = w_own[:, :, None, None] * f_own + w_other[:, :, None, None] * f_other
        return mixed, {"own": w_own, "other": w_other}


def make_sharing_unit(kind: str, channels: int, kernel_size: int = 1) -> SharingUnit:
    """Build one sharing unit. ``kernel_size`` only applies to ``convflu``."""
    if kind == "convflu":
        return ConvFLU(channels, kernel_size)
    if kind == "cross-stitch":
        return CrossStitch(channels)
    if kind == "aws":
        return AWSUnit(channels)
    if kind in SHARING_KINDS:
        raise FesaugError(f"sharing kind {kind!r} has no unit: the model builds it structurally")
    raise FesaugError(f"unknown sharing kind {kind!r}; choose one of {', '.join(SHARING_KINDS)}")


def apply_sharing(unit: SharingUnit, own: Tensor, other: Tensor, gates: dict[str, Tensor] | None, key: str) -> Tensor:
    """``unit`` applied to ``own`` with the ``other`` task's features; with ``gates`` (a dict), its
    gate values are recorded there under ``key``/name."""
    if gates is None:
        return unit(own, other)
    updated, values = unit.exchange(own, other)
    gates.update({f"{key}/{name}": value for name, value in values.items()})
    return updated
