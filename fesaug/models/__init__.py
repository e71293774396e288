"""Models: FERSNet (joint FER + FES), its conditional PatchGAN discriminator, sharing units,
EmotionAUNet (joint emotion + AU, after AWS-Net)."""

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
from .multitask import (
    EmotionAUConfig,
    EmotionAUNet,
    MultiTaskOutput,
    au_metrics,
    au_pos_weight,
    multitask_loss,
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
    "EmotionAUConfig",
    "EmotionAUNet",
    "FERSNet",
    "FERSNetConfig",
    "FERSNetOutput",
    "ModelConfigError",
    "MultiTaskOutput",
    "SharingUnit",
    "au_metrics",
    "au_pos_weight",
    "count_flops",
    "count_parameters",
    "from_model_range",
    "make_sharing_unit",
    "multitask_loss",
    "to_model_range",
]
