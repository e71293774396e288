"""Balancing targets: how many images each class should have, and how many that takes to make.

:func:`resolve_targets` turns a target rule (``target_per_class``, a number or ``"max"``; a
``sampling_strategy`` in imbalanced-learn's vocabulary; per-class ``targets``) and the real
counts into one :class:`Targets`, as imbalanced-learn resolves its ``sampling_strategy`` once
into per-class counts. Everything downstream reads that: ``fesaug balance``'s plan, ``fesaug
evaluate``'s oversampling, ``fesaug audit``'s shortfall. The rule itself is validated here once
(:func:`check_target_rule`), for the config, the command line and the resolution alike.

Light on purpose (no torch): :mod:`fesaug.audit.report` imports it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from fesaug.utils.errors import FesaugError, UsageError

STRATEGIES = ("auto", "not-majority", "not-minority", "minority", "all")


@dataclass(frozen=True, eq=False)
class Targets(Mapping[str, int]):
    """The wanted number of images per class (a mapping class → count), with the ``counts`` it was
    resolved from and what reaching it takes: ``to_generate`` images to synthesize and
    ``to_remove`` ones to drop (under-sampling), per class."""

    counts: Mapping[str, int]
    wanted: Mapping[str, int]

    def __getitem__(self, name: str) -> int:
        return self.wanted[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.wanted)

    def __len__(self) -> int:
        return len(self.wanted)

    @property
    def to_generate(self) -> dict[str, int]:
        return {c: max(0, n - self.counts[c]) for c, n in self.wanted.items()}

    @property
    def to_remove(self) -> dict[str, int]:
        return {c: max(0, self.counts[c] - n) for c, n in self.wanted.items()}

    def to_synthesize(self, synthetic_share: float = 1.0) -> dict[str, int]:
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


def check_target_rule(target_per_class: int | str, sampling_strategy: str | None, targets: Mapping[str, int]) -> None:
    """Refuse a rule no manifest could resolve; what needs the counts is checked by :func:`resolve_targets`."""
    check_target_per_class(target_per_class)
    if sampling_strategy is not None:
        check_strategy(sampling_strategy)
    for name, n in targets.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise UsageError(f"--target {name}={n!r}: the count must be a whole number >= 0")


def describe_target(target_per_class: int | str) -> str:
    """The rule ``target_per_class`` in words, for reports."""
    return (
        "every class to the largest class" if target_per_class == "max" else f"every class to {target_per_class} images"
    )


def resolve_targets(
    counts: Mapping[str, int],
    *,
    target_per_class: int | str = "max",
    sampling_strategy: str | None = None,
    targets: Mapping[str, int] | None = None,
    undersample: bool = False,
) -> Targets:
    """The wanted number of images per class, from the real ``counts`` of the working set.

    ``sampling_strategy`` selects the classes to raise, as imbalanced-learn's over-samplers do:
    ``minority`` (the smallest class), ``not-minority``, ``not-majority``, ``all``, and ``auto``
    (= ``not-majority``). Selected classes go up to ``target_per_class`` (``"max"``: the
    largest count); the others keep their count. ``targets`` (class → count) override both.
    """
    counts = dict(counts)
    if not counts:
        raise FesaugError("there are no classes to balance")
    check_target_rule(target_per_class, sampling_strategy, targets or {})
    strategy = check_strategy(sampling_strategy or ("auto" if target_per_class == "max" else "all"))
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
    wanted = {c: (level if c in selected else n) for c, n in counts.items()}
    for name, n in (targets or {}).items():
        if name not in counts:
            raise UsageError(
                f"--target names class {name!r}, which this manifest does not have; classes: {', '.join(counts)}"
            )
        wanted[name] = int(n)
    below = {c: (wanted[c], counts[c]) for c in counts if wanted[c] < counts[c]}
    if below and not undersample:
        c, (want, have) = next(iter(below.items()))
        raise UsageError(
            f"the target for {c!r} ({want}) is below its {have} real images"
            + (f" (and {len(below) - 1} more class(es))" if len(below) > 1 else "")
            + "; raise the target, or pass --undersample to drop real images down to it"
        )
    return Targets(counts=counts, wanted=wanted)
