"""Synthesis: FERSNet's training (config, loop, checkpoints) and the trained generator."""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.synthesis.config import TrainConfig
    from fesaug.synthesis.generator import Generator, load_generator
    from fesaug.synthesis.training import TrainResult, train

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
