"""Models: FERSNet (joint FER + FES), its conditional PatchGAN discriminator, sharing units."""

from .fersnet import (
    PRESETS,
    Discriminator,
    FERSNet,
    FERSNetConfig,
    FERSNetOutput,
    ModelConfigError,
    count_flops,
    count_parameters,
    from_model_range,
    to_model_range,
)
from .sharing import (
    SHARING_KINDS,
    SHARING_UNIT_KINDS,
    AWSUnit,
    ConvFLU,
    CrossStitch,
    SharingUnit,
    make_sharing_unit,
)

__all__ = [
    "PRESETS",
    "SHARING_KINDS",
    "SHARING_UNIT_KINDS",
    "AWSUnit",
    "ConvFLU",
    "CrossStitch",
    "Discriminator",
    "FERSNet",
    "FERSNetConfig",
    "FERSNetOutput",
    "ModelConfigError",
    "SharingUnit",
    "count_flops",
    "count_parameters",
    "from_model_range",
    "make_sharing_unit",
    "to_model_range",
]
