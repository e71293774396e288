"""A training run's folder: whether it may be started, resumed or overwritten
(:func:`prepare_run_dir`, :func:`check_resumable`), what it records (``config.yaml``,
``provenance.json``, ``metrics.jsonl``: :func:`start_run_folder`) and its checkpoints
(:func:`checkpoint_payload`, :func:`save_checkpoints`; the format is :mod:`fesaug.synthesis.checkpoint`'s)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fesaug.data.images import KINDS
from fesaug.data.manifest import Manifest
from fesaug.data.splits import Split
from fesaug.models import FERSNetConfig
from fesaug.synthesis.checkpoint import load_checkpoint, rng_state, save_checkpoint
from fesaug.synthesis.config import TrainConfig, load_config, save_config
from fesaug.synthesis.runtime import Runtime
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import atomic_path, atomic_write_text, check_out_folder, file_sha256, remove_stale_temporaries
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import read_metrics, write_metrics

if TYPE_CHECKING:
    from fesaug.synthesis.state import TrainingState

__all__ = [
    "RESUMABLE_CHANGES",
    "Run",
    "check_resumable",
    "checkpoint_payload",
    "prepare_run_dir",
    "run_config",
    "save_checkpoints",
    "start_run_folder",
]

# The run's log, which the CLI shows (fesaug.cli.params.show_progress_log).
log = logging.getLogger("fesaug.synthesis.training")

# Settings that may change when a run is resumed. `epochs` extends (or shortens) a run; the
# learning-rate milestones stay at the epochs the original run placed them (they are part of the
# scheduler's saved state), so a longer run continues at the last learning rate.
RESUMABLE_CHANGES = ("epochs", "num_workers", "device")


@dataclass
class Run:
    """What a run is trained on and with: written into every checkpoint."""

    out_dir: Path
    config: TrainConfig
    model_config: FERSNetConfig
    manifest: Manifest
    manifest_sha: str
    split: Split
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def run_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The configuration a run folder was trained with (its ``config.yaml``), to resume it."""
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise FesaugError(f"{out_dir} has no config.yaml, so it is not a fesaug training run; check --out")
    return load_config(path, recorded=True)


def prepare_run_dir(out_dir: Path, *, resume: bool, overwrite: bool, rt: Runtime) -> dict[str, Any] | None:
    """Check the run folder against resume/overwrite; returns the checkpoint to resume from."""
    if resume and overwrite:
        raise UsageError("--resume continues a run and --overwrite starts it over; pass only one")
    check_out_folder(out_dir, "for the run")
    if rt.is_main and out_dir.is_dir():
        # A run stopped by kill -9 while writing leaves temporary files (stale: we hold the lock),
        # and a checkpoint's can be hundreds of MB.
        for name in ("metrics.jsonl", "config.yaml", "provenance.json"):
            remove_stale_temporaries(out_dir, name)
        for folder in ("checkpoints", "samples"):
            remove_stale_temporaries(out_dir / folder)
    last = out_dir / "checkpoints" / "last.pt"
    existing = [p for p in (last, out_dir / "checkpoints" / "best.pt") if p.exists()]
    if resume and last.exists():
        return load_checkpoint(last)
    if resume and not (out_dir / "config.yaml").exists():
        raise FesaugError(f"nothing to resume: {out_dir} holds no training run; run without --resume to start training")
    if resume:
        # Started, but stopped before its first checkpoint: continuing is starting over, and a
        # resubmitted `--resume` job must not fail for having been stopped early.
        log.info("%s has no checkpoint yet; starting at epoch 1", out_dir)
    elif existing and not overwrite:
        raise FesaugError(
            f"{out_dir} already holds a training run ({existing[0]}); pass --resume to continue it, "
            "--overwrite to start over, or choose another --out"
        )
    # Every rank has looked at the folder before rank 0 empties it.
    rt.barrier()
    if rt.is_main and overwrite:
        for name in ("checkpoints", "samples"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)
    return None


def check_resumable(
    ckpt: dict[str, Any],
    config: TrainConfig,
    model_config: FERSNetConfig,
    classes: list[str],
    manifest_sha: str,
    path: Path,
) -> None:
    trained = _checkpoint_model_config(ckpt, path).in_channels
    if trained != model_config.in_channels:
        raise FesaugError(
            f"{path} was trained on {KINDS[trained]} images, but the manifest holds {KINDS[model_config.in_channels]} "
            f"ones; resume with the manifest it was trained on, or start a new run with --out"
        )
    if list(ckpt["classes"]) != classes:
        raise FesaugError(
            f"{path} was trained on classes {ckpt['classes']}, but the manifest has {classes}; use the manifest it "
            "was trained on"
        )
    if ckpt["manifest"]["sha256"] != manifest_sha:
        raise FesaugError(
            f"{path} was trained on another manifest ({ckpt['manifest']['path']}, sha256 "
            f"{ckpt['manifest']['sha256'][:12]}…); "
            "resume with that manifest, or start a new run with --out"
        )
    if ckpt["image_size"] != model_config.image_size:
        raise FesaugError(
            f"{path} was trained on {ckpt['image_size']}x{ckpt['image_size']} images, but the config asks for "
            f"{model_config.image_size}x{model_config.image_size}; resume with the run's own settings"
        )
    # settings(): the fields the model's output uses, so an attention checkpoint written before the
    # warp decoder's thresholds existed still resumes under today's defaults.
    saved, asked = _checkpoint_model_config(ckpt, path).settings(), model_config.settings()
    if saved != asked:
        diff = [f"{k}: {saved[k]!r} → {asked[k]!r}" for k in saved if saved[k] != asked[k]]
        raise FesaugError(
            f"{path} holds another model than the config asks for ({'; '.join(diff)}); resume with the run's own "
            "settings"
        )
    # Through TrainConfig, so a key added since the run was saved compares as its default.
    requested, trained = config.to_dict(), TrainConfig.from_dict(ckpt["config"], where=str(path)).to_dict()
    diff = [
        f"{k}: {trained.get(k)!r} → {v!r}"
        for k, v in requested.items()
        if k not in RESUMABLE_CHANGES and trained.get(k) != v
    ]
    if diff:
        raise FesaugError(
            f"{path} was trained with other settings ({'; '.join(diff)}); resuming would not continue the same run — "
            "drop those flags (the run's config.yaml is used) or start a new run"
        )
    if ckpt["epoch"] >= config.epochs:
        raise FesaugError(
            f"{path} has already completed {ckpt['epoch']} epoch(s) of {config.epochs}; pass a larger --epochs to "
            "train longer"
        )


