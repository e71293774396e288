"""Emotion + action-unit training after AWS-Net (``fesaug train --tasks emotion,au``)."""

from fesaug.utils.lazy import lazy_exports

__all__ = ["MultiTaskConfig", "MultiTaskResult", "load_emotion_au", "train_multitask"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, ".training"))
