"""``fesaug train``'s choice of trainer and its configuration, in one call (:func:`train_tasks`).

``emotion,synthesis`` trains FERSNet (:func:`fesaug.synthesis.training.train`) with a configuration built
preset → YAML file → flags; ``emotion,au`` trains EmotionAUNet
(:func:`fesaug.multitask.training.train_multitask`), which has no preset, file or resume.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fesaug.multitask.config import MultiTaskConfig, MultiTaskResult
from fesaug.multitask.training import train_multitask
from fesaug.synthesis.config import resolve_config
from fesaug.synthesis.training import TrainResult, run_config, train
from fesaug.utils.errors import UsageError

FERSNET_TASKS = frozenset({"emotion", "synthesis"})
EMOTION_AU_TASKS = frozenset({"emotion", "au"})


def parse_tasks(text: str) -> frozenset[str]:
    """The task set of ``--tasks`` (``emotion,synthesis`` or ``emotion,au``)."""
    names = {t.strip().lower() for t in text.split(",") if t.strip()}
    unknown = sorted(names - {"emotion", "au", "synthesis"})
    if unknown:
        raise UsageError(f"--tasks: unknown task(s) {', '.join(unknown)}; tasks are emotion, au and synthesis")
    if names == {"emotion", "au", "synthesis"}:
        raise UsageError(
            "--tasks emotion,au,synthesis is not supported yet; train the two models separately: "
            "--tasks emotion,synthesis (FERSNet) and --tasks emotion,au (EmotionAUNet)"
        )
    if names not in (FERSNET_TASKS, EMOTION_AU_TASKS):
        raise UsageError(
            f"--tasks {text} is not a supported combination; use emotion,synthesis (FERSNet, the default) "
            "or emotion,au (EmotionAUNet)"
        )
    return frozenset(names)


def train_tasks(
    manifest: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    tasks: str = "emotion,synthesis",
    preset: str | None = None,
    config_file: str | os.PathLike | None = None,
    sharing: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult | MultiTaskResult:
    """Train the network of ``tasks`` on ``manifest`` into ``out_dir``.

    ``overrides``: configuration keys set on the command line (None values are not set);
    ``sharing``: the feature sharing between the two tasks' networks. FERSNet's configuration is
    ``preset`` (or, on ``resume``, the run's own ``config.yaml``) → ``config_file`` →
    ``overrides``; EmotionAUNet takes ``overrides`` only.
    """
    out = Path(out_dir)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    if parse_tasks(tasks) == EMOTION_AU_TASKS:
        fersnet_only = [
            flag
            for flag, value in (
                ("--preset", preset),
                ("--config", config_file),
                ("--resume", resume),
                ("--expression-classifier", overrides.get("expression_classifier")),
            )
            if value
        ]
        if fersnet_only:
            raise UsageError(
                f"{', '.join(fersnet_only)} only apply to FERSNet training (--tasks emotion,synthesis); "
                "with --tasks emotion,au set --epochs, --batch-size, --lr, --sharing, --seed or --device"
            )
        return train_multitask(
            manifest, out, MultiTaskConfig(model={"sharing": sharing or "aws"}, **overrides), overwrite=overwrite
        )
    if sharing is not None:
        overrides["model"] = {"sharing": sharing}
    # A resumed run starts from its own settings; flags (e.g. a larger --epochs) still apply.
    base = run_config(out) if resume and (out / "config.yaml").exists() else None
    config = resolve_config(preset=preset, config_file=config_file, overrides=overrides, base=base)
    return train(manifest, out, config, resume=resume, overwrite=overwrite)
