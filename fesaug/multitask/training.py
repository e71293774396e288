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
(keys: see ``_checkpoint``); :func:`load_emotion_au` loads one for inference. Unlike the FERSNet
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import f1_score
from torch import Tensor

from fesaug import __version__
from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import Manifest, read_holdout_names, read_manifest
from fesaug.data.splits import Split, split_subjects
from fesaug.models import EmotionAUConfig, EmotionAUNet, au_metrics, au_pos_weight, multitask_loss, to_model_range
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path, atomic_write_text, check_out_folder, file_sha256
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import json_number, seed_everything, write_metrics

__all__ = [
    "EmotionAUPredictor",
    "MultiTaskConfig",
    "MultiTaskResult",
    "label_split",
    "load_emotion_au",
    "train_multitask",
]

log = logging.getLogger("fesaug.synthesis.training")  # the CLI shows this logger's per-epoch lines
FORMAT, FORMAT_VERSION = "fesaug-emotion-au-checkpoint", 1


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
        fixed = {"num_classes", "num_aus"} & set(self.model)
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


# --------------------------------------------------------------------------------------------
# data


def label_split(
    subjects: list[str] | set[str], emotion_fraction: float | None, au_fraction: float | None, seed: int
) -> tuple[set[str], set[str]]:
    """(subjects keeping emotion labels, subjects keeping AU labels); see the module docstring."""
    order = sorted(set(subjects))
    n = len(order)
    order = [order[i] for i in np.random.default_rng([seed, 6]).permutation(n)]
    n_emotion = n if emotion_fraction is None else math.ceil(emotion_fraction * n - 1e-9)
    n_au = n if au_fraction is None else math.floor(au_fraction * n + 1e-9)
    if n_emotion == 0 or n_au == 0:
        raise FesaugError(
            f"emotion_fraction={emotion_fraction} / au_fraction={au_fraction} of {n} training subject(s) "
            "leaves one task without any labelled subject; raise the fraction"
        )
    return set(order[:n_emotion]), set(order[n - n_au :])


def au_occurrence(manifest: Manifest, rows: np.ndarray) -> np.ndarray:
    """AU occurrence (len(rows), len(au_ids)) float32, NaN for rows without AU labels."""
    au_ids = manifest.meta.get("au_ids")
    if "au_occurrence" not in manifest.df.columns or not au_ids:
        raise FesaugError(
            f"{manifest.path} has no AU labels (no au_occurrence column / au_ids footer); "
            "ingest with --au-labels, or train emotions alone with --tasks emotion,synthesis"
        )
    out = np.full((len(rows), len(au_ids)), np.nan, dtype=np.float32)
    for k, value in enumerate(manifest.df["au_occurrence"].iloc[rows]):
        if value is not None and len(value) == len(au_ids):
            out[k] = np.asarray(value, dtype=np.float32)
        elif value is not None:
            raise FesaugError(
                f"{manifest.path}: row {rows[k]} has {len(value)} AU values but au_ids lists {len(au_ids)}; "
                "re-create the manifest"
            )
    return out


