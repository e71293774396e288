"""Evaluate: does balancing help a downstream classifier? Subject-independent k-fold or
cross-dataset, conditions against each other, paired tests, synthesis scores, the report."""

from fesaug.utils.lazy import lazy_exports

__all__ = ["EvaluateConfig", "EvaluateResult", "evaluate"]
__getattr__, __dir__ = lazy_exports(__name__, dict.fromkeys(__all__, ".run"))
