"""Training FERSNet: recognition and synthesis together, with a conditional PatchGAN.

``train(manifest, out_dir, config)`` is the whole procedure; read it from :func:`train` down: it sets
up the run (the folder: :mod:`~fesaug.synthesis.rundir`; the networks and optimisers:
:mod:`~fesaug.synthesis.state`; device and processes: :mod:`~fesaug.synthesis.runtime`), then calls
:func:`train_one_epoch` (:func:`~fesaug.synthesis.step.train_step` per batch) and
:func:`~fesaug.synthesis.validation.validate` once per epoch, and ``_record_epoch`` for the epoch's
metrics line and checkpoints.

Data. Real rows of the manifest only. Rows of ``config.holdout_fold`` and rows in split ``test``
are held out: never trained on, never validated on. From the remaining *subjects*, a
stratified ``val_fraction`` is kept for validation (model selection: ``best.pt`` has the best
validation FER accuracy, ties broken by the lower validation loss). Each training sample is
a source image, a target expression and, when the subject shows it, the subject's real image
of that expression (:class:`~fesaug.data.datasets.PairedTargetDataset`).

One step per batch: FERSNet translates the sources and back and classifies them, the
discriminator is updated on real vs. synthesized faces, then FERSNet on the weighted sum of its
losses (:mod:`~fesaug.synthesis.step`).

A run folder holds ``config.yaml`` (the resolved configuration), ``provenance.json``,
``metrics.jsonl`` (one line per epoch), ``samples/epoch_XXX.png`` (rows: fixed validation
faces; columns: the input, then one synthesized image per class) and ``checkpoints/last.pt``
and ``best.pt`` (see :mod:`fesaug.synthesis.checkpoint`). With ``config.ema``, a checkpoint's ``model`` is
the moving average of the weights (what was validated and what inference loads) and
``model_trained`` the weights the optimiser holds, for resuming.

Runs under ``torchrun --nproc-per-node N -m fesaug train ...`` use DDP (gloo on CPU, NCCL on
GPU); rank 0 alone writes files. Resuming (``resume=True``) continues from ``last.pt`` and
ends with the same weights as an uninterrupted run: data order and augmentation are functions
of (seed, epoch, index) only, and the global generators are reseeded from (seed, epoch) at the
start of every epoch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from fesaug.data.datasets import ManifestDataset, PairedTargetDataset
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.data.splits import Split, split_subjects
from fesaug.synthesis.config import PRESETS, LossWeights, TrainConfig, load_config, resolve_config
from fesaug.synthesis.rundir import (
    Run,
    check_resumable,
    checkpoint_payload,
    prepare_run_dir,
    run_config,
    save_checkpoints,
    start_run_folder,
)
from fesaug.synthesis.runtime import Runtime, runtime
from fesaug.synthesis.state import TrainingState, training_state
from fesaug.synthesis.step import train_step
from fesaug.synthesis.validation import recalibrate_batch_norm, sample_faces, save_sample_grid, validate
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import file_sha256
from fesaug.utils.killpoints import kill_point
from fesaug.utils.locking import output_lock
from fesaug.utils.runlog import json_number, read_metrics, seed_everything, write_metrics

__all__ = [
    "PRESETS",
    "LossWeights",
    "TrainConfig",
    "TrainResult",
    "TrainingState",
    "load_config",
    "resolve_config",
    "run_config",
    "train",
    "train_one_epoch",
    "train_step",
    "validate",
]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where a run's files are and how it went. ``metrics`` holds every line of metrics.jsonl."""

    run_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path
    best_epoch: int
    best_val_fer_acc: float | None
    metrics: list[dict[str, Any]]
    config: TrainConfig


# --------------------------------------------------------------------------------------------
# the procedure, top to bottom: set up, then per epoch train_one_epoch, validate, _record_epoch


