"""The settings of a balance run (:class:`BalanceConfig`) and what it reports (:class:`BalanceResult`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fesaug.balance.targets import check_synthetic_share, check_target_rule
from fesaug.data.splits import check_holdout_folds
from fesaug.models import MAX_INTENSITY
from fesaug.utils.errors import UsageError

SOURCE_ORDERS = ("subjects", "similar")
# How a synthetic row is labelled: all on its target, or a soft label (``target_mass``) that puts
# part of the mass on its source's class, by how strong the edit is (its intensity) or by how far an
# independent judge finds it moved from the source's class toward the target's.
SYNTHETIC_LABELS = ("hard", "soft")
SOFT_LABEL_SOURCES = ("intensity", "judge")
# Expression judges trained elsewhere that can gate synthetic faces (fesaug.judges).
EXTERNAL_JUDGES = ("fer2013",)


def check_intensity(bounds: Sequence[float]) -> tuple[float, float]:
    """``(LOW, HIGH)`` as floats, or a :class:`UsageError` unless 0 <= LOW <= HIGH <= MAX_INTENSITY."""
    values = tuple(float(v) for v in bounds)
    if len(values) != 2 or not 0.0 <= values[0] <= values[1] <= MAX_INTENSITY:
        raise UsageError(
            f"--intensity must be LOW..HIGH with 0 <= LOW <= HIGH <= {MAX_INTENSITY:g} "
            f"(or one number in [0, {MAX_INTENSITY:g}]), got {bounds}"
        )
    return values[0], values[1]


@dataclass(frozen=True)
class BalanceConfig:
    """Settings of one balance run (everything that decides its output).

    ``target_per_class``: every selected class up to this many images, or ``"max"`` (up to the
    largest class). ``sampling_strategy``: which classes are over-sampled, as in imbalanced-learn
    (``auto`` = ``not-majority``; default ``auto`` with ``"max"``, ``all`` with a number).
    ``targets``: per-class counts that override both. A target below a class's real count is an
    error unless ``undersample`` is set, which then drops real rows of that class (at random,
    from the working set). ``holdout_folds``: folds left out of the working set (``None``: the
    generator's held-out fold).
    ``output_size``: side of the synthetic images; ``None`` = the real images' size when they
    all share one square size, else the generator's. ``source_order``: ``subjects`` takes
    sources round-robin over subjects in random order; ``similar`` keeps the round-robin but
    tries first the subjects, and within a subject the images, whose expression the
    checkpoint's FER branch already finds closest to the target (see :func:`plan_sources`).
    ``min_judge_margin``: with a judge, also keep only faces whose judge probability of the target
    exceeds that of the source's class by this much (drops the weakest edits, after ALIA).
    ``max_identity_distance``: keep only faces whose dlib identity embedding lies at most this far
    from the source face's (a face that cannot be aligned fails). ``external_judge``: a classifier
    trained on another dataset (``fer2013``) must give the target at least
    ``min_external_confidence``; classes it does not know (contempt) pass it untouched.
    ``intensity``: ``(LOW, HIGH)``: each candidate's edit is scaled by an intensity drawn
    uniformly from that range (seeded like the jitter; ``intensity`` column), so a class gets
    faces at several strengths of its expression instead of one; ``None`` = the learnt edit (1);
    above 1 (up to ``MAX_INTENSITY``) the edit is exaggerated. ``class_intensity``: a gain per
    target class that multiplies it (a class's edits made stronger or weaker), and
    ``calibrate_intensity``: those gains chosen per class so that the independent judge
    (``judge_checkpoint``) recognises synthetic faces of the class at least as often as real ones,
    both on the generator's validation subjects (:mod:`fesaug.balance.calibrate`).
    ``synthetic_share``: synthesis fills this share of each class's shortfall (rounded), and
    weights on the class's real rows fill the rest, as repeats of them would; ``synthetic_weight``:
    each synthetic row counts this much (below 1: a synthetic face is worth less than a real
    one). With either set, the manifest gets a ``weight`` column (:func:`row_weights`) whose sum
    per class reaches the target; the defaults (1, 1) synthesize every missing image and
    write no weights. ``synthetic_labels="soft"``: each synthetic row gets a ``target_mass`` in
    [0, 1], the share of its label on the target class (the rest on its ``source_label``, as Diff-Mix
    labels a translation by its strength): from its edit's intensity (``min(intensity, 1) **
    soft_gamma``, ``soft_label_source="intensity"``) or from the independent judge
    (``judge_checkpoint``): its probability of the target over that of the target and the source's
    class, to the power ``soft_gamma`` (``"judge"``).
    """

    target_per_class: int | str = "max"
    sampling_strategy: str | None = None
    targets: Mapping[str, int] = field(default_factory=dict)
    undersample: bool = False
    splits: tuple[str, ...] = ("train",)
    holdout_folds: tuple[int, ...] | None = None
    min_confidence: float = 0.5
    max_attempts: int = 5
    seed: int = 0
    batch_size: int = 64
    embed_images: bool = False
    output_size: int | None = None
    au_checkpoint: str | None = None
    min_au_consistency: float = 0.5
    judge_checkpoint: str | None = None
    min_judge_confidence: float = 0.5
    min_judge_margin: float | None = None
    source_order: str = "subjects"
    max_identity_distance: float | None = None
    external_judge: str | None = None
    min_external_confidence: float = 0.5
    intensity: tuple[float, float] | None = None
    class_intensity: Mapping[str, float] = field(default_factory=dict)
    calibrate_intensity: bool = False
    synthetic_share: float = 1.0
    synthetic_weight: float = 1.0
    synthetic_labels: str = "hard"
    soft_label_source: str = "intensity"
    soft_gamma: float = 1.0

    def __post_init__(self) -> None:
        if self.holdout_folds is not None:
            object.__setattr__(self, "holdout_folds", check_holdout_folds(self.holdout_folds, error=UsageError))
        check_target_rule(self.target_per_class, self.sampling_strategy, self.targets)
        _check_ranges(self)
        if self.intensity is not None:
            object.__setattr__(self, "intensity", check_intensity(self.intensity))
        object.__setattr__(self, "class_intensity", _checked_gains(self))
        object.__setattr__(self, "synthetic_share", check_synthetic_share(self.synthetic_share))
        object.__setattr__(self, "synthetic_weight", float(self.synthetic_weight))
        object.__setattr__(self, "soft_gamma", float(self.soft_gamma))
        _check_choices(self)

    def needs_judge(self) -> list[str]:
        """The options set that read the independent judge (``--judge``), which must then be given."""
        return [
            option
            for option, on in (
                ("--calibrate-intensity", self.calibrate_intensity),
                ("--min-judge-margin", self.min_judge_margin is not None),
                ("--soft-label-source judge", self.soft and self.soft_label_source == "judge"),
            )
            if on
        ]

    def check_judge(self, given: bool | None = None) -> None:
        """One clear error when an option needs the judge and none is given (``given``: whether
        one will be, e.g. by ``fesaug evaluate --judge``; default: ``judge_checkpoint`` is set)."""
        needs = self.needs_judge()
        if needs and not (self.judge_checkpoint is not None if given is None else given):
            raise UsageError(f"{needs[0]} reads the independent judge's probabilities; give the judge with --judge")

    @property
    def soft(self) -> bool:
        """Whether synthetic rows get soft labels (a ``target_mass`` column)."""
        return self.synthetic_labels == "soft"

    @property
    def weighted(self) -> bool:
        """Whether the output carries a ``weight`` column (a share or weight below 1)."""
        return self.synthetic_share < 1 or self.synthetic_weight < 1

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["targets"] = dict(self.targets)
        d["class_intensity"] = dict(self.class_intensity)
        return d


# Settings that must lie in [0, 1], by option name.
_SHARES = ("min_confidence", "min_judge_confidence", "min_au_consistency", "min_external_confidence")


def _check_ranges(c: BalanceConfig) -> None:
    for name in _SHARES:
        if not 0.0 <= getattr(c, name) <= 1.0:
            raise UsageError(f"--{name.replace('_', '-')} must lie in [0, 1], got {getattr(c, name)}")
    if c.max_identity_distance is not None and not c.max_identity_distance > 0:
        raise UsageError(
            "--max-identity-distance must be above 0 (dlib's same-person threshold is 0.6), got "
            f"{c.max_identity_distance}"
        )
    if isinstance(c.synthetic_weight, bool) or not 0 < c.synthetic_weight <= 1:
        raise UsageError(
            f"--synthetic-weight must lie in (0, 1] (what one synthetic image counts against a real one), got "
            f"{c.synthetic_weight!r}"
        )
    for name in ("max_attempts", "batch_size"):
        if getattr(c, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(c, name)}")
    if c.output_size is not None and c.output_size < 8:
        raise UsageError(f"--output-size must be at least 8 pixels, got {c.output_size}")
    if isinstance(c.soft_gamma, bool) or not 0 < c.soft_gamma <= 10:
        raise UsageError(f"--soft-gamma must lie in (0, 10], got {c.soft_gamma!r}")
    if c.min_judge_margin is not None and not -1 <= c.min_judge_margin <= 1:
        raise UsageError(f"--min-judge-margin must lie in [-1, 1], got {c.min_judge_margin}")


def _checked_gains(c: BalanceConfig) -> dict[str, float]:
    gains = {str(name): float(g) for name, g in dict(c.class_intensity).items()}
    bad = [f"{name}={g:g}" for name, g in gains.items() if not 0 < g <= MAX_INTENSITY]
    if bad:
        raise UsageError(f"--class-intensity gains must lie in (0, {MAX_INTENSITY:g}], got {', '.join(bad)}")
    if c.calibrate_intensity and gains:
        raise UsageError("--calibrate-intensity chooses every class's gain; drop --class-intensity")
    return gains


def _check_choices(c: BalanceConfig) -> None:
    if not c.splits:
        raise UsageError("choose at least one --split to balance")
    for option, value, allowed in (
        ("--external-judge", c.external_judge, (None, *EXTERNAL_JUDGES)),
        ("--synthetic-labels", c.synthetic_labels, SYNTHETIC_LABELS),
        ("--soft-label-source", c.soft_label_source, SOFT_LABEL_SOURCES),
        ("--source-order", c.source_order, SOURCE_ORDERS),
    ):
        if value not in allowed:
            names = ", ".join(a for a in allowed if a is not None)
            raise UsageError(f"unknown {option} {value!r}; choose one of {names}")


@dataclass
class BalanceResult:
    out_dir: Path
    manifest: Path
    counts_before: dict[str, int]
    targets: dict[str, int]
    to_generate: dict[str, int]
    generated: dict[str, int]
    removed: dict[str, int]
    attempts: dict[str, int]
    shortfall: dict[str, int]
    seconds: float
    resumed_chunks: int = 0
    problems: list[str] = field(default_factory=list)  # fesaug audit's findings on the output
    gate_passed: dict[str, dict[str, int]] = field(default_factory=dict)  # gate -> class -> candidates it passed
    weighted: dict[str, float] | None = None  # per class, the sum of the balanced rows' weights (weighted runs only)
    mean_target_mass: dict[str, float | None] | None = None  # per class, its synthetic rows' mean (soft labels only)
    rejected_by_person: dict[str, int] = field(default_factory=dict)  # per class, over every --reject round
    rejection: dict[str, Any] | None = None  # this --reject run's round, as the footer records it

    @property
    def counts_after(self) -> dict[str, int]:
        return {c: self.counts_before[c] - self.removed[c] + self.generated[c] for c in self.counts_before}

    @property
    def acceptance(self) -> dict[str, float | None]:
        return {c: (self.generated[c] / a if a else None) for c, a in self.attempts.items()}

    @property
    def gate_pass_rates(self) -> dict[str, dict[str, float | None]]:
        """Per gate and class, the share of candidates that gate passed (the gates judge every
        candidate, so each rate stands alone; ``acceptance`` is their joint effect)."""
        return {
            g: {c: (n / self.attempts[c] if self.attempts[c] else None) for c, n in counts.items()}
            for g, counts in self.gate_passed.items()
        }

    def class_rows(self, columns: Sequence[str], blank: str = "-") -> list[list[Any]]:
        """The per-class table every summary of a run shows (the dataset card, the command's and
        the demo's summaries), one row per class: its name, then ``columns`` of ``real``,
        ``target``, ``synthesized``, ``acceptance`` (a percentage, ``blank`` without attempts),
        ``shortfall``, ``after`` and ``weighted`` (the sum of the class's weights, ``blank`` in an
        unweighted run)."""

        def cell(column: str, c: str) -> Any:
            if column == "acceptance":
                acc = self.acceptance[c]
                return blank if acc is None else f"{acc:.0%}"
            if column == "weighted":
                return blank if self.weighted is None else f"{self.weighted[c]:g}"
            return {
                "real": self.counts_before,
                "target": self.targets,
                "synthesized": self.generated,
                "shortfall": self.shortfall,
                "after": self.counts_after,
            }[column][c]

        return [[c, *(cell(column, c) for column in columns)] for c in self.counts_before]
