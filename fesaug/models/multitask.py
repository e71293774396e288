"""Joint emotion recognition and facial action unit (AU) detection, after AWS-Net (issue #6).

Wang, Zeng, Shan, Chen, "... Adaptively Weights Sharing Network ...", ICIP 2019: two task
networks, with a sharing unit after each layer pair that learns where and how much each task
borrows from the other, trained on data labelled with *only* emotions or *only* AUs. Only the
abstract is public; see ``AWSUnit`` for our reconstruction of the unit. Layout (L = len(widths))::

    image ─┬─ emotion stem ─ emo block 1 ─╳─ … ─ emo block L-1 ─╳─ emotion head ─→ (B, num_classes)
           └─ AU stem ────── AU block 1 ──╳─ … ─ AU block L-1 ──╳─ AU head ──────→ (B, num_aus)

``╳`` is a pair of sharing units as in FERSNet (one per direction, own weights, both reading the
pre-exchange features). ``sharing="hard"`` runs one encoder under both heads; ``"none"`` builds
two independent networks, i.e. the two single-task baselines in one module.

``multitask_loss`` lets every sample contribute only the losses it has labels for, so emotion-only
and AU-only datasets can be mixed in one batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fesaug.models.blocks import FERHead, check_images, encoder_block, stem_block
from fesaug.models.fersnet_config import NORMS, ModelConfigError
from fesaug.models.sharing import SHARING_KINDS, SHARING_UNIT_KINDS, apply_sharing, make_sharing_unit
from fesaug.utils.errors import FesaugError

TASKS: tuple[str, ...] = ("emotion", "au")


@dataclass(frozen=True)
class EmotionAUConfig:
    """Everything needed to rebuild an ``EmotionAUNet``; ``asdict`` round-trips.

    ``widths[0]`` is the stems' width, each further entry one encoder level of both networks
    followed by one pair of sharing units; each level (stem included) halves the resolution.
    The whole network uses ``norm``; with BatchNorm a 1x1 bottleneck is fine.
    """

    image_size: int = 64
    in_channels: int = 1
    num_classes: int = 7
    num_aus: int = 16
    widths: tuple[int, ...] = (16, 32, 64, 128)
    sharing: str = "aws"
    norm: str = "batch"
    flu_kernel_size: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(self.widths))  # lists come back from JSON
        if self.sharing not in SHARING_KINDS:
            raise ModelConfigError(f"unknown sharing kind {self.sharing!r}; choose one of {', '.join(SHARING_KINDS)}")
        if self.norm not in NORMS:
            raise ModelConfigError(f"norm must be one of {', '.join(NORMS)} (got {self.norm!r})")
        if len(self.widths) < 2 or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ModelConfigError(
                f"widths must be at least 2 positive integers (stem + one level), got {self.widths!r}"
            )
        if self.in_channels < 1 or self.num_aus < 1:
            raise ModelConfigError(
                f"in_channels and num_aus must be at least 1 (got {self.in_channels}, {self.num_aus})"
            )
        if self.num_classes < 2:
            raise ModelConfigError(f"num_classes must be at least 2 (got {self.num_classes})")
        if self.flu_kernel_size < 1 or self.flu_kernel_size % 2 == 0:
            raise ModelConfigError(f"flu_kernel_size must be odd, e.g. 1 or 3 (got {self.flu_kernel_size})")
        factor = 2 ** len(self.widths)
        smallest = 2 if self.norm == "instance" else 1  # InstanceNorm needs more than one pixel
        if self.image_size % factor or self.image_size // factor < smallest:
            raise ModelConfigError(
                f"image_size {self.image_size} must be a multiple of 2**{len(self.widths)} = {factor} "
                f"(one halving per width in {self.widths}) and at least {smallest * factor} with norm={self.norm!r}"
            )


@dataclass
class MultiTaskOutput:
    """``emotion_logits`` (B, num_classes); ``au_logits`` (B, num_aus), multi-label, no sigmoid;
    ``gates`` keyed ``"level{l}/{emotion|au}<-{au|emotion}/{name}"`` when requested (not detached)."""

    emotion_logits: Tensor
    au_logits: Tensor
    gates: dict[str, Tensor] | None = None


class EmotionAUNet(nn.Module):
    """Two task networks linked by sharing units; see the module docstring."""

    def __init__(self, config: EmotionAUConfig | None = None) -> None:
        super().__init__()
        self.config = c = config or EmotionAUConfig()
        w = c.widths

        def encoder() -> nn.ModuleList:  # [stem, block 1, …, block L-1]
            return nn.ModuleList(
                [stem_block(c.in_channels, w[0], c.norm)]
                + [encoder_block(w[i - 1], w[i], c.norm) for i in range(1, len(w))]
            )

        # "hard": one encoder under both heads; every other kind: one encoder per task.
        self.encoders = nn.ModuleDict({"shared": encoder()} if c.sharing == "hard" else {t: encoder() for t in TASKS})
        # sharing[t][i] updates task t's features from the other task's after block i+1.
        self.sharing = (
            nn.ModuleDict(
                {
                    t: nn.ModuleList(make_sharing_unit(c.sharing, w[i], c.flu_kernel_size) for i in range(1, len(w)))
                    for t in TASKS
                }
            )
            if c.sharing in SHARING_UNIT_KINDS
            else None
        )
        self.heads = nn.ModuleDict(
            {"emotion": FERHead(w[-1], c.num_classes, c.norm), "au": FERHead(w[-1], c.num_aus, c.norm)}
        )

    def forward(self, x: Tensor, return_gates: bool = False) -> MultiTaskOutput:
        """Emotion and AU logits for images ``x`` (B, C, S, S), scaled to [-1, 1]."""
        check_images(x, self.config)  # type: ignore[arg-type]  # duck-typed: image_size, in_channels
        gates: dict[str, Tensor] | None = {} if return_gates else None
        if "shared" in self.encoders:
            emo = x
            for layer in self.encoders["shared"]:
                emo = layer(emo)
            au = emo
        else:
            emo_layers, au_layers = self.encoders["emotion"], self.encoders["au"]
            emo, au = emo_layers[0](x), au_layers[0](x)
            for level in range(1, len(emo_layers)):
                emo, au = emo_layers[level](emo), au_layers[level](au)
                if self.sharing is not None:  # simultaneous: both units read pre-exchange features
                    emo, au = (
                        apply_sharing(self.sharing["emotion"][level - 1], emo, au, gates, f"level{level}/emotion<-au"),
                        apply_sharing(self.sharing["au"][level - 1], au, emo, gates, f"level{level}/au<-emotion"),
                    )
        return MultiTaskOutput(self.heads["emotion"](emo), self.heads["au"](au), gates)


def multitask_loss(
    out: MultiTaskOutput,
    labels: Tensor,
    au_targets: Tensor,
    au_mask: Tensor | None = None,
    pos_weight: Tensor | None = None,
    weights: tuple[float, float] = (1.0, 1.0),
) -> dict[str, Tensor]:
    """Losses for a batch that may mix emotion-only, AU-only and fully labelled samples.

    * ``labels`` (B,) long, ``-1`` = no emotion label. ``"emotion"`` = cross-entropy averaged
      over the rows that have a label.
    * ``au_targets`` (B, num_aus) in [0, 1], NaN = unknown (a NaN row = no AU labels);
      ``au_mask`` (B, num_aus) bool, optional, False marks further unknown entries.
      ``"au"`` = BCE-with-logits (``pos_weight`` per AU, see ``au_pos_weight``) averaged over
      the known entries, so every known AU label weighs the same wherever it comes from.
    * ``"total"`` = ``weights[0] * emotion + weights[1] * au``.

    A term without any labelled entry in the batch is exactly 0 with zero gradient. Unknown
    entries are replaced by a dummy target and their loss zeroed with ``torch.where`` (not
    multiplied by 0), so they can never send NaN gradients back.
    """
    emo_logits, au_logits = out.emotion_logits, out.au_logits
    b = emo_logits.shape[0]
    if labels.shape != (b,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise FesaugError(
            f"labels must be integer class ids of shape ({b},) with -1 = unknown, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    if b and (int(labels.min()) < -1 or int(labels.max()) >= emo_logits.shape[1]):
        raise FesaugError(
            f"labels must lie in [-1, {emo_logits.shape[1] - 1}], got {int(labels.min())}..{int(labels.max())}"
        )
    if au_targets.shape != au_logits.shape or not au_targets.is_floating_point():
        raise FesaugError(
            f"au_targets must be float of shape {tuple(au_logits.shape)} with NaN = unknown, "
            f"got {au_targets.dtype} {tuple(au_targets.shape)}"
        )
    if au_mask is not None and au_mask.shape != au_targets.shape:
        raise FesaugError(f"au_mask must have shape {tuple(au_targets.shape)}, got {tuple(au_mask.shape)}")

    has_label = labels >= 0
    ce = F.cross_entropy(emo_logits, torch.where(has_label, labels, 0), reduction="none")
    emotion = torch.where(has_label, ce, 0.0).sum() / has_label.sum().clamp(min=1)

    known = ~torch.isnan(au_targets)
    if au_mask is not None:
        known &= au_mask.to(torch.bool)
    safe = torch.where(known, au_targets, 0.0).to(au_logits.dtype)
    if pos_weight is not None:
        pos_weight = pos_weight.to(device=au_logits.device, dtype=au_logits.dtype)
    bce = F.binary_cross_entropy_with_logits(au_logits, safe, pos_weight=pos_weight, reduction="none")
    au = torch.where(known, bce, 0.0).sum() / known.sum().clamp(min=1)
    return {"emotion": emotion, "au": au, "total": weights[0] * emotion + weights[1] * au}


def au_pos_weight(occurrence: np.ndarray | Tensor, max_weight: float = 100.0) -> Tensor:
    """Per-AU ``pos_weight`` for ``multitask_loss``: negatives / positives over the known entries.

    ``occurrence`` (N, num_aus) holds 0/1 with NaN = unknown. Clamped to [1, ``max_weight``]:
    rare AUs get up-weighted instead of being learned as "always off", frequent ones are never
    down-weighted, and an AU without positives gets ``max_weight``.
    """
    occ = torch.as_tensor(np.asarray(occurrence, dtype=np.float64))
    if occ.dim() != 2:
        raise FesaugError(f"occurrence must be a 2-D (samples, AUs) array, got shape {tuple(occ.shape)}")
    known = ~torch.isnan(occ)
    pos = torch.where(known, occ, 0.0).sum(dim=0)
    neg = known.sum(dim=0) - pos
    ratio = torch.where(pos > 0, neg / pos.clamp(min=1e-12), torch.full_like(pos, max_weight))
    return ratio.clamp(1.0, max_weight).float()


def au_metrics(
    scores: Tensor | np.ndarray, targets: Tensor | np.ndarray, threshold: float = 0.5, *, from_logits: bool = False
) -> dict[str, object]:
    """Per-AU F1 (``"f1"``, NaN for an AU without known labels) and ``"mean_f1"`` over the rest.

    ``scores`` are probabilities (or logits with ``from_logits=True``), predicted positive when
    ``>= threshold``; ``targets`` are 0/1 with NaN = unknown, and unknown entries are skipped.
    F1 = 2TP / (2TP + FP + FN), and 0 when an AU has neither true nor predicted positives, as
    ``sklearn.metrics.f1_score(..., zero_division=0)``.
    """
    s = torch.as_tensor(scores).detach().cpu().double()
    t = torch.as_tensor(targets).detach().cpu().double()
    if s.shape != t.shape or s.dim() != 2:
        raise FesaugError(f"scores and targets must both be (N, num_aus), got {tuple(s.shape)} and {tuple(t.shape)}")
    known = ~torch.isnan(t)
    pred = (torch.sigmoid(s) if from_logits else s) >= threshold
    true = torch.where(known, t, 0.0) > 0.5
    tp = (pred & true & known).sum(0).double()
    fp = (pred & ~true & known).sum(0).double()
    fn = (~pred & true & known).sum(0).double()
    denom = 2 * tp + fp + fn
    f1 = torch.where(denom > 0, 2 * tp / denom.clamp(min=1), 0.0)
    f1 = torch.where(known.any(0), f1, float("nan")).numpy()
    valid = ~np.isnan(f1)
    return {"f1": f1, "mean_f1": float(f1[valid].mean()) if valid.any() else float("nan")}
