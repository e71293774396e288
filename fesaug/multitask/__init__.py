"""Emotion + action-unit training after AWS-Net (``fesaug train --tasks emotion,au``): its settings
(:mod:`~fesaug.multitask.config`), the labelled faces (:mod:`~fesaug.multitask.data`), the
procedure and inference (:mod:`~fesaug.multitask.training`) and its checkpoint's schema
(:mod:`~fesaug.multitask.records`)."""

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.multitask.config import MultiTaskConfig, MultiTaskResult
    from fesaug.multitask.training import load_emotion_au, train_multitask

__all__ = ["MultiTaskConfig", "MultiTaskResult", "load_emotion_au", "train_multitask"]
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "MultiTaskConfig": ".config",
        "MultiTaskResult": ".config",
        "load_emotion_au": ".training",
        "train_multitask": ".training",
    },
)