@dataclass
class Faces:
    """Images (uint8, N×1×S×S), emotion labels (-1 = hidden) and AU targets (NaN = unknown)."""

    pixels: Tensor
    labels: Tensor
    aus: Tensor

    @classmethod
    def load(
        cls,
        manifest: Manifest,
        rows: np.ndarray,
        size: int,
        emotion_subjects: set[str] | None = None,
        au_subjects: set[str] | None = None,
    ) -> Faces:
        """Rows ``rows``; emotion / AU labels kept only for these subjects (None = all)."""
        base = ManifestDataset(manifest, rows=rows, image_size=size)
        labels, aus = base.labels.copy(), au_occurrence(manifest, base.rows)
        if emotion_subjects is not None:
            labels[[s not in emotion_subjects for s in base.subjects]] = -1
        if au_subjects is not None:
            aus[[s not in au_subjects for s in base.subjects]] = np.nan
        return cls(base.pixels, torch.from_numpy(labels), torch.from_numpy(aus))


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
    classes, au_ids = manifest.classes, [int(a) for a in manifest.meta["au_ids"]]
    try:
        model_config = EmotionAUConfig(
            **{"sharing": "aws", **config.model, "num_classes": len(classes), "num_aus": len(au_ids)}
        )
    except TypeError as exc:
        raise FesaugError(f"unknown model setting ({exc}); see EmotionAUConfig's fields") from None
    device = resolve_device(config.device)
    with output_lock(out_dir):
        _prepare_run_dir(out_dir, overwrite)

        # Who is trained on, validated on, held out; which training subjects keep which labels.
        split = split_subjects(manifest, config.holdout_fold, config.val_fraction, config.seed)
        emo_subjects, au_subjects = label_split(
            split.train_subjects, config.emotion_fraction, config.au_fraction, config.seed
        )
        subjects = manifest.df["subject_id"].astype(str).to_numpy()
        train_rows = split.train_rows[np.isin(subjects[split.train_rows], sorted(emo_subjects | au_subjects))]
        train = Faces.load(manifest, train_rows, model_config.image_size, emo_subjects, au_subjects)
        val = Faces.load(manifest, split.val_rows, model_config.image_size) if len(split.val_rows) else None
        if torch.isnan(train.aus).all():
            raise FesaugError(f"{manifest.path}: no training row has AU labels; ingest with --au-labels")
        n_batches = len(train.labels) // config.batch_size  # drop the last partial batch (BatchNorm)
        if n_batches == 0:
            raise FesaugError(
                f"{len(train.labels)} training image(s) do not fill one batch of {config.batch_size}; lower "
                "--batch-size"
            )
        pos_weight = au_pos_weight(train.aus).to(device)

        seed_everything(config.seed)
        net = EmotionAUNet(model_config).to(device)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)

        manifest_info = {"path": str(manifest.path), "sha256": file_sha256(manifest.path)}
        split_info = {**split.to_dict(), "emotion_subjects": sorted(emo_subjects), "au_subjects": sorted(au_subjects)}
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        record = {
            **provenance("train", config.to_dict()),
            "tasks": ["emotion", "au"],
            "manifest": manifest_info,
            "split": split_info,
        }
        atomic_write_text(out_dir / "provenance.json", json.dumps(record, indent=2, default=str) + "\n")
        log.info(
            "training EmotionAUNet (sharing %s) on %d images of %d subjects (%d with emotion labels, %d with AU "
            "labels; "
            "validation: %d images; held out: %d subjects) on %s",
            model_config.sharing,
            len(train.labels),
            len(emo_subjects | au_subjects),
            len(emo_subjects),
            len(au_subjects),
            len(split.val_rows),
            len(split.heldout_subjects),
            device.type,
        )

        metrics: list[dict[str, Any]] = []
        best_epoch, best_score = 0, -math.inf
        for epoch in range(1, config.epochs + 1):
            t0 = time.perf_counter()
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

            scores = evaluate(net, val, device) if val is not None else {}
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
            payload = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "fesaug_version": __version__,
                "epoch": epoch,
                "model": net.state_dict(),
                "model_config": _plain(dataclasses.asdict(model_config)),
                "config": config.to_dict(),
                "classes": classes,
                "au_ids": au_ids,
                "image_size": model_config.image_size,
                "manifest": manifest_info,
                "split": split_info,
                "best": {"epoch": best_epoch, "val_score": json_number(best_score)},
                "metrics": row,
            }
            _save(ckpt_dir / "last.pt", payload)
            if is_best:
                with atomic_path(ckpt_dir / "best.pt") as tmp:
                    shutil.copyfile(ckpt_dir / "last.pt", tmp)
            log.info(
                "epoch %d/%d  emotion %.3f  au %.3f%s  %.1f s",
                epoch,
                config.epochs,
                sums["emotion"],
                sums["au"],
                f"  val acc {scores['val_emotion_acc']:.3f}  F1 {scores['val_emotion_macro_f1']:.3f}  "
                f"AU F1 {scores['val_au_mean_f1']:.3f}"
                if scores
                else "",
                row["seconds"],
            )

        return MultiTaskResult(
            run_dir=out_dir,
            last_checkpoint=ckpt_dir / "last.pt",
            best_checkpoint=ckpt_dir / "best.pt",
            best_epoch=best_epoch,
            metrics=metrics,
            config=config,
            split=split,
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


def _save(path: Path, payload: dict[str, Any]) -> None:
    """Checkpoint keys: format, format_version, fesaug_version, epoch, model (state dict), model_config,
    config, classes, au_ids, image_size, manifest {path, sha256}, split (Split.to_dict() plus
    emotion_subjects / au_subjects), best {epoch, val_score}, metrics (that epoch's line)."""
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


# --------------------------------------------------------------------------------------------
# inference


class EmotionAUPredictor:
    """A trained EmotionAUNet: ``predict(images)`` → (emotion probabilities, AU probabilities).

    Attributes: ``classes``, ``au_ids`` (FACS numbers, the order of the AU probabilities),
    ``image_size``, ``epoch``, ``split``, ``config`` (the training settings), ``net``, ``device``.
    """

    def __init__(self, net: EmotionAUNet, ckpt: dict[str, Any], device: torch.device) -> None:
        self.net, self.device = net, device
        self.classes: list[str] = list(ckpt["classes"])
        self.au_ids: list[int] = [int(a) for a in ckpt["au_ids"]]
        self.image_size: int = int(ckpt["image_size"])
        self.epoch: int = int(ckpt["epoch"])
        self.split: dict[str, Any] = read_holdout_names(ckpt["split"])  # heldout_folds of older versions
        self.config: dict[str, Any] = ckpt["config"]

    def predict(self, images: Tensor | np.ndarray, *, batch_size: int = 256) -> tuple[Tensor, Tensor]:
        """``images`` uint8 in [0, 255] or float in [0, 1], (B, 1, S, S) with S = ``image_size``.
        Returns CPU tensors (B, len(classes)) softmax and (B, len(au_ids)) sigmoid probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if not isinstance(x, Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (1, self.image_size, self.image_size):
            raise FesaugError(
                f"expected images of shape (B, 1, {self.image_size}, {self.image_size}), got "
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT or ckpt.get("format_version") != FORMAT_VERSION:
        raise FesaugError(
            f"{path} is not an emotion + AU checkpoint (version {FORMAT_VERSION}); "
            "use one written by `fesaug train --tasks emotion,au`"
        )
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
