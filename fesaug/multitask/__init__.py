"""Emotion + action-unit training after AWS-Net (``fesaug train --tasks emotion,au``)."""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.multitask.training import MultiTaskConfig, MultiTaskResult, load_emotion_au, train_multitask

__all__ = ["MultiTaskConfig", "MultiTaskResult", "load_emotion_au", "train_multitask"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, ".training"))
