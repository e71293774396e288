"""Synthesis: FERSNet's training (config, loop, checkpoints) and the trained generator."""

from fesaug.utils.lazy import lazy_exports

__all__ = ["Generator", "TrainConfig", "TrainResult", "load_generator", "train"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "Generator": ".generator",
        "load_generator": ".generator",
        "TrainConfig": ".config",
        "TrainResult": ".training",
        "train": ".training",
    },
)
