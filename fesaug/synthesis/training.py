"""Training FERSNet: recognition and synthesis together, with a conditional PatchGAN.

``train(manifest, out_dir, config)`` is the whole procedure; read it from :func:`train` down: it sets
up the run, then calls :func:`train_one_epoch` (:func:`train_step` per batch) and :func:`validate`
once per epoch, and ``_record_epoch`` for the epoch's metrics line and checkpoints.

Data. Real rows of the manifest only. Rows of ``config.holdout_fold`` and rows in split ``test``
are held out: never trained on, never validated on. From the remaining *subjects*, a
stratified ``val_fraction`` is kept for validation (model selection: ``best.pt`` has the best
validation FER accuracy, ties broken by the lower validation loss). Each training sample is
a source image, a target expression and, when the subject shows it, the subject's real image
of that expression (:class:`~fesaug.data.datasets.PairedTargetDataset`).

One step, per batch (losses in :class:`~fesaug.synthesis.config.LossWeights`):

1. FERSNet translates the sources to their targets and back, and classifies the real sources
   (one module call, so that DDP sees one forward per backward);
2. the discriminator is updated ``d_steps`` times on real vs. these (detached) synthesized images;
3. FERSNet (encoders, classifier, decoder) is updated on the weighted sum of its losses, with
   the discriminator frozen.

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

import contextlib
import dataclasses
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn, update_bn
from torch.utils.data import DataLoader, DistributedSampler
from torchvision.utils import save_image
from tqdm import tqdm

from fesaug.data.datasets import ManifestDataset, PairedTargetDataset
from fesaug.data.images import KINDS
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.data.splits import Split, split_subjects
from fesaug.evaluate.downstream import DownstreamClassifier, augment_batch, load_classifier
from fesaug.models import Discriminator, FERSNet, FERSNetConfig, to_model_range
from fesaug.synthesis.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from fesaug.synthesis.config import (
    PRESETS,
    LossWeights,
    TrainConfig,
    load_config,
    resolve_config,
    save_config,
)
from fesaug.utils.devices import resolve_device
from fesaug.utils.distributed import Ranks, barrier, process_group
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import atomic_path, atomic_write_text, check_out_folder, file_sha256, remove_stale_temporaries
from fesaug.utils.killpoints import kill_point
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance
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

# Settings that may change when a run is resumed. `epochs` extends (or shortens) a run; the
# learning-rate milestones stay at the epochs the original run placed them (they are part of the
# scheduler's saved state), so a longer run continues at the last learning rate.
RESUMABLE_CHANGES = ("epochs", "num_workers", "device")


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

    with _runtime(config) as rt, output_lock(out_dir):
        ckpt = _prepare_run_dir(out_dir, resume=resume, overwrite=overwrite, rt=rt)
        if ckpt is not None:
            _check_resumable(
                ckpt, config, model_config, manifest.classes, manifest_sha, out_dir / "checkpoints" / "last.pt"
            )
        split = split_subjects(manifest, config.holdout_fold, config.val_fraction, config.seed)
        run = _Run(out_dir, config, model_config, manifest, manifest_sha, split)
        data = _data(manifest, split, model_config.image_size, config, rt)
        state = _training_state(run, rt, ckpt)
        _start_run_folder(run, rt, data, resumed_at=state.epoch if ckpt is not None else None)

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
    run: _Run,
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
    _save_checkpoints(run.out_dir / "checkpoints", _checkpoint(run, state, row), is_best)
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


# --------------------------------------------------------------------------------------------
# setting up: the run, the data, the models and their optimisers


@dataclass
class _Run:
    """What a run is trained on and with: written into every checkpoint."""

    out_dir: Path
    config: TrainConfig
    model_config: FERSNetConfig
    manifest: Manifest
    manifest_sha: str
    split: Split
    metrics: list[dict[str, Any]] = dataclasses.field(default_factory=list)


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
        train_set, sampler, train_loader, val_loader, _sample_faces(val_base or train_set.base, config.sample_rows)
    )


@dataclass
class TrainingState:
    """The networks, optimisers and schedules of a run and how far it got: what a checkpoint holds."""

    net: FERSNet
    optimisation: Optimisation
    sched_g: torch.optim.lr_scheduler.LRScheduler
    sched_d: torch.optim.lr_scheduler.LRScheduler
    epoch: int = 0
    step: int = 0
    best: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"epoch": 0, "val_fer_acc": None, "val_fer_loss": None}
    )
    ema: AveragedModel | None = None  # the moving average of net's weights (TrainConfig.ema)

    @property
    def model(self) -> FERSNet:
        """The network that is validated, sampled and saved as ``model``: the average when there is one."""
        return self.net if self.ema is None else self.ema.module  # type: ignore[return-value]


def _training_state(run: _Run, rt: Runtime, ckpt: dict[str, Any] | None) -> TrainingState:
    """FERSNet, the discriminator and their optimisers, identically initialised on every rank, or
    as ``ckpt`` left them."""
    config, model_config = run.config, run.model_config
    seed_everything(config.seed)
    net = FERSNet(model_config).to(rt.device)
    disc = Discriminator(model_config).to(rt.device)
    adam = {"lr": config.lr, "betas": config.betas, "weight_decay": config.weight_decay}
    opt_g = torch.optim.Adam(net.parameters(), **adam)
    opt_d = torch.optim.Adam(disc.parameters(), **adam)
    milestones = sorted({max(1, round(f * config.epochs)) for f in config.lr_milestones})
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, milestones, gamma=config.lr_gamma)
    sched_d = torch.optim.lr_scheduler.MultiStepLR(opt_d, milestones, gamma=config.lr_gamma)
    # One scaler for both networks, only for fp16 (bf16 has fp32's range).
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    # Parameters only: BatchNorm statistics averaged alongside belong to no network (CK+48: 5 %
    # validation accuracy where the averaged weights with their own statistics reach 93 %), so
    # recalibrate_batch_norm recomputes them for the average each epoch.
    ema = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(config.ema)) if config.ema else None

    state_extra: dict[str, Any] = {}
    if ckpt is not None:
        net.load_state_dict(ckpt["model_trained"] if ema is not None else ckpt["model"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
        disc.load_state_dict(ckpt["discriminator"])
        opt_g.load_state_dict(ckpt["optimizer_g"])
        opt_d.load_state_dict(ckpt["optimizer_d"])
        sched_g.load_state_dict(ckpt["scheduler_g"])
        sched_d.load_state_dict(ckpt["scheduler_d"])
        if ckpt["grad_scaler"]:
            scaler.load_state_dict(ckpt["grad_scaler"])
        set_rng_state(ckpt["rng"])
        state_extra = {"epoch": ckpt["epoch"], "step": ckpt["step"], "best": dict(ckpt["best"])}

    ddp = {"device_ids": [rt.device.index]} if rt.device.type == "cuda" else {}
    g_step: nn.Module = GeneratorStep(
        net,
        _expression_judge(config, run.manifest.classes, rt.device, run.manifest.channels),
        config.paired_intensities,
    )
    d_train: nn.Module = disc
    if rt.distributed:
        g_step = DistributedDataParallel(g_step, **ddp)
        d_train = DistributedDataParallel(disc, **ddp)
    o = Optimisation(
        g_step=g_step,
        d_train=d_train,
        disc=disc,
        opt_g=opt_g,
        opt_d=opt_d,
        scaler=scaler,
        perceptual=_perceptual_loss(config, rt.device),
    )
    return TrainingState(net, o, sched_g, sched_d, ema=ema, **state_extra)


def _start_run_folder(run: _Run, rt: Runtime, data: _Data, resumed_at: int | None) -> None:
    """Read the metrics of the epochs a resumed run keeps into ``run.metrics``; on the main
    process, write them back with the config and the provenance."""
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
            len(data.train_set),
            len(split.train_subjects),
            len(split.val_rows),
            len(split.val_subjects),
            len(split.heldout_subjects),
            rt.device.type,
            rt.world_size,
        )


def _checkpoint(run: _Run, state: TrainingState, row: dict[str, Any]) -> dict[str, Any]:
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


# --------------------------------------------------------------------------------------------
# devices, precision, processes


@dataclass
class Runtime:
    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        barrier()


@contextlib.contextmanager
def _runtime(config: TrainConfig) -> Iterator[Runtime]:
    """Pick the device, join the process group under torchrun, set determinism and threads;
    restore the process-wide settings afterwards (``train`` may be called from a notebook)."""
    ranks = Ranks.from_env()
    use_cuda = resolve_device(config.device).type == "cuda"
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if use_cuda:
        if ranks.local_world > torch.cuda.device_count():
            # NCCL cannot run two ranks on one GPU.
            raise FesaugError(
                f"torchrun started {ranks.local_world} processes on this node but torch sees "
                f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node {torch.cuda.device_count()} "
                "or --device cpu"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if config.amp else None
    else:
        device, amp_dtype = torch.device("cpu"), None
        # Processes sharing a machine would otherwise each start one thread per core. On a
        # machine busy with other work, fewer threads than cores can be many times faster
        # (OpenMP threads wait for descheduled siblings): set OMP_NUM_THREADS there.
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks.local_world))
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. nearest-upsampling backward) have no deterministic
        # version; on the CPU every op used here is deterministic.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = use_cuda and not config.deterministic
    try:
        with process_group("nccl" if use_cuda else "gloo", device if use_cuda else None):
            yield Runtime(
                device=device, rank=ranks.rank, world_size=ranks.world, local_rank=ranks.local_rank, amp_dtype=amp_dtype
            )
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]


# --------------------------------------------------------------------------------------------
# one training step


class GeneratorStep(nn.Module):
    """Every FERSNet forward pass of one generator update, in one call.

    Returns a dict: ``logits``, the FER logits of the real sources; ``fake``, the synthesized
    images; ``cycled``, their translations back to the source labels; ``judged``, the logits of
    the synthesized images as the expression judge sees them (see ``LossWeights.expression``);
    ``painted`` and ``roughness``, the mean area and total variation of the attention masks;
    ``bending`` and ``displacement``, the total variation and mean length of the flow fields
    (``output="warp"``); ``variants``, see below. Masks and flows of both translations count.

    ``judge``: an independent, frozen classifier (``TrainConfig.expression_classifier``); without
    one, FERSNet's own FER branch judges, with frozen weights in eval mode.

    ``paired_intensities``: the synthesized images are also returned at these intensities
    (``(K, B, C, S, S)``; the edit predicted once, applied K times), for the paired loss to take
    the closest (``TrainConfig.paired_intensities``); empty: the full edit only.
    """

    def __init__(
        self, net: FERSNet, judge: DownstreamClassifier | None = None, paired_intensities: tuple[float, ...] = ()
    ) -> None:
        super().__init__()
        self.net = net
        self.judge = judge
        self.paired_intensities = paired_intensities
        if judge is not None:
            judge.eval().requires_grad_(False)

    def forward(self, x: Tensor, source_label: Tensor, target_label: Tensor) -> dict[str, Tensor]:
        out = self.net(x, target_label)
        fake = out.fake
        assert fake is not None and out.edit is not None  # a target was given
        variants = (
            torch.stack(
                [out.edit.apply(x, torch.full_like(target_label, s, dtype=x.dtype))[0] for s in self.paired_intensities]
            )
            if self.paired_intensities
            else fake[None]
        )
        with _frozen_batch_stats(self.net):
            back = self.net(fake, source_label)
        judged = _frozen_classifier_logits(self.net, fake) if self.judge is None else self._judge(fake)
        masks = [m.float() for m in (out.mask, back.mask) if m is not None]
        if masks:  # 0 without an attention mask
            painted = torch.stack([m.mean() for m in masks]).mean()
            roughness = torch.stack([_total_variation(m) for m in masks]).mean()
        else:
            painted = roughness = x.new_zeros(())
        flows = [f.float() for f in (out.flow, back.flow) if f is not None]
        bending = torch.stack([_total_variation(f) for f in flows]).mean() if flows else x.new_zeros(())
        displacement = torch.stack([f.norm(dim=1).mean() for f in flows]).mean() if flows else x.new_zeros(())
        return {
            "logits": out.logits,
            "fake": fake,
            "cycled": back.fake,
            "judged": judged,
            "painted": painted,
            "roughness": roughness,
            "bending": bending,
            "displacement": displacement,
            "variants": variants,
        }

    def _judge(self, fake: Tensor) -> Tensor:
        assert self.judge is not None
        self.judge.eval()  # train() on the wrapper must not switch its BatchNorm/dropout
        images = (fake.float() + 1) / 2  # the classifiers read [0, 1]
        if images.shape[-1] != self.judge.image_size:
            images = F.interpolate(
                images, size=self.judge.image_size, mode="bilinear", antialias=True, align_corners=False
            )
        # A random view per face (global RNG, so a resumed run repeats it): the loss must hold
        # for the expression, not for one exact arrangement of pixels.
        return self.judge(augment_batch(images, None))


@torch.no_grad()
def recalibrate_batch_norm(net: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Recompute ``net``'s BatchNorm statistics over one pass of ``loader`` (sources translated to
    their targets): an average of weights has no running statistics of its own. SWA's
    ``update_bn`` does the pass; it calls a model on the first element of each batch, so each
    dict batch goes in as a 1-tuple to a wrapper that unpacks it into FERSNet's two arguments."""
    # The wrapper takes net's mode: update_bn puts back the mode it found.
    update_bn(((batch,) for batch in loader), _TranslateBatch(net, device).train(net.training))


