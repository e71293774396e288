"""Balancing targets: how many images each class should have, and how many that takes to make.

:func:`resolve_targets` turns a target rule (``target_per_class``, a number or ``"max"``; a
``sampling_strategy`` in imbalanced-learn's vocabulary: a name, a ratio, a mapping or a callable;
per-class ``targets``) and the real counts into one :class:`Targets`, as imbalanced-learn
resolves its ``sampling_strategy`` once into per-class counts. Everything downstream reads that:
``fesaug balance``'s plan, ``fesaug evaluate``'s oversampling, ``fesaug audit``'s shortfall,
:class:`fesaug.FESampler`. The rule itself is validated here once
(:func:`check_target_rule`), for the config, the command line and the resolution alike.

Light on purpose (numpy, no torch): :mod:`fesaug.audit.report` imports it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fesaug.utils.errors import FesaugError, UsageError

STRATEGIES = ("auto", "not-majority", "not-minority", "minority", "all")
# imbalanced-learn's forms of sampling_strategy: a name, a ratio, class -> count, or a callable of y.
Strategy = str | float | Mapping[Hashable, int] | Callable[..., Mapping[Hashable, int]]


@dataclass(frozen=True, eq=False)
class Targets(Mapping[Hashable, int]):
    """The wanted number of images per class (a mapping class → count), with the ``counts`` it was
    resolved from and what reaching it takes: ``to_generate`` images to synthesize and
    ``to_remove`` ones to drop (under-sampling), per class."""

    counts: Mapping[Hashable, int]
    wanted: Mapping[Hashable, int]

    def __getitem__(self, name: Hashable) -> int:
        return self.wanted[name]

    def __iter__(self) -> Iterator[Hashable]:
        return iter(self.wanted)

    def __len__(self) -> int:
        return len(self.wanted)

    @property
    def to_generate(self) -> dict[Hashable, int]:
        return {c: max(0, n - self.counts[c]) for c, n in self.wanted.items()}

    @property
    def to_remove(self) -> dict[Hashable, int]:
        return {c: max(0, self.counts[c] - n) for c, n in self.wanted.items()}

    def to_synthesize(self, synthetic_share: float = 1.0) -> dict[Hashable, int]:
        """Images to synthesize per class when synthesis fills only ``synthetic_share`` of each
        shortfall and repeats of the class's real images fill the rest (``fesaug balance
        --synthetic-share``). A class without real images cannot be repeated, so synthesis
        fills all of its shortfall."""
        check_synthetic_share(synthetic_share)
        return {c: (n if not self.counts[c] else round(synthetic_share * n)) for c, n in self.to_generate.items()}


def check_target_per_class(value: int | str) -> int | str:
    """``value`` if it is a positive number or ``"max"``, else a :class:`UsageError`."""
    if value != "max" and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError(f"--target-per-class must be a positive number or 'max', got {value!r}")
    return value


def check_synthetic_share(share: float) -> float:
    """``share`` if it lies in (0, 1], else a :class:`UsageError`."""
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
        raise UsageError(
            f"--synthetic-share must lie in (0, 1] (the share of each shortfall synthesis fills), got {share!r}"
        )
    return float(share)


def check_strategy(name: str) -> str:
    """A sampling strategy in its canonical spelling (``not minority`` → ``not-minority``)."""
    strategy = name.strip().lower().replace(" ", "-").replace("_", "-")
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown sampling strategy {name!r}; choose one of {', '.join(STRATEGIES)}")
    return strategy


def check_target_rule(
    target_per_class: int | str, sampling_strategy: Strategy | None, targets: Mapping[Hashable, int]
) -> None:
    """Refuse a rule no manifest could resolve; what needs the counts is checked by :func:`resolve_targets`."""
    check_target_per_class(target_per_class)
    if isinstance(sampling_strategy, str):
        check_strategy(sampling_strategy)
    elif isinstance(sampling_strategy, Mapping):
        _check_counts(sampling_strategy, "sampling_strategy")
    elif isinstance(sampling_strategy, (int, float)) and not isinstance(sampling_strategy, bool):
        if not 0 < sampling_strategy <= 1:
            raise UsageError(
                f"a ratio sampling_strategy must lie in (0, 1] (the minority class's share of the majority's count "
                f"after resampling), got {sampling_strategy!r}"
            )
    elif sampling_strategy is not None and not callable(sampling_strategy):
        raise UsageError(
            f"sampling_strategy must be one of {', '.join(STRATEGIES)}, a ratio in (0, 1], a mapping class -> "
            f"count or a callable returning one; got {sampling_strategy!r}"
        )
    _check_counts(targets, "--target")


def _check_counts(counts: Mapping[Hashable, int], what: str) -> None:
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            where = f"--target {name}={n!r}" if what == "--target" else f"{what}[{name!r}] = {n!r}"
            raise UsageError(f"{where}: the count must be a whole number >= 0")


def describe_target(target_per_class: int | str) -> str:
    """The rule ``target_per_class`` in words, for reports."""
    return (
        "every class to the largest class" if target_per_class == "max" else f"every class to {target_per_class} images"
    )


def resolve_targets(
    counts: Mapping[Hashable, int],
    *,
    target_per_class: int | str = "max",
    sampling_strategy: Strategy | None = None,
    targets: Mapping[Hashable, int] | None = None,
    undersample: bool = False,
    labels: Sequence[Hashable] | np.ndarray | None = None,
) -> Targets:
    """The wanted number of images per class, from the real ``counts`` of the working set.

    ``sampling_strategy`` takes every form of imbalanced-learn's over-samplers:

    * a name selecting the classes to raise: ``minority`` (the smallest class),
      ``not-minority``, ``not-majority``, ``all``, and ``auto`` (= ``not-majority``). Selected
      classes go up to ``target_per_class`` (``"max"``: the largest count); the others keep theirs;
    * a ratio in (0, 1], for two classes only: the minority class up to ``int(ratio × majority)``;
    * a mapping class → wanted count; classes it does not name keep their count;
    * a callable returning such a mapping, called with ``labels`` (one class per image; by default
      each class repeated by its count), as imbalanced-learn calls it with ``y``.

    ``targets`` (class → count) override all of these. A count below a class's real count is an
    error unless ``undersample``. Classes are usually names; any hashable labels work (the keys of
    ``counts``), which is how :class:`fesaug.FESampler` resolves a ``y`` of integers.
    """
    counts = dict(counts)
    if not counts:
        raise FesaugError("there are no classes to balance")
    if callable(sampling_strategy) and not isinstance(sampling_strategy, Mapping):
        sampling_strategy = _call_strategy(sampling_strategy, counts, labels)
    check_target_rule(target_per_class, sampling_strategy, targets or {})
    if isinstance(sampling_strategy, Mapping):
        wanted = {**counts, **_known(sampling_strategy, counts, "sampling_strategy")}
    elif isinstance(sampling_strategy, (int, float)):
        wanted = _ratio_targets(counts, float(sampling_strategy))
    else:
        wanted = _selected_targets(counts, target_per_class, sampling_strategy)
    wanted.update(_known(targets or {}, counts, "--target"))
    below = {c: (wanted[c], counts[c]) for c in counts if wanted[c] < counts[c]}
    if below and not undersample:
        c, (want, have) = next(iter(below.items()))
        more = f" (and {len(below) - 1} more class(es))" if len(below) > 1 else ""
        if c in (targets or {}) or isinstance(sampling_strategy, (str, type(None))):
            raise UsageError(
                f"the target for {c!r} ({want}) is below its {have} real images{more}; raise the target, or pass "
                "--undersample to drop real images down to it"
            )
        raise UsageError(
            f"sampling_strategy asks for {want} images of {c!r}, below its {have} real ones{more}; an over-sampler "
            f"only adds images: ask for at least {have}"
        )
    return Targets(counts=counts, wanted=wanted)


def _selected_targets(counts: dict[Hashable, int], target_per_class: int | str, name: str | None) -> dict:
    strategy = check_strategy(name or ("auto" if target_per_class == "max" else "all"))
    # Ties go to the first class in label order, as imbalanced-learn's max()/min() over a dict do.
    majority = max(counts, key=counts.__getitem__)
    minority = min(counts, key=counts.__getitem__)
    selected = {
        "auto": set(counts) - {majority},
        "not-majority": set(counts) - {majority},
        "not-minority": set(counts) - {minority},
        "minority": {minority},
        "all": set(counts),
    }[strategy]
    level = max(counts.values()) if target_per_class == "max" else int(target_per_class)
    return {c: (level if c in selected else n) for c, n in counts.items()}


def _ratio_targets(counts: dict[Hashable, int], ratio: float) -> dict:
    """imbalanced-learn's float strategy: the minority class up to ``int(ratio × majority)``."""
    if len(counts) != 2:
        raise UsageError(
            f"a ratio sampling_strategy ({ratio:g}) is for two classes; these data have {len(counts)}: give a "
            "mapping class -> count instead"
        )
    majority = max(counts, key=counts.__getitem__)
    (minority,) = set(counts) - {majority}
    want = int(counts[majority] * ratio)
    if want <= counts[minority]:
        raise UsageError(
            f"sampling_strategy={ratio:g} asks for {want} images of {minority!r} ({ratio:g} x the {counts[majority]} "
            f"of {majority!r}), no more than its {counts[minority]} real ones; raise the ratio"
        )
    return {majority: counts[majority], minority: want}


def _call_strategy(
    strategy: Callable[..., Mapping[Hashable, int]], counts: dict[Hashable, int], labels: Sequence | np.ndarray | None
) -> Mapping[Hashable, int]:
    y = np.repeat(np.array(list(counts), dtype=object), list(counts.values())) if labels is None else labels
    asked = strategy(y)
    if not isinstance(asked, Mapping):
        raise UsageError(
            f"a callable sampling_strategy must return a mapping class -> wanted count, but {strategy!r} returned "
            f"{type(asked).__name__}"
        )
    return asked


def _known(asked: Mapping[Hashable, int], counts: Mapping[Hashable, int], what: str) -> dict[Hashable, int]:
    """``asked`` with its counts as ints, refusing classes the data do not have."""
    unknown = [c for c in asked if c not in counts]
    if unknown:
        where = f"--target names class {unknown[0]!r}" if what == "--target" else f"{what} names {unknown[0]!r}"
        raise UsageError(
            f"{where}, which this manifest does not have; classes: {', '.join(map(str, counts))}"
            if what == "--target"
            else f"{where}, a class the data do not have; classes: {', '.join(map(repr, counts))}"
        )
    return {c: int(n) for c, n in asked.items()}
