"""`fesaug train`: build the configuration (preset → --config YAML → flags), train, summarise."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from fesaug.errors import UsageError
from fesaug.train_config import DEVICES, PRESETS, resolve_config


@click.command("train")
@click.option("--manifest", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Manifest whose real rows to train on.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: checkpoints/, samples/, metrics.jsonl, config.yaml.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML file of training settings; flags override it.")
@click.option("--preset", type=click.Choice(list(PRESETS)),
              help="cpu: 64x64, small widths (default). paper: 96x96, the paper's widths and recipe (for a GPU).")
@click.option("--tasks", default="emotion,synthesis", show_default=True, metavar="TASKS",
              help="emotion,synthesis: FERSNet (recognition + synthesis). emotion,au: EmotionAUNet "
                   "(emotions + facial action units, after AWS-Net; needs AU labels, see `ingest --au-labels`).")
@click.option("--sharing", metavar="KIND",
              help="Feature sharing between the two tasks' networks: convflu (FERSNet default), cross-stitch, "
                   "aws (emotion,au default), hard or none.")
@click.option("--holdout-fold", type=click.IntRange(min=0), metavar="K",
              help="Never train or validate on fold K (all its subjects), e.g. to test on it later.")
@click.option("--expression-classifier", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="CKPT",
              help="An independent classifier trained on the same training subjects (fesaug evaluate's "
                   "fold-K/judge.pt): the expression loss judges synthesized faces with it instead of the FER branch.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate (both networks).")
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--device", type=click.Choice(DEVICES), help="auto: CUDA when available.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoints/last.pt, with its config.yaml "
                   "(a run stopped before its first checkpoint starts over).")
@click.option("--overwrite", is_flag=True, help="Discard a previous run in --out and start over.")
def train_command(manifest: Path, out: Path, config_file: Path | None, preset: str | None, tasks: str, sharing: str | None,
                  holdout_fold: int | None, expression_classifier: Path | None, epochs: int | None, batch_size: int | None, lr: float | None,
                  seed: int | None, device: str | None, resume: bool, overwrite: bool) -> None:
    """Train FERSNet (recognition + synthesis), or with --tasks emotion,au an emotion + AU network.

    \b
    Examples:
      fesaug train --manifest demo/manifest.parquet --out runs/demo --holdout-fold 0
      fesaug train --manifest ck.parquet --out runs/ck --preset paper --config ck.yaml
      fesaug train --manifest ck.parquet --out runs/ck --resume --epochs 60
      torchrun --nproc-per-node 2 -m fesaug train --manifest ck.parquet --out runs/ck
      fesaug train --manifest demo/manifest.parquet --out runs/au --tasks emotion,au --holdout-fold 0

    On a CPU shared with other jobs, OMP_NUM_THREADS=1 can be several times faster than the
    default of one thread per core.
    """
    flags: dict[str, Any] = {
        "holdout_fold": holdout_fold, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
        "expression_classifier": None if expression_classifier is None else str(expression_classifier),
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
    task_set = _parse_tasks(tasks)
    if task_set == {"emotion", "au"}:
        fersnet_only = [flag for flag, value in (("--preset", preset), ("--config", config_file), ("--resume", resume),
                                                 ("--expression-classifier", expression_classifier)) if value]
        if fersnet_only:
            raise UsageError(f"{', '.join(fersnet_only)} only apply to FERSNet training (--tasks emotion,synthesis); "
                             "with --tasks emotion,au set --epochs, --batch-size, --lr, --sharing, --seed or --device")
        _train_emotion_au(manifest, out, overrides, sharing, overwrite)
        return

    from fesaug.training import run_config, train

    if sharing is not None:
        overrides["model"] = {"sharing": sharing}
    # A resumed run starts from its own settings; flags (e.g. a larger --epochs) still apply.
    base = run_config(out) if resume and (out / "config.yaml").exists() else None
    config = resolve_config(preset=preset, config_file=config_file, overrides=overrides, base=base)

    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        _show_progress_log()
    result = train(manifest, out, config, resume=resume, overwrite=overwrite)
    if not main_process:
        return
    best = next((m for m in result.metrics if m["epoch"] == result.best_epoch), {})
    accuracy = best.get("val_fer_acc")
    click.echo(f"trained {config.epochs} epoch(s); best epoch {result.best_epoch}"
               + (f" (validation accuracy {accuracy:.3f})" if accuracy is not None else " (no validation set)"))
    click.echo(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")
    click.echo(f"metrics: {result.run_dir / 'metrics.jsonl'}; samples: {result.run_dir / 'samples'}")


def _parse_tasks(text: str) -> set[str]:
    names = {t.strip().lower() for t in text.split(",") if t.strip()}
    unknown = sorted(names - {"emotion", "au", "synthesis"})
    if unknown:
        raise UsageError(f"--tasks: unknown task(s) {', '.join(unknown)}; tasks are emotion, au and synthesis")
    if names == {"emotion", "au", "synthesis"}:
        raise UsageError("--tasks emotion,au,synthesis is not supported yet; train the two models separately: "
                         "--tasks emotion,synthesis (FERSNet) and --tasks emotion,au (EmotionAUNet)")
    if names not in ({"emotion", "synthesis"}, {"emotion", "au"}):
        raise UsageError(f"--tasks {text} is not a supported combination; use emotion,synthesis (FERSNet, the default) "
                         "or emotion,au (EmotionAUNet)")
    return names


def _train_emotion_au(manifest: Path, out: Path, overrides: dict[str, Any], sharing: str | None, overwrite: bool) -> None:
    from fesaug.multitask_training import MultiTaskConfig, train_multitask

    config = MultiTaskConfig(model={"sharing": sharing or "aws"}, **overrides)
    _show_progress_log()
    result = train_multitask(manifest, out, config, overwrite=overwrite)
    best = next((m for m in result.metrics if m["epoch"] == result.best_epoch), {})

    def number(key: str) -> str:
        return "n/a" if best.get(key) is None else f"{best[key]:.3f}"

    click.echo(f"trained {config.epochs} epoch(s); best epoch {result.best_epoch}"
               + (f" (validation emotion accuracy {number('val_emotion_acc')}, macro-F1 {number('val_emotion_macro_f1')}, "
                  f"AU mean F1 {number('val_au_mean_f1')})" if "val_emotion_acc" in best else " (no validation set)"))
    click.echo(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")
    click.echo(f"metrics: {result.run_dir / 'metrics.jsonl'}")


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when it writes (tests capture it per call)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # noqa: ANN001
        pass


def _show_progress_log(name: str = "fesaug.training") -> None:
    # One line per step on stderr; the library only logs.
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
