"""`fesaug train`: FERSNet or, with --tasks emotion,au, EmotionAUNet
(:func:`fesaug.trainers.train_tasks`); summarise."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from fesaug.cli.params import show_progress_log
from fesaug.synthesis.config import DEVICES, PRESETS


@click.command("train")
@click.option(
    "--manifest",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest whose real rows to train on.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Run folder: checkpoints/, samples/, metrics.jsonl, config.yaml.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="YAML file of training settings; flags override it.",
)
@click.option(
    "--preset",
    type=click.Choice(list(PRESETS)),
    help="cpu: 64x64, small widths (default). paper: 96x96, the paper's widths and recipe (for a GPU). rgb96, "
    "rgb112: the cpu recipe at the usual colour sizes (96x96, 112x112; the channels always come from the manifest).",
)
@click.option(
    "--tasks",
    default="emotion,synthesis",
    show_default=True,
    metavar="TASKS",
    help="emotion,synthesis: FERSNet (recognition + synthesis). emotion,au: EmotionAUNet "
    "(emotions + facial action units, after AWS-Net; needs AU labels, see `ingest --au-labels`).",
)
@click.option(
    "--sharing",
    metavar="KIND",
    help="Feature sharing between the two tasks' networks: convflu (FERSNet default), cross-stitch, "
    "aws (emotion,au default), hard or none.",
)
@click.option(
    "--holdout-fold",
    type=click.IntRange(min=0),
    metavar="K",
    help="Never train or validate on fold K (all its subjects), e.g. to test on it later.",
)
@click.option(
    "--expression-classifier",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="CKPT",
    help="An independent classifier trained on the same training subjects (fesaug evaluate's "
    "fold-K/judge.pt): the expression loss judges synthesized faces with it instead of the FER branch.",
)
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate (both networks).")
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--device", type=click.Choice(DEVICES), help="auto: CUDA when available.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from checkpoints/last.pt, with its config.yaml "
    "(a run stopped before its first checkpoint starts over).",
)
@click.option("--overwrite", is_flag=True, help="Discard a previous run in --out and start over.")
def train_command(
    manifest: Path,
    out: Path,
    config_file: Path | None,
    preset: str | None,
    tasks: str,
    sharing: str | None,
    holdout_fold: int | None,
    expression_classifier: Path | None,
    epochs: int | None,
    batch_size: int | None,
    lr: float | None,
    seed: int | None,
    device: str | None,
    resume: bool,
    overwrite: bool,
) -> None:
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
    from fesaug.multitask.config import MultiTaskResult
    from fesaug.trainers import train_tasks

    main_process = os.environ.get("RANK", "0") == "0"
    if main_process:
        show_progress_log()
    result = train_tasks(
        manifest,
        out,
        tasks=tasks,
        preset=preset,
        config_file=config_file,
        sharing=sharing,
        resume=resume,
        overwrite=overwrite,
        overrides={
            "holdout_fold": holdout_fold,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "device": device,
            "expression_classifier": None if expression_classifier is None else str(expression_classifier),
        },
    )
    if not main_process:
        return
    best = next((m for m in result.metrics if m["epoch"] == result.best_epoch), {})
    if isinstance(result, MultiTaskResult):
        click.echo(
            f"trained {result.config.epochs} epoch(s); best epoch {result.best_epoch}"
            + (
                f" (validation emotion accuracy {_number(best, 'val_emotion_acc')}, macro-F1 "
                f"{_number(best, 'val_emotion_macro_f1')}, AU mean F1 {_number(best, 'val_au_mean_f1')})"
                if "val_emotion_acc" in best
                else " (no validation set)"
            )
        )
        click.echo(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")
        click.echo(f"metrics: {result.run_dir / 'metrics.jsonl'}")
        return
    accuracy = best.get("val_fer_acc")
    click.echo(
        f"trained {result.config.epochs} epoch(s); best epoch {result.best_epoch}"
        + (f" (validation accuracy {accuracy:.3f})" if accuracy is not None else " (no validation set)")
    )
    click.echo(f"checkpoints: {result.best_checkpoint} (best), {result.last_checkpoint} (last)")
    click.echo(f"metrics: {result.run_dir / 'metrics.jsonl'}; samples: {result.run_dir / 'samples'}")


def _number(metrics: dict[str, Any], key: str) -> str:
    return "n/a" if metrics.get(key) is None else f"{metrics[key]:.3f}"
