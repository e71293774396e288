"""The settings of an evaluation (:class:`EvaluateConfig`) and what it returns (:class:`EvaluateResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fesaug.balance.config import BalanceConfig
from fesaug.evaluate.conditions import DEFAULT_CONDITIONS, REGISTRY
from fesaug.evaluate.downstream import DownstreamConfig
from fesaug.judges import resolve_judges
from fesaug.synthesis.config import DATA_MODEL_FIELDS, TrainConfig
from fesaug.utils.errors import UsageError


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of an evaluation.

    ``conditions``: what is compared (:data:`fesaug.evaluate.conditions.REGISTRY`).
    ``downstream``: the classifier every condition trains. ``generator``: FERSNet's training
    recipe for ``fes`` (``holdout_fold``, ``seed`` and ``val_fraction`` are set per fold).
    ``balance``: the balancing run (targets, quality gate); it always balances the fold's
    training subjects. ``val_fraction``: share of training subjects kept for validation.
    ``synthesis``: also score the synthetic images (needs a generator; trains one more
    classifier per fold for the classification accuracy score). ``au_checkpoint``: an emotion +
    AU model (``fesaug train --tasks emotion,au``) for AU consistency per target class.
    ``judge``: also gate the synthetic images with a classifier trained on the fold's real
    training images (``fold-k/judge.pt``, the ``real`` recipe with seed + 1, so the ``real``
    classifier that scores the synthetic images is not the one that chose them).
    ``expression_judge``: FERSNet's expression loss goes through that same judge instead of
    its own FER branch (``TrainConfig.expression_classifier``). ``downstream_seeds``: trainings
    per downstream condition and fold, averaged (:mod:`fesaug.evaluate`). ``judges``: models
    trained elsewhere that also score the synthetic images (:mod:`fesaug.judges`; default: every
    one installed). ``truth_intensity``: the ``truth`` condition's exact faces show their
    expression at this multiple of their source's own intensity (``truth-half`` at half of it).
    ``retune_head``: after each downstream training, fit a new last layer on the fold's real
    training faces (:mod:`fesaug.evaluate.retune`), kept where validation prefers it.
    """

    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    synthesis: bool = True
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    generator: TrainConfig = field(default_factory=TrainConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    val_fraction: float = 0.15
    seed: int = 0
    au_checkpoint: str | None = None
    judge: bool = False
    expression_judge: bool = False
    downstream_seeds: int = 1
    judges: tuple[str, ...] = field(default_factory=lambda: resolve_judges("auto"))
    truth_intensity: float = 1.0
    retune_head: bool = False

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in REGISTRY]
        if unknown or not self.conditions:
            raise UsageError(
                f"--conditions: unknown or no condition(s) {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(REGISTRY)}"
            )
        if len(set(self.conditions)) != len(self.conditions):
            raise UsageError(f"--conditions lists a condition twice: {', '.join(self.conditions)}")
        if self.generator.expression_classifier is not None:
            # One classifier for every fold would have seen each fold's test subjects.
            raise UsageError(
                "the generator config names an expression_classifier; evaluate trains one per fold "
                "with --expression-judge instead"
            )
        if self.downstream_seeds < 1:
            raise UsageError(f"--downstream-seeds must be at least 1, got {self.downstream_seeds}")
        if not 0 < self.val_fraction <= 0.5:
            raise UsageError(f"--val-fraction must lie in (0, 0.5], got {self.val_fraction}")
        self.balance.check_judge(given=self.judge)
        if not 0 < self.truth_intensity <= 2:
            raise UsageError(f"--truth-intensity must lie in (0, 2], got {self.truth_intensity}")
        resolve_judges(self.judges)  # unknown or not installed: one clear error before any work

    def key(self) -> dict[str, Any]:
        """What cached fold results depend on. Conditions, the synthesis report, the AU model, the
        judges and the number of downstream seeds only choose which pieces are computed, so they
        may change between runs of one DIR. The generator's model is recorded resolved (preset +
        overrides) rather than as its overrides, so a change of the model's defaults is a change
        of settings too."""
        generator = {k: v for k, v in self.generator.to_dict().items() if k != "model"}
        return {
            "downstream": dataclasses.asdict(self.downstream) | {"device": None},
            "generator": generator | {"device": None, "num_workers": None, "resolved_model": model_key(self.generator)},
            "balance": self.balance.to_dict(),
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "judge": self.judge,
            "expression_judge": self.expression_judge,
            "truth_intensity": self.truth_intensity,
            "retune_head": self.retune_head,
        }

    @property
    def needs_generator(self) -> bool:
        return self.synthesis or any(REGISTRY[c].needs_generator for c in self.conditions)


def model_key(generator: TrainConfig) -> dict[str, Any]:
    """The generator's model as resolved from its preset and overrides, less what the data sets."""
    return {k: v for k, v in generator.model_config(num_classes=2).settings().items() if k not in DATA_MODEL_FIELDS}


@dataclass
class EvaluateResult:
    out_dir: Path
    results: dict[str, Any]  # the content of results.json

    @property
    def report(self) -> Path:
        return self.out_dir / "report.md"