def _checkpoint_model_config(ckpt: dict[str, Any], path: Path) -> FERSNetConfig:
    try:
        return FERSNetConfig(**ckpt["model_config"])
    except (TypeError, FesaugError) as exc:
        raise FesaugError(
            f"{path}: the checkpoint's model config is not understood ({exc}); it was written by another fesaug version"
        ) from None


def start_run_folder(run: Run, rt: Runtime, train_images: int, resumed_at: int | None) -> None:
    """Read the metrics of the epochs a resumed run keeps into ``run.metrics``; on the main
    process, write them back with the config and the provenance, and log what is trained on."""
    metrics_path = run.out_dir / "metrics.jsonl"
    run.metrics = read_metrics(metrics_path, up_to_epoch=resumed_at) if resumed_at is not None else []
    if rt.is_main:
        run.out_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(metrics_path, run.metrics)  # drops lines of epochs after the checkpoint
        save_config(run.config, run.out_dir / "config.yaml")  # on resume, records a changed epoch count
        _write_provenance(run.out_dir, run.config, run.manifest, run.manifest_sha, run.split, resumed_at=resumed_at)
        split = run.split
        log.info(
            "training on %d images of %d subjects (validation: %d images of %d subjects; held out: %d subjects) "
            "on %s x%d",
            train_images,
            len(split.train_subjects),
            len(split.val_rows),
            len(split.val_subjects),
            len(split.heldout_subjects),
            rt.device.type,
            rt.world_size,
        )


def checkpoint_payload(run: Run, state: TrainingState, row: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of the epoch that ``row`` (its metrics line) describes."""
    o = state.optimisation
    averaged = {} if state.ema is None else {"model_trained": state.net.state_dict(), "ema": state.ema.state_dict()}
    return {
        "epoch": row["epoch"],
        "step": state.step,
        **averaged,
        "model": state.model.state_dict(),
        "discriminator": o.disc.state_dict(),
        "optimizer_g": o.opt_g.state_dict(),
        "optimizer_d": o.opt_d.state_dict(),
        "scheduler_g": state.sched_g.state_dict(),
        "scheduler_d": state.sched_d.state_dict(),
        "grad_scaler": o.scaler.state_dict(),
        "rng": rng_state(),
        "config": run.config.to_dict(),
        "model_config": _plain_model_config(run.model_config),
        "classes": run.manifest.classes,
        "image_size": run.model_config.image_size,
        "manifest": {"path": str(run.manifest.path), "sha256": run.manifest_sha},
        "split": run.split.to_dict(),
        "best": state.best,
        "metrics": row,
    }


def save_checkpoints(folder: Path, payload: dict[str, Any], is_best: bool) -> None:
    # best.pt before last.pt: a run killed in between resumes from the previous last.pt and
    # repeats this epoch, so best.pt never lags behind the best epoch last.pt records.
    if is_best:
        save_checkpoint(folder / "best.pt", payload)
        with atomic_path(folder / "last.pt") as tmp:
            shutil.copyfile(folder / "best.pt", tmp)
    else:
        save_checkpoint(folder / "last.pt", payload)


def _plain_model_config(model_config: FERSNetConfig) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(model_config).items()}


def _write_provenance(
    out_dir: Path, config: TrainConfig, manifest: Manifest, manifest_sha: str, split: Split, resumed_at: int | None
) -> None:
    """``provenance.json``: how the run was started, and every later resumption."""
    path = out_dir / "provenance.json"
    record = provenance("train", config.to_dict())
    record["manifest"] = {"path": str(manifest.path), "sha256": manifest_sha}
    record["split"] = split.to_dict()
    if config.expression_classifier is not None:
        record["expression_classifier"] = {
            "path": config.expression_classifier,
            "sha256": file_sha256(config.expression_classifier),
        }
    if resumed_at is None or not path.exists():
        data = {**record, "resumed": []}
    else:
        data = json.loads(path.read_text(encoding="utf-8"))
        data.setdefault("resumed", []).append(
            {
                "at_epoch": resumed_at,
                "command": record["command"],
                "created_at": record["created_at"],
                "versions": record["versions"],
            }
        )
    atomic_write_text(path, json.dumps(data, indent=2, default=str) + "\n")