def train(
    manifest: str | os.PathLike | Manifest,
    out_dir: str | os.PathLike,
    config: TrainConfig | None = None,
    *,
    resume: bool = False,
    overwrite: bool = False,
) -> TrainResult:
    """Train FERSNet on the real rows of ``manifest``; write the run folder ``out_dir``.

    ``resume`` continues the run in ``out_dir`` from ``checkpoints/last.pt`` (``config`` must
    match the run's, except ``epochs``, ``num_workers`` and ``device``), or starts it over if it
    was stopped before its first checkpoint; ``overwrite`` discards a previous run there. The
    run holds ``out_dir``'s lock (:mod:`fesaug.utils.locking`). See the module docstring for what is
    written.
    """
    config = config or TrainConfig()
    out_dir = Path(out_dir)
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    model_config = config.model_config(num_classes=len(manifest.classes), in_channels=manifest.channels)
    manifest_sha = file_sha256(manifest.path)

    with runtime(config) as rt, output_lock(out_dir):
        ckpt = prepare_run_dir(out_dir, resume=resume, overwrite=overwrite, rt=rt)
        if ckpt is not None:
            check_resumable(
                ckpt, config, model_config, manifest.classes, manifest_sha, out_dir / "checkpoints" / "last.pt"
            )
        split = split_subjects(manifest, config.holdout_fold, config.val_fraction, config.seed)
        run = Run(out_dir, config, model_config, manifest, manifest_sha, split)
        data = _data(manifest, split, model_config.image_size, config, rt)
        state = training_state(run, rt, ckpt)
        start_run_folder(run, rt, len(data.train_set), resumed_at=state.epoch if ckpt is not None else None)

        for epoch in range(state.epoch + 1, config.epochs + 1):
            # Everything random in an epoch follows from (seed, epoch), so a resumed run repeats it.
            seed_everything(config.seed, epoch)
            data.set_epoch(epoch)
            t0 = time.perf_counter()
            lr = state.sched_g.get_last_lr()[0]
            losses = train_one_epoch(state, data.train_loader, config, rt, epoch)
            train_seconds = time.perf_counter() - t0
            if rt.is_main:
                if state.ema is not None:
                    recalibrate_batch_norm(state.model, data.train_loader, rt.device)
                val = validate(state.model, data.val_loader, rt.device) if data.val_loader is not None else {}
                save_sample_grid(state.model, data.sample_faces, out_dir / "samples" / f"epoch_{epoch:03d}.png")
                images = len(data.train_loader) * config.batch_size * rt.world_size
                _record_epoch(run, state, epoch, lr, losses, val, images, train_seconds, t0)

    metrics = run.metrics if rt.is_main else read_metrics(out_dir / "metrics.jsonl")
    checkpoints = out_dir / "checkpoints"
    return TrainResult(
        run_dir=out_dir,
        last_checkpoint=checkpoints / "last.pt",
        best_checkpoint=checkpoints / "best.pt",
        best_epoch=state.best["epoch"] if rt.is_main else next((m["epoch"] for m in reversed(metrics) if m["best"]), 0),
        best_val_fer_acc=state.best["val_fer_acc"] if rt.is_main else None,
        metrics=metrics,
        config=config,
    )


def train_one_epoch(
    state: TrainingState, loader: DataLoader, config: TrainConfig, rt: Runtime, epoch: int
) -> dict[str, float]:
    """One pass over ``loader`` (:func:`train_step` per batch), then one step of the learning-rate
    schedules; returns each loss averaged over the epoch's steps and the processes."""
    sums: dict[str, Tensor] = {}
    bar = tqdm(
        loader,
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        leave=False,
        disable=None if rt.is_main else True,
        dynamic_ncols=True,
    )
    for i, batch in enumerate(bar):
        kill_point("train-step")
        losses = train_step(
            batch, state.optimisation, config.loss, config.d_steps, rt, label_smoothing=config.label_smoothing
        )
        if state.ema is not None:
            state.ema.update_parameters(state.net)
        state.step += 1
        for k, v in losses.items():
            sums[k] = sums.get(k, 0) + v
        if i % 10 == 0 and not bar.disable:  # .item() waits for the GPU; not every step
            bar.set_postfix(
                fer=f"{losses['loss_fer'].item():.3f}",
                cyc=f"{losses['loss_cycle'].item():.3f}",
                d=f"{losses['loss_d'].item():.3f}",
            )
    bar.close()
    state.sched_g.step()
    state.sched_d.step()
    averages = torch.stack(list(sums.values())) / len(loader)
    if rt.distributed:
        dist.all_reduce(averages)
        averages /= rt.world_size
    if not torch.isfinite(averages).all():
        raise FesaugError(
            f"training diverged in epoch {epoch} (a loss is not finite); start again with a lower "
            "--lr or lower loss weights (checkpoints of the epochs before are kept)"
        )
    return {k: float(v) for k, v in zip(sums, averages)}


