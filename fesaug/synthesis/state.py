"""The networks, optimisers and schedules of a training run, as they start or as a checkpoint left
them (:func:`training_state`), and how far the run got (:class:`TrainingState`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from fesaug.data.images import KINDS
from fesaug.evaluate.downstream import DownstreamClassifier, load_classifier
from fesaug.models import Discriminator, FERSNet
from fesaug.synthesis.checkpoint import set_rng_state
from fesaug.synthesis.config import TrainConfig
from fesaug.synthesis.rundir import Run
from fesaug.synthesis.runtime import Runtime
from fesaug.synthesis.step import GeneratorStep, Optimisation
from fesaug.utils.errors import FesaugError
from fesaug.utils.runlog import seed_everything

__all__ = ["TrainingState", "training_state"]


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


def training_state(run: Run, rt: Runtime, ckpt: dict[str, Any] | None) -> TrainingState:
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
