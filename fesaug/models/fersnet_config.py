"""FERSNet's configuration: :class:`FERSNetConfig`, its presets and its checks.

Kept apart from the networks (:mod:`fesaug.models.fersnet`) so that training configurations, run
folders and checkpoints can read and validate a model's settings without building it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

from fesaug.models.sharing import SHARING_KINDS
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
    ``dataclasses.asdict(config)`` round-trips through ``FERSNetConfig(**d)`` (for checkpoints,
    once :mod:`fesaug.synthesis.records` has read them).
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
