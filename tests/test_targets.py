"""Balancing targets: imbalanced-learn's vocabulary resolved once into per-class counts."""

from __future__ import annotations

import pytest

from fesaug.balance.targets import resolve_targets
from fesaug.utils.errors import UsageError


def test_targets_in_imbalanced_learn_vocabulary() -> None:
    counts = {"a": 10, "b": 4, "c": 7}
    assert resolve_targets(counts) == {"a": 10, "b": 10, "c": 10}  # max, auto = not majority
    assert resolve_targets(counts, target_per_class=12) == {"a": 12, "b": 12, "c": 12}  # a number: all
    assert resolve_targets(counts, sampling_strategy="minority") == {"a": 10, "b": 10, "c": 7}
    assert resolve_targets(counts, sampling_strategy="not minority") == {"a": 10, "b": 4, "c": 10}
    assert resolve_targets(counts, target_per_class=12, sampling_strategy="not_majority") == {"a": 10, "b": 12, "c": 12}
    assert resolve_targets(counts, targets={"b": 5}) == {"a": 10, "b": 5, "c": 10}
    assert resolve_targets(counts, target_per_class=6, undersample=True) == {"a": 6, "b": 6, "c": 6}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"target_per_class": 6},
            "below its 10 real images (and 1 more class(es)); raise the target, or pass --undersample",
        ),
        ({"targets": {"c": 3}}, "the target for 'c' (3) is below its 7 real images"),
        ({"targets": {"z": 3}}, "class 'z', which this manifest does not have"),
        ({"sampling_strategy": "majority"}, "unknown sampling strategy 'majority'"),
    ],
)
def test_target_errors_say_what_to_do(kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        resolve_targets({"a": 10, "b": 4, "c": 7}, **kwargs)


def test_targets_say_what_reaching_them_takes() -> None:
    t = resolve_targets({"a": 10, "b": 4, "c": 7}, target_per_class=6, undersample=True)
    assert t.counts == {"a": 10, "b": 4, "c": 7}
    assert t.to_generate == {"a": 0, "b": 2, "c": 0}
    assert t.to_remove == {"a": 4, "b": 0, "c": 1}


def test_synthetic_share_splits_each_shortfall_and_a_class_without_real_images_is_all_synthetic() -> None:
    t = resolve_targets({"a": 10, "b": 4, "c": 0, "d": 7}, target_per_class=10)
    assert t.to_synthesize() == t.to_generate == {"a": 0, "b": 6, "c": 10, "d": 3}
    assert t.to_synthesize(0.5) == {"a": 0, "b": 3, "c": 10, "d": 2}
    with pytest.raises(UsageError, match="--synthetic-share"):
        t.to_synthesize(0.0)
