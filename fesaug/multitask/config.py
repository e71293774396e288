"""The settings of an emotion + AU run (:class:`MultiTaskConfig`) and what it returns (:class:`MultiTaskResult`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fesaug.data.splits import Split
from fesaug.utils.errors import FesaugError

__all__ = ["MultiTaskConfig", "MultiTaskResult"]


@dataclass(frozen=True)
class MultiTaskConfig:
    """Settings of one run. ``model`` overrides :class:`EmotionAUConfig` fields (``num_classes``
    and ``num_aus`` come from the manifest); ``sharing`` defaults to ``"aws"``."""

    model: dict[str, Any] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 5e-4
    holdout_fold: int | None = None
    val_fraction: float = 0.15
    seed: int = 0
    device: str = "auto"
    hflip: bool = True
    au_weight: float = 1.0
    emotion_fraction: float | None = None  # share of training subjects keeping emotion labels; None = all
    au_fraction: float | None = None  # share keeping AU labels (the other end of the shuffle); None = all

    def __post_init__(self) -> None:
        checks = [
            ("epochs", self.epochs >= 1),
            ("batch_size", self.batch_size >= 2),
            ("lr", self.lr > 0),
            ("weight_decay", self.weight_decay >= 0),
            ("val_fraction", 0 <= self.val_fraction < 1),
            ("au_weight", self.au_weight >= 0),
            ("device", self.device in ("auto", "cpu", "cuda")),
        ]
        checks += [
            (name, value is None or 0 < value <= 1)
            for name, value in (("emotion_fraction", self.emotion_fraction), ("au_fraction", self.au_fraction))
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise FesaugError(
                f"invalid multi-task setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)} "
                "(epochs >= 1, batch_size >= 2, lr > 0, 0 <= val_fraction < 1, fractions in (0, 1], "
                "device auto/cpu/cuda)"
            )
        fixed = {"num_classes", "num_aus", "in_channels"} & set(self.model)
        if fixed:
            raise FesaugError(f"model.{sorted(fixed)[0]} is set by the manifest; leave it out")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["model"] = {k: list(v) if isinstance(v, tuple) else v for k, v in self.model.items()}
        return d


@dataclass
class MultiTaskResult:
    """Where a run's files are and how it went. ``metrics`` holds every line of metrics.jsonl."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    best_epoch: int
    metrics: list[dict[str, Any]]
    config: MultiTaskConfig
    split: Split