def _record_epoch(
    run: Run,
    state: TrainingState,
    epoch: int,
    lr: float,
    losses: dict[str, float],
    val: dict[str, float],
    images: int,
    train_seconds: float,
    t0: float,
) -> None:
    """The end of an epoch on the main process: choose the best epoch, append the epoch's line to
    ``metrics.jsonl``, write the checkpoints. ``images``: trained on in the epoch, all processes
    together; ``t0``: when the epoch started."""
    is_best = _better(val, state.best)
    if is_best:
        state.best = {"epoch": epoch, "val_fer_acc": val.get("val_fer_acc"), "val_fer_loss": val.get("val_fer_loss")}
    row = {
        "epoch": epoch,
        "step": state.step,
        "lr": lr,
        **{k: json_number(v) for k, v in losses.items()},
        **{k: json_number(v) for k, v in val.items()},
        "images_per_s": round(images / train_seconds, 2),
        "train_seconds": round(train_seconds, 3),
        "epoch_seconds": round(time.perf_counter() - t0, 3),
        "best": is_best,
    }
    run.metrics.append(row)
    write_metrics(run.out_dir / "metrics.jsonl", run.metrics)
    save_checkpoints(run.out_dir / "checkpoints", checkpoint_payload(run, state, row), is_best)
    log.info(
        "epoch %d/%d  fer %.3f  cycle %.3f  d %.3f%s  %.1f img/s  %.1f s",
        epoch,
        run.config.epochs,
        row["loss_fer"],
        row["loss_cycle"],
        row["loss_d"],
        f"  val acc {val['val_fer_acc']:.3f}" if val else "",
        row["images_per_s"],
        row["epoch_seconds"],
    )


def _better(val: dict[str, float], best: dict[str, Any]) -> bool:
    """Higher validation accuracy, then lower validation loss; without validation, the latest."""
    if not val or best["val_fer_acc"] is None:
        return True
    if val["val_fer_acc"] != best["val_fer_acc"]:
        return bool(val["val_fer_acc"] > best["val_fer_acc"])
    return bool(val["val_fer_loss"] < best["val_fer_loss"])


# --------------------------------------------------------------------------------------------
# the data


@dataclass
class _Data:
    train_set: PairedTargetDataset
    sampler: DistributedSampler
    train_loader: DataLoader
    val_loader: DataLoader | None
    sample_faces: Tensor

    def set_epoch(self, epoch: int) -> None:
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)


def _data(manifest: Manifest, split: Split, size: int, config: TrainConfig, rt: Runtime) -> _Data:
    """The training and validation loaders and the sample-grid faces; pixels decoded once, at the
    model's size."""
    train_set = PairedTargetDataset(
        ManifestDataset(manifest, rows=split.train_rows, image_size=size),
        paired_prob=config.paired_prob,
        augment=True,
        shift=config.shift,
        hflip=config.hflip,
        rotation=config.rotation,
        scale=config.scale,
        own_expression_prob=config.own_expression_prob,
        seed=config.seed,
        align_pairs=config.align_pairs,
        pair_threshold=config.pair_threshold,
        pair_flow=config.loss.flow_target > 0,
    )
    sampler = DistributedSampler(train_set, num_replicas=rt.world_size, rank=rt.rank, shuffle=True, seed=config.seed)
    # drop_last: a last batch of one or two images gives the GAN and BatchNorm noisy statistics.
    # Workers are not persistent: each epoch's workers must copy the dataset after set_epoch().
    train_loader = DataLoader(
        train_set,
        batch_size=config.batch_size,
        sampler=sampler,
        drop_last=True,
        num_workers=config.num_workers,
        pin_memory=rt.device.type == "cuda",
    )
    if len(train_loader) == 0:
        raise FesaugError(
            f"{len(train_set)} training image(s) over {rt.world_size} process(es) do not fill one batch of "
            f"{config.batch_size}; lower --batch-size"
        )
    val_base = ManifestDataset(manifest, rows=split.val_rows, image_size=size) if len(split.val_rows) else None
    # Fixed targets (epoch 0 forever, pairs whenever possible, no augmentation): comparable across epochs.
    val_loader = (
        None
        if val_base is None
        else DataLoader(
            PairedTargetDataset(
                val_base,
                paired_prob=1.0,
                augment=False,
                seed=config.seed,
                align_pairs=config.align_pairs,
                pair_threshold=config.pair_threshold,
            ),
            batch_size=max(config.batch_size, 64),
        )
    )
    return _Data(
        train_set, sampler, train_loader, val_loader, sample_faces(val_base or train_set.base, config.sample_rows)
    )
