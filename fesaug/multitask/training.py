"""Training EmotionAUNet (issue #6, after AWS-Net): emotions and facial action units together.

``train_multitask(manifest, out_dir, config)`` is the whole procedure; read it from the top.

Data. Real rows of the manifest only; fold ``holdout_fold`` and split ``test`` are held out and
validation subjects are carved from the rest, exactly as for FERSNet
(:func:`fesaug.synthesis.training.split_subjects`). Each row gives an image, an emotion label (-1 = hidden)
and an AU occurrence vector (NaN = the row has no AU labels, or they are hidden). The manifest
needs AU labels: the ``au_occurrence`` column and the ``au_ids`` footer (``ingest --au-labels``).

Label split. AWS-Net learns from data labelled with *either* emotions or AUs. To reproduce that
on a dataset labelled with both, ``emotion_fraction`` / ``au_fraction`` keep each kind of label
for a share of the TRAINING SUBJECTS only (:func:`label_split`): the training subjects are
shuffled with ``seed``; the first ``ceil(emotion_fraction * n)`` keep their emotion labels, the
last ``floor(au_fraction * n)`` their AU labels. The sets are disjoint when the fractions sum to
at most 1 (0.5 / 0.5: every subject keeps exactly one kind, emotions get the odd one out) and
overlap by the excess otherwise; rows of a subject left with neither are not trained on.
Validation and held-out rows always keep all their labels.

One epoch: Adam over shuffled batches (random horizontal flips: the AU occurrence labels are not
lateralised, so a mirrored face keeps its labels) on :func:`~fesaug.models.multitask_loss`, with
``pos_weight`` from the training rows' AU labels; then validation: emotion accuracy and macro-F1,
AU mean F1 over the rows with AU labels. ``best.pt`` has the highest mean of validation
emotion macro-F1 and AU mean F1 (whichever exists); without validation rows, the last epoch.

The run folder holds ``config.json``, ``provenance.json``, ``metrics.jsonl`` (one line per epoch)
and ``checkpoints/{last,best}.pt``: plain dicts that ``torch.load(weights_only=True)`` reads
(keys: see ``_checkpoint``; schema version 1, :data:`fesaug.multitask.records.CHECKPOINT`, through
whose migrations an older checkpoint is read); :func:`load_emotion_au` loads one for inference. Unlike the FERSNet
trainer: no DDP, no mixed precision, no resuming (a run takes minutes; ``overwrite`` restarts it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor

from fesaug import __version__
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.data.splits import Split, split_subjects
from fesaug.models import EmotionAUConfig, EmotionAUNet, au_metrics, au_pos_weight, multitask_loss, to_model_range
from fesaug.multitask.config import MultiTaskConfig, MultiTaskResult
from fesaug.multitask.data import Faces, au_occurrence, label_split
from fesaug.multitask.records import CHECKPOINT
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path, atomic_write_text, check_out_folder, file_sha256
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import json_number, seed_everything, write_metrics

__all__ = ["FORMAT", "EmotionAUPredictor", "load_emotion_au", "train_multitask"]

log = logging.getLogger("fesaug.synthesis.training")  # the CLI shows this logger's per-epoch lines
FORMAT = "fesaug-emotion-au-checkpoint"


# --------------------------------------------------------------------------------------------
# the procedure


def train_multitask(
    manifest: str | os.PathLike | Manifest,
    out_dir: str | os.PathLike,
    config: MultiTaskConfig | None = None,
    *,
    overwrite: bool = False,
) -> MultiTaskResult:
    """Train an EmotionAUNet on the real rows of ``manifest``; write the run folder ``out_dir``."""
    config = config or MultiTaskConfig()
    out_dir, ckpt_dir = Path(out_dir), Path(out_dir) / "checkpoints"
    manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    au_occurrence(manifest, np.zeros(0, dtype=np.int64))  # fail early without AU labels
    model_config = _model_config(config, manifest)
    device = resolve_device(config.device)
    with output_lock(out_dir):
        _prepare_run_dir(out_dir, overwrite)
        data = _RunData.load(manifest, config, model_config.image_size)
        pos_weight = au_pos_weight(data.train.aus).to(device)

        seed_everything(config.seed)
        net = EmotionAUNet(model_config).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        inputs = _write_run_records(out_dir, manifest, config, data)
        _log_start(model_config, data, device)

        metrics: list[dict[str, Any]] = []
        best_epoch, best_score = 0, -math.inf
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
            sums = _train_epoch(net, opt, data, config, pos_weight, device, epoch)
            scores = evaluate(net, data.val, device) if data.val is not None else {}
            available = [
                v for k, v in scores.items() if k in ("val_emotion_macro_f1", "val_au_mean_f1") and math.isfinite(v)
            ]
            score = float(np.mean(available)) if available else math.inf  # no validation: the latest epoch
            is_best = score > best_score or not available
            if is_best:
                best_epoch, best_score = epoch, score
            row = {
                "epoch": epoch,
                **{f"loss_{k}": json_number(v) for k, v in sums.items()},
                **{k: json_number(v) for k, v in scores.items()},
                "val_score": json_number(score),
                "seconds": round(time.perf_counter() - t0, 3),
                "best": is_best,
            }
            metrics.append(row)
            write_metrics(out_dir / "metrics.jsonl", metrics)
            best = {"epoch": best_epoch, "val_score": json_number(best_score)}
            _save(ckpt_dir, _checkpoint(net, config, manifest, inputs, epoch, best, row), is_best)
            _log_epoch(epoch, config.epochs, sums, scores, row["seconds"])

        return MultiTaskResult(
            run_dir=out_dir,
            last_checkpoint=ckpt_dir / "last.pt",
            best_checkpoint=ckpt_dir / "best.pt",
            best_epoch=best_epoch,
            metrics=metrics,
            config=config,
            split=data.split,
        )


def _model_config(config: MultiTaskConfig, manifest: Manifest) -> EmotionAUConfig:
    """The model: ``config.model`` over the AWS sharing default, sized by the manifest's classes,
    AUs and channels (gray or colour)."""
    sizes = {
        "num_classes": len(manifest.classes),
        "num_aus": len(manifest.meta["au_ids"]),
        "in_channels": manifest.channels,
    }
    try:
        return EmotionAUConfig(**{"sharing": "aws", **config.model, **sizes})
    except TypeError as exc:
        raise FesaugError(f"unknown model setting ({exc}); see EmotionAUConfig's fields") from None


@dataclass
class _RunData:
    """Who is trained on, validated on and held out; which training subjects keep which labels;
    the loaded faces, and how many whole batches an epoch has."""

    split: Split
    emotion_subjects: set[str]
    au_subjects: set[str]
    train: Faces
    val: Faces | None
    n_batches: int

    @classmethod
    def load(cls, manifest: Manifest, config: MultiTaskConfig, size: int) -> _RunData:
        split = split_subjects(manifest, config.holdout_fold, config.val_fraction, config.seed)
        emo_subjects, au_subjects = label_split(
            split.train_subjects, config.emotion_fraction, config.au_fraction, config.seed
        )
        subjects = manifest.df["subject_id"].astype(str).to_numpy()
        train_rows = split.train_rows[np.isin(subjects[split.train_rows], sorted(emo_subjects | au_subjects))]
        train = Faces.load(manifest, train_rows, size, emo_subjects, au_subjects)
        val = Faces.load(manifest, split.val_rows, size) if len(split.val_rows) else None
        if torch.isnan(train.aus).all():
            raise FesaugError(f"{manifest.path}: no training row has AU labels; ingest with --au-labels")
        n_batches = len(train.labels) // config.batch_size  # drop the last partial batch (BatchNorm)
        if n_batches == 0:
            raise FesaugError(
                f"{len(train.labels)} training image(s) do not fill one batch of {config.batch_size}; lower "
                "--batch-size"
            )
        return cls(split, emo_subjects, au_subjects, train, val, n_batches)


def _train_epoch(
    net: EmotionAUNet,
    opt: torch.optim.Optimizer,
    data: _RunData,
    config: MultiTaskConfig,
    pos_weight: Tensor,
    device: torch.device,
    epoch: int,
) -> dict[str, float]:
    """One pass over the shuffled training faces; the mean losses of its batches."""
    train, n_batches = data.train, data.n_batches
    net.train()
    gen = torch.Generator().manual_seed(config.seed * 100_003 + epoch)  # data order and flips
    order = torch.randperm(len(train.labels), generator=gen)[: n_batches * config.batch_size]
    sums = {"emotion": 0.0, "au": 0.0, "total": 0.0}
    for idx in order.view(n_batches, config.batch_size):
        x = to_model_range(train.pixels[idx])
        if config.hflip:
            flip = torch.rand(len(idx), generator=gen) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        losses = multitask_loss(
            net(x.to(device)),
            train.labels[idx].to(device),
            train.aus[idx].to(device),
            pos_weight=pos_weight,
            weights=(1.0, config.au_weight),
        )
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        for k in sums:
            sums[k] += losses[k].item() / n_batches
    if not all(math.isfinite(v) for v in sums.values()):
        raise FesaugError(f"training diverged in epoch {epoch} (a loss is not finite); try a lower --lr")
    return sums


def _write_run_records(out_dir: Path, manifest: Manifest, config: MultiTaskConfig, data: _RunData) -> dict[str, Any]:
    """Write ``config.json`` and ``provenance.json``; return the manifest and split records the
    checkpoints carry too."""
    inputs = {
        "manifest": {"path": str(manifest.path), "sha256": file_sha256(manifest.path)},
        "split": {
            **data.split.to_dict(),
            "emotion_subjects": sorted(data.emotion_subjects),
            "au_subjects": sorted(data.au_subjects),
        },
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    record = {**provenance("train", config.to_dict()), "tasks": ["emotion", "au"], **inputs}
    atomic_write_text(out_dir / "provenance.json", json.dumps(record, indent=2, default=str) + "\n")
    return inputs


def _checkpoint(
    net: EmotionAUNet,
    config: MultiTaskConfig,
    manifest: Manifest,
    inputs: dict[str, Any],
    epoch: int,
    best: dict[str, Any],
    row: dict[str, Any],
) -> dict[str, Any]:
    """Checkpoint keys: format, schema_version, fesaug_version, epoch, model (state dict), model_config,
    config, classes, au_ids, image_size, manifest {path, sha256}, split (Split.to_dict() plus
    emotion_subjects / au_subjects), best {epoch, val_score}, metrics (that epoch's line)."""
    return CHECKPOINT.stamp(
        {
            "format": FORMAT,
            "fesaug_version": __version__,
            "epoch": epoch,
            "model": net.state_dict(),
            "model_config": _plain(dataclasses.asdict(net.config)),
            "config": config.to_dict(),
            "classes": manifest.classes,
            "au_ids": [int(a) for a in manifest.meta["au_ids"]],
            "image_size": net.config.image_size,
            **inputs,
            "best": best,
            "metrics": row,
        }
    )


def _log_start(model_config: EmotionAUConfig, data: _RunData, device: torch.device) -> None:
    log.info(
        "training EmotionAUNet (sharing %s) on %d images of %d subjects (%d with emotion labels, %d with AU "
        "labels; validation: %d images; held out: %d subjects) on %s",
        model_config.sharing,
        len(data.train.labels),
        len(data.emotion_subjects | data.au_subjects),
        len(data.emotion_subjects),
        len(data.au_subjects),
        len(data.split.val_rows),
        len(data.split.heldout_subjects),
        device.type,
    )


def _log_epoch(epoch: int, epochs: int, sums: dict[str, float], scores: dict[str, float], seconds: float) -> None:
    log.info(
        "epoch %d/%d  emotion %.3f  au %.3f%s  %.1f s",
        epoch,
        epochs,
        sums["emotion"],
        sums["au"],
        f"  val acc {scores['val_emotion_acc']:.3f}  F1 {scores['val_emotion_macro_f1']:.3f}  "
        f"AU F1 {scores['val_au_mean_f1']:.3f}"
        if scores
        else "",
        seconds,
    )


@torch.no_grad()
def predict(net: EmotionAUNet, pixels: Tensor, device: torch.device, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """Emotion probabilities (softmax) and AU probabilities (sigmoid) of uint8 / [0, 1] images, on the CPU."""
    was_training = net.training
    net.eval()
    emo, au = [], []
    for start in range(0, len(pixels), batch_size):
        out = net(to_model_range(pixels[start : start + batch_size].to(device)))
        emo.append(torch.softmax(out.emotion_logits.float(), 1).cpu())
        au.append(torch.sigmoid(out.au_logits.float()).cpu())
    net.train(was_training)
    c = net.config
    return (torch.cat(emo) if emo else torch.empty(0, c.num_classes)), (
        torch.cat(au) if au else torch.empty(0, c.num_aus)
    )


def evaluate(net: EmotionAUNet, faces: Faces, device: torch.device) -> dict[str, float]:
    """Emotion accuracy and macro-F1 over rows with a label; AU mean F1 over known AU labels (NaN if none)."""
    emo, au = predict(net, faces.pixels, device)
    has = faces.labels >= 0
    y, pred = faces.labels[has].numpy(), emo[has].argmax(1).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn warns about classes missing from a small validation set
        macro_f1 = float(f1_score(y, pred, average="macro", zero_division=0)) if len(y) else math.nan
    return {
        "val_emotion_acc": float((y == pred).mean()) if len(y) else math.nan,
        "val_emotion_macro_f1": macro_f1,
        "val_au_mean_f1": float(au_metrics(au, faces.aus)["mean_f1"]),
    }


# --------------------------------------------------------------------------------------------
# files and devices


def _prepare_run_dir(out_dir: Path, overwrite: bool) -> None:
    check_out_folder(out_dir, "for the run")
    existing = [p for p in (out_dir / "checkpoints" / "last.pt", out_dir / "checkpoints" / "best.pt") if p.exists()]
    if existing and not overwrite:
        raise FesaugError(
            f"{out_dir} already holds a training run ({existing[0]}); pass --overwrite to start over "
            "(multi-task runs cannot be resumed) or choose another --out"
        )
    if overwrite:
        shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
        (out_dir / "metrics.jsonl").unlink(missing_ok=True)


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


def _save(ckpt_dir: Path, payload: dict[str, Any], is_best: bool) -> None:
    """``last.pt``, and ``best.pt`` too when this epoch is the best so far."""
    with atomic_path(ckpt_dir / "last.pt") as tmp:
        torch.save(payload, tmp)
    if is_best:
        with atomic_path(ckpt_dir / "best.pt") as tmp:
            shutil.copyfile(ckpt_dir / "last.pt", tmp)


# --------------------------------------------------------------------------------------------
# inference


class EmotionAUPredictor:
    """A trained EmotionAUNet: ``predict(images)`` → (emotion probabilities, AU probabilities).

    Attributes: ``classes``, ``au_ids`` (FACS numbers, the order of the AU probabilities),
    ``image_size``, ``channels`` (1 gray, 3 colour: what it was trained on), ``epoch``, ``split``,
    ``config`` (the training settings), ``net``, ``device``.
    """

    def __init__(self, net: EmotionAUNet, ckpt: dict[str, Any], device: torch.device) -> None:
        self.net, self.device = net, device
        self.classes: list[str] = list(ckpt["classes"])
        self.au_ids: list[int] = [int(a) for a in ckpt["au_ids"]]
        self.image_size: int = int(ckpt["image_size"])
        self.channels: int = net.config.in_channels
        self.epoch: int = int(ckpt["epoch"])
        self.split: dict[str, Any] = ckpt["split"]
        self.config: dict[str, Any] = ckpt["config"]

    def predict(self, images: Tensor | np.ndarray, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """``images`` uint8 in [0, 255] or float in [0, 1], (B, C, S, S) with C = ``channels`` and
        S = ``image_size``. Returns CPU tensors (B, len(classes)) softmax and (B, len(au_ids))
        sigmoid probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        shape = (self.channels, self.image_size, self.image_size)
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != shape:
            raise FesaugError(
                f"expected images of shape (B, {', '.join(map(str, shape))}), got "
                f"{tuple(getattr(x, 'shape', ()))}; resize faces to the model's image_size first"
            )
        return predict(self.net, x, self.device, batch_size)


def load_emotion_au(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> EmotionAUPredictor:
    """Load ``checkpoints/best.pt`` (or last.pt) of a ``train_multitask`` run; ``device``: CUDA if available."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FesaugError(
            f"checkpoint {path} does not exist; pass checkpoints/best.pt of a `fesaug train --tasks emotion,au` run"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FesaugError(f"{path} is not a readable checkpoint ({type(exc).__name__}); it may be truncated") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise FesaugError(
            f"{path} is not an emotion + AU checkpoint; use one written by `fesaug train --tasks emotion,au`"
        )
    if ckpt.get("schema_version") is None and ckpt.get("format_version") != 1:
        raise FesaugError(
            f"{path}: emotion + AU checkpoint format version {ckpt.get('format_version')!r} is not supported; use "
            f"the fesaug version that wrote it ({ckpt.get('fesaug_version')})"
        )
    ckpt = CHECKPOINT.read(ckpt, where=str(path))
    device = resolve_device(device)
    try:
        net = EmotionAUNet(EmotionAUConfig(**ckpt["model_config"]))
        net.load_state_dict(ckpt["model"])
    except (TypeError, KeyError, RuntimeError, FesaugError) as exc:
        raise FesaugError(
            f"{path}: the model does not fit its config ({str(exc).splitlines()[0]}); the checkpoint is "
            "damaged or from another fesaug version"
        ) from None
    return EmotionAUPredictor(net.to(device).eval(), ckpt, device)
