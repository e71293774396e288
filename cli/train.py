"""`fesaug train`: build the configuration (preset → --config YAML → flags), train, summarise."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import click

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
@click.option("--sharing", metavar="KIND",
              help="Feature sharing between the FER and FES branches: convflu (default), cross-stitch, aws, hard or none.")
@click.option("--holdout-fold", type=click.IntRange(min=0), metavar="K",
              help="Never train or validate on fold K (all its subjects), e.g. to test on it later.")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), help="Adam learning rate (both networks).")
@click.option("--seed", type=click.IntRange(min=0))
@click.option("--device", type=click.Choice(DEVICES), help="auto: CUDA when available.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from checkpoints/last.pt, with its config.yaml.")
@click.option("--overwrite", is_flag=True, help="Discard a previous run in --out and start over.")
def train_command(manifest: Path, out: Path, config_file: Path | None, preset: str | None, sharing: str | None,
                  holdout_fold: int | None, epochs: int | None, batch_size: int | None, lr: float | None,
                  seed: int | None, device: str | None, resume: bool, overwrite: bool) -> None:
    """Train FERSNet (recognition + synthesis) on a manifest.

    \b
    Examples:
      fesaug train --manifest demo/manifest.parquet --out runs/demo --holdout-fold 0
      fesaug train --manifest ck.parquet --out runs/ck --preset paper --config ck.yaml
      fesaug train --manifest ck.parquet --out runs/ck --resume --epochs 60
      torchrun --nproc-per-node 2 -m fesaug train --manifest ck.parquet --out runs/ck

    On a CPU shared with other jobs, OMP_NUM_THREADS=1 can be several times faster than the
    default of one thread per core.
    """
    from fesaug.training import run_config, train

    flags: dict[str, Any] = {
        "holdout_fold": holdout_fold, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed, "device": device,
    }
    overrides = {k: v for k, v in flags.items() if v is not None}
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


def _show_progress_log() -> None:
    # One line per epoch on stderr; the library only logs.
    logger = logging.getLogger("fesaug.training")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