class _TranslateBatch(nn.Module):
    def __init__(self, net: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net, self.device = net, device

    def forward(self, batch: dict[str, Tensor]) -> Any:
        return self.net(to_model_range(batch["source"].to(self.device)), batch["target_label"].to(self.device))


def _total_variation(mask: Tensor) -> Tensor:
    return (mask[..., 1:, :] - mask[..., :-1, :]).abs().mean() + (mask[..., :, 1:] - mask[..., :, :-1]).abs().mean()


@contextlib.contextmanager
def _frozen_batch_stats(module: nn.Module) -> Iterator[None]:
    """Forward passes in training mode that leave BatchNorm running statistics unchanged.

    The running statistics classify real faces at evaluation time; letting batches of
    synthesized faces move them would shift the classifier toward the generator's artefacts.
    A momentum of 0 keeps them exactly as they are while batch statistics are still used.
    """
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum


def _frozen_classifier_logits(net: FERSNet, images: Tensor) -> Tensor:
    """FER logits of ``images`` with the weights treated as constants (gradients reach only
    ``images``) and in eval mode, as the trained classifier will judge synthesized faces."""
    weights = {name: p.detach() for name, p in net.named_parameters()}
    was_training = net.training
    net.eval()
    try:
        return functional_call(net, weights, (images,)).logits
    finally:
        net.train(was_training)


def _paired_perceptual(perceptual: nn.Module | None, fake: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean ST-LPIPS between synthesized faces and their same-subject targets over the paired rows."""
    if perceptual is None or not bool(mask.any()):
        return fake.new_zeros((), dtype=torch.float32)
    rows = mask.bool()
    return perceptual((fake[rows].float() + 1) / 2, (target[rows].float() + 1) / 2).mean()


def _masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean L1 over the rows where ``mask`` is set (0 when none is). ``pred`` ``(K, B, …)``: K
    candidates per row, each row scored by its closest one."""
    per_row = (pred - target).abs().flatten(2).mean(2).min(dim=0).values
    return (per_row * mask).sum() / mask.sum().clamp(min=1)


@dataclass
class Optimisation:
    g_step: nn.Module  # GeneratorStep, DDP-wrapped when distributed
    d_train: nn.Module  # the discriminator, DDP-wrapped when distributed
    disc: Discriminator  # the bare discriminator (frozen during generator updates)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    perceptual: nn.Module | None = None  # frozen ST-LPIPS for LossWeights.paired_perceptual


def train_step(
    batch: dict[str, Tensor],
    o: Optimisation,
    w: LossWeights,
    d_steps: int,
    rt: Runtime,
    *,
    label_smoothing: float = 0.0,
) -> dict[str, Tensor]:
    """One discriminator and one FERSNet update on ``batch``: the three steps of the module
    docstring; returns the losses (detached) and the share of paired rows."""
    device = rt.device
    x = to_model_range(batch["source"].to(device, non_blocking=True))
    x_target = to_model_range(batch["target"].to(device, non_blocking=True))
    y = batch["source_label"].to(device, non_blocking=True)
    t = batch["target_label"].to(device, non_blocking=True)
    paired = batch["paired"].to(device, non_blocking=True)

    with rt.autocast():
        g = o.g_step(x, y, t)
    fake = g["fake"]

    # Discriminator: a real image is always shown with its true label, the paired target when
    # there is one (same label as the fake next to it), else the source itself.
    real = torch.where(paired[:, None, None, None], x_target, x)
    real_label = torch.where(paired, t, y)
    o.disc.requires_grad_(True)
    for _ in range(d_steps):
        with rt.autocast():
            # One call on real and fake together: the PatchGAN normalises per image, and DDP
            # wants one forward per backward.
            scores = o.d_train(torch.cat([real, fake.detach()]), torch.cat([real_label, t])).float()
        s_real, s_fake = scores.chunk(2)
        loss_d = 0.5 * (F.mse_loss(s_real, torch.ones_like(s_real)) + F.mse_loss(s_fake, torch.zeros_like(s_fake)))
        o.opt_d.zero_grad(set_to_none=True)
        o.scaler.scale(loss_d).backward()
        o.scaler.step(o.opt_d)
        o.scaler.update()

    # FERSNet: the bare discriminator, frozen, so no gradient or DDP hook touches its weights.
    o.disc.requires_grad_(False)
    with rt.autocast():
        s_gen = o.disc(fake, t).float()
    pair_mask = paired.float()
    losses = {
        "fer": F.cross_entropy(g["logits"].float(), y, label_smoothing=label_smoothing),
        "adversarial": F.mse_loss(s_gen, torch.ones_like(s_gen)),
        "cycle": F.l1_loss(g["cycled"].float(), x),
        "paired": _masked_l1(g["variants"].float(), x_target, pair_mask),
        "paired_perceptual": _paired_perceptual(o.perceptual, fake, x_target, pair_mask),
        "expression": F.cross_entropy(g["judged"].float(), t),
        "attention": g["painted"],
        "mask_smoothness": g["roughness"],
        "flow_smoothness": g["bending"],
        "flow_magnitude": g["displacement"],
        "edit_sparsity": (fake.float() - x).abs().mean(),
    }
    loss_g = sum(getattr(w, name) * value for name, value in losses.items())
    o.opt_g.zero_grad(set_to_none=True)
    o.scaler.scale(loss_g).backward()
    o.scaler.step(o.opt_g)
    o.scaler.update()
    o.disc.requires_grad_(True)
    return {
        **{f"loss_{k}": v.detach() for k, v in losses.items()},
        "loss_g_total": loss_g.detach(),
        "loss_d": loss_d.detach(),
        "paired_fraction": pair_mask.mean(),
    }


# --------------------------------------------------------------------------------------------
# validation and sample images


@torch.no_grad()
def validate(net: FERSNet, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """FER loss / accuracy / balanced accuracy on real validation faces; cycle L1 (source →
    target → source) and, on same-subject pairs, L1 between synthesized and real target image."""
    was_training = net.training
    net.eval()
    num_classes = net.config.num_classes
    correct = np.zeros(num_classes)
    total = np.zeros(num_classes)
    fer_loss = cycle = paired_l1 = 0.0
    n_paired = 0
    for batch in loader:
        x = to_model_range(batch["source"].to(device))
        y, t = batch["source_label"].to(device), batch["target_label"].to(device)
        paired = batch["paired"].to(device)
        out = net(x, t)
        back = net(out.fake, y)
        fer_loss += float(F.cross_entropy(out.logits.float(), y, reduction="sum"))
        hits = (out.logits.argmax(1) == y).cpu().numpy()
        np.add.at(correct, y.cpu().numpy(), hits)
        np.add.at(total, y.cpu().numpy(), 1)
        cycle += float((back.fake - x).abs().flatten(1).mean(1).sum())
        per_pair = (out.fake - to_model_range(batch["target"].to(device))).abs().flatten(1).mean(1)
        paired_l1 += float(per_pair[paired].sum())
        n_paired += int(paired.sum())
    net.train(was_training)
    n = int(total.sum())
    seen = total > 0
    return {
        "val_fer_loss": fer_loss / n,
        "val_fer_acc": float(correct.sum() / n),
        "val_fer_balanced_acc": float((correct[seen] / total[seen]).mean()),
        "val_cycle_l1": cycle / n,
        "val_paired_l1": paired_l1 / n_paired if n_paired else math.nan,
    }


@torch.no_grad()
def save_sample_grid(net: FERSNet, faces: Tensor, path: Path) -> None:
    """One row per face in ``faces`` (uint8, N×C×S×S, gray or colour): the input, then each class synthesized."""
    was_training = net.training
    net.eval()
    num_classes = net.config.num_classes
    device = next(net.parameters()).device
    x = to_model_range(faces.to(device))
    targets = torch.arange(num_classes, device=device).repeat(len(x))
    fakes = net.synthesize(x.repeat_interleave(num_classes, dim=0), targets)
    rows = torch.cat([x[:, None], fakes.view(len(x), num_classes, *x.shape[1:])], dim=1)
    net.train(was_training)
    with atomic_path(path) as tmp:
        save_image((rows.flatten(0, 1).float().cpu() + 1) / 2, tmp, nrow=num_classes + 1, padding=2, format="png")


def _sample_faces(dataset: ManifestDataset, n: int) -> Tensor:
    """``n`` faces for the sample grid, cycling through the classes so rare ones appear too."""
    by_class = [np.flatnonzero(dataset.labels == c).tolist() for c in range(len(dataset.classes))]
    picks: list[int] = []
    while len(picks) < min(n, len(dataset)):
        for rows in by_class:
            if rows and len(picks) < n:
                picks.append(rows.pop(0))
    return dataset.pixels[picks]


# --------------------------------------------------------------------------------------------
# the run folder


def run_config(out_dir: str | os.PathLike) -> TrainConfig:
    """The configuration a run folder was trained with (its ``config.yaml``), to resume it."""
    path = Path(out_dir) / "config.yaml"
    if not path.is_file():
        raise FesaugError(f"{out_dir} has no config.yaml, so it is not a fesaug training run; check --out")
    return load_config(path, recorded=True)


def _prepare_run_dir(out_dir: Path, *, resume: bool, overwrite: bool, rt: Runtime) -> dict[str, Any] | None:
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


def _check_resumable(
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
        return FERSNetConfig.from_record(ckpt["model_config"])
    except (TypeError, FesaugError) as exc:
        raise FesaugError(
            f"{path}: the checkpoint's model config is not understood ({exc}); it was written by another fesaug version"
        ) from None


# --------------------------------------------------------------------------------------------
# the procedure's smaller pieces


def _perceptual_loss(config: TrainConfig, device: torch.device) -> nn.Module | None:
    if not config.loss.paired_perceptual:
        return None
    from fesaug.judges.perceptual import load_perceptual

    return load_perceptual("alex").to(device)


def _expression_judge(
    config: TrainConfig, classes: list[str], device: torch.device, channels: int = 1
) -> DownstreamClassifier | None:
    if config.expression_classifier is None:
        return None
    path = Path(config.expression_classifier)
    if not path.is_file():
        raise FesaugError(
            f"expression_classifier {path}: no such file; give a classifier written by fesaug evaluate "
            "(fold-K/judge.pt) or fesaug.evaluate.downstream.save_classifier"
        )
    judge, judge_classes = load_classifier(path, device=device)
    if judge.channels != channels:
        raise FesaugError(
            f"expression_classifier {path} was trained on {KINDS[judge.channels]} images, the manifest holds "
            f"{KINDS[channels]} ones; train it on this manifest"
        )
    if list(judge_classes) != list(classes):
        raise FesaugError(
            f"expression_classifier {path} knows the classes {', '.join(judge_classes)}, the manifest "
            f"has {', '.join(classes)}; train it on this manifest"
        )
    return judge


def _save_checkpoints(folder: Path, payload: dict[str, Any], is_best: bool) -> None:
    # best.pt before last.pt: a run killed in between resumes from the previous last.pt and
    # repeats this epoch, so best.pt never lags behind the best epoch last.pt records.
    if is_best:
        save_checkpoint(folder / "best.pt", payload)
        with atomic_path(folder / "last.pt") as tmp:
            shutil.copyfile(folder / "best.pt", tmp)
    else:
        save_checkpoint(folder / "last.pt", payload)


def _better(val: dict[str, float], best: dict[str, Any]) -> bool:
    """Higher validation accuracy, then lower validation loss; without validation, the latest."""
    if not val or best["val_fer_acc"] is None:
        return True
    if val["val_fer_acc"] != best["val_fer_acc"]:
        return bool(val["val_fer_acc"] > best["val_fer_acc"])
    return bool(val["val_fer_loss"] < best["val_fer_loss"])


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
