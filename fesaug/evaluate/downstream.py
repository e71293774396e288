"""Downstream facial-expression classifiers, independent of FERSNet, for ``fesaug evaluate``.

Balancing by synthesis is only worth something if a classifier that never saw FERSNet learns
better from the balanced data than from the real data alone or from plain oversampling. This
module is that classifier and its yardsticks: two architectures (:func:`make_classifier`), one
training loop with model selection on validation macro-F1 (:func:`fit`), inference
(:func:`predict_proba`, :func:`features` for feature-space comparisons of synthetic and real
faces), the metrics (:func:`classification_report`, computed by scikit-learn so they match what
readers compute themselves) and the random-oversampling baseline (:func:`random_oversample`).

Images go in as the ``uint8`` ``N×C×S×S`` tensors of ``ManifestDataset.pixels`` (C: 1 or 3); the model
stores the training mean and standard deviation it standardises with, so callers never have
to carry them around.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
from torch import Tensor, nn
from torchvision.transforms import v2

from fesaug.data.images import KINDS
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path
from fesaug.utils.killpoints import kill_point

__all__ = [
    "CLASSIFIERS",
    "DownstreamClassifier",
    "DownstreamConfig",
    "FitResult",
    "classification_report",
    "features",
    "fit",
    "load_classifier",
    "make_classifier",
    "predict_proba",
    "random_oversample",
    "save_classifier",
]

CLASSIFIERS = ("small-cnn", "resnet18")


# --------------------------------------------------------------------------------------------
# models


class DownstreamClassifier(nn.Module):
    """A classifier ``net`` whose last module is the linear ``head``, plus the standardisation.

    ``forward`` takes float images in [0, 1] and standardises them with the training set's
    ``mean`` and ``std`` (buffers, so they travel with ``state_dict`` and ``.to(device)``).
    Keeping ``head`` separate lets :func:`features` read the penultimate layer with a hook on it,
    whatever the architecture. ``channels``: the images' (1 gray, 3 colour).
    """

    def __init__(
        self, net: nn.Module, head: nn.Linear, name: str, num_classes: int, image_size: int, channels: int = 1
    ) -> None:
        super().__init__()
        self.net, self.name, self.num_classes, self.image_size = net, name, num_classes, image_size
        self.channels = channels
        # A plain attribute, not a second registration: head already lives inside net, and
        # registering it again would duplicate its weights in every state_dict.
        object.__setattr__(self, "head", head)
        self.register_buffer("mean", torch.tensor(0.0))
        self.register_buffer("std", torch.tensor(1.0))

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def _small_cnn(num_classes: int, channels: int) -> tuple[nn.Module, nn.Linear]:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(), nn.MaxPool2d(2)]

    head = nn.Linear(96, num_classes)
    net = nn.Sequential(
        *block(channels, 16),
        *block(16, 32),
        *block(32, 64),
        *block(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        head,
    )
    return net, head


def _resnet18(num_classes: int, channels: int) -> tuple[nn.Module, nn.Linear]:
    from torchvision.models import resnet18

    net = resnet18(weights=None, num_classes=num_classes)
    # ImageNet's stem (7×7 stride-2 conv, then a stride-2 max-pool) shrinks a 48–64 px face to
    # 12–16 px before the first residual block and to 2×2 at the end, discarding the fine detail
    # (mouth corners, brow furrows) that separates expressions. A 3×3 stride-1 stem without the
    # pool keeps the full resolution into layer1, ending at 6–8 px (the CIFAR ResNet recipe).
    net.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    return net, net.fc


def make_classifier(name: str, num_classes: int, image_size: int, channels: int = 1) -> DownstreamClassifier:
    """A fresh, randomly initialised classifier of ``image_size`` px faces with ``channels``
    channels (1 gray, 3 colour).

    ``"small-cnn"``: four conv/BN/ReLU/max-pool blocks and global pooling (about 100k
    parameters; the benchmark's demo classifier), fast enough for CPU folds. ``"resnet18"``:
    torchvision's ResNet-18 with a small-image stem, the usual stronger FER baseline. Both end in
    global average pooling, so any ``image_size`` ≥ 16 works; it is checked and recorded.
    """
    builders = {"small-cnn": _small_cnn, "resnet18": _resnet18}
    if name not in builders:
        raise FesaugError(f"unknown downstream classifier {name!r}; choose one of: {', '.join(CLASSIFIERS)}")
    if num_classes < 2:
        raise FesaugError(f"a classifier needs at least 2 classes, got {num_classes}")
    if image_size < 16:
        raise FesaugError(f"image_size {image_size} is too small for the downstream classifiers (>= 16)")
    net, head = builders[name](num_classes, channels)
    return DownstreamClassifier(net, head, name, num_classes, image_size, channels)


FORMAT, FORMAT_VERSION = "fesaug-downstream-classifier", 1


def save_classifier(model: DownstreamClassifier, path: str | os.PathLike, classes: Sequence[str]) -> None:
    """Write ``model`` (weights, architecture, size, class names) atomically, loadable with
    ``torch.load(weights_only=True)``; ``fesaug evaluate`` keeps one per condition and fold."""
    if len(classes) != model.num_classes:
        raise FesaugError(f"{len(classes)} class names for a {model.num_classes}-class model")
    with atomic_path(path) as tmp:
        torch.save(
            {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "state_dict": model.state_dict(),
                "model": model.name,
                "num_classes": model.num_classes,
                "image_size": model.image_size,
                "channels": model.channels,
                "classes": list(classes),
            },
            tmp,
        )


def load_classifier(
    path: str | os.PathLike, device: str | torch.device | None = None
) -> tuple[DownstreamClassifier, list[str]]:
    """A classifier written by :func:`save_classifier`, in eval mode, and its class names.
    ``device``: CUDA if available."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FesaugError(
            f"cannot read the classifier {path} ({type(exc).__name__}); pass a fold-K/<condition>.pt "
            "written by fesaug evaluate"
        ) from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or saved.get("format_version") != FORMAT_VERSION:
        raise FesaugError(
            f"{path} is not a fesaug downstream classifier (version {FORMAT_VERSION}); pass a "
            "fold-K/<condition>.pt written by fesaug evaluate"
        )
    channels = saved.get("channels", 1)  # files written before colour have none: gray
    model = make_classifier(saved["model"], saved["num_classes"], saved["image_size"], channels)
    model.load_state_dict(saved["state_dict"])
    device = resolve_device(device)
    return model.to(device).eval(), list(saved["classes"])


# --------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class DownstreamConfig:
    """Training settings. ``augment``: per-sample horizontal flip, shift of up to ±4 px,
    rotation up to ±10° and scale 0.9–1.1, drawn from a generator seeded by ``seed``.
    ``erasing``: after that, each image loses a random rectangle (2–20 % of it, torchvision's
    ``RandomErasing``) with this probability, so no single region (the mouth) decides alone.
    ``label_smoothing``: cross-entropy against targets smoothed by this much (0: none).

    ``epochs`` and ``label_smoothing`` were chosen on CK+48's validation subjects (folds 0-2,
    3 seeds; ``bench/results/downstream_recipes_ckplus.md``): 40 epochs without smoothing, the
    defaults until then, left the baseline every balancing method is compared with undertrained
    (validation macro-F1 78.4 against 88.9)."""

    model: str = "small-cnn"
    epochs: int = 80
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 5e-4
    image_size: int = 64
    augment: bool = True
    erasing: float = 0.0
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            ("model", self.model in CLASSIFIERS),
            ("epochs", self.epochs >= 1),
            ("batch_size", self.batch_size >= 2),
            ("lr", self.lr > 0),
            ("weight_decay", self.weight_decay >= 0),
            ("image_size", self.image_size >= 16),
            ("erasing", 0 <= self.erasing <= 1),
            ("label_smoothing", 0 <= self.label_smoothing < 1),
            ("device", self.device in ("auto", "cpu", "cuda")),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise FesaugError(
                f"invalid downstream setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)} "
                f"(model one of {', '.join(CLASSIFIERS)}, epochs >= 1, batch_size >= 2, lr > 0, "
                "weight_decay >= 0, image_size >= 16, erasing in [0, 1], label_smoothing in [0, 1), "
                "device auto/cpu/cuda)"
            )


@dataclass
class FitResult:
    """The selected model (in eval mode), one ``history`` dict per epoch (``epoch``,
    ``train_loss``, ``lr`` and, with validation data, ``val_accuracy`` and ``val_macro_f1``) and
    the 1-based epoch whose weights ``model`` holds."""

    model: DownstreamClassifier
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


def augment_batch(x: Tensor, gen: torch.Generator | None) -> Tensor:
    """Randomly flip, shift (±4 px), rotate (±10°) and scale (0.9–1.1) each image of a float batch.

    One ``affine_grid``/``grid_sample`` (differentiable, so a loss can be taken through it) with
    per-sample parameters drawn from ``gen`` (``None``: torch's global generator) instead of
    ``torchvision.transforms.v2``: v2 draws one set of parameters per call from torch's global
    generator, so per-sample augmentation would need a Python loop and seeding would touch
    global state. Border padding repeats edge pixels rather than inventing black margins.
    """
    n, size = len(x), x.shape[-1]
    u = torch.rand(n, 5, generator=gen)
    angle = (u[:, 0] * 2 - 1) * math.radians(10)
    scale = 0.9 + 0.2 * u[:, 1]
    shift = (u[:, 2:4] * 2 - 1) * (2 * 4 / size)  # grid coordinates span 2 over the image
    flip = torch.where(u[:, 4] < 0.5, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1
    ).to(x)
    grid = nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def fit(
    train_x: Tensor,
    train_y: Tensor | np.ndarray,
    val_x: Tensor | None = None,
    val_y: Tensor | np.ndarray | None = None,
    config: DownstreamConfig = DownstreamConfig(),
    sample_weights: Tensor | np.ndarray | None = None,
    num_classes: int | None = None,
    init: DownstreamClassifier | None = None,
    epoch_size: int | None = None,
) -> FitResult:
    """Train ``config.model`` on ``uint8`` ``N×C×S×S`` images (gray or colour) with cross-entropy.

    Adam with a per-step cosine learning-rate decay. With ``val_x``/``val_y`` (validation
    subjects, e.g. from :func:`fesaug.synthesis.training.split_subjects`) the returned model holds the
    weights of the epoch with the best validation macro-F1 (the first such epoch on ties), the
    metric ``fesaug evaluate`` compares; without them, the last epoch's.

    ``sample_weights`` (one per row) draws each epoch's ``epoch_size`` rows (default ``N``) with
    replacement in proportion to them, like ``WeightedRandomSampler``; without it every row is
    seen once per epoch, so the oversampling baseline may equally pass repeated rows
    (:func:`random_oversample`). A weighted balanced manifest (``fesaug balance
    --synthetic-share``) passes its ``weight`` column and their sum as ``epoch_size``, so an epoch
    holds as many draws as the balanced set it stands for.
    ``num_classes`` defaults to the largest label + 1. ``init``: fine-tune a copy of this trained
    model (its standardisation kept) instead of training ``config.model`` from scratch.
    Deterministic for a ``seed`` on CPU; the global torch RNG is left as it was.
    """
    train_x, train_y = _images(train_x), _labels(train_y)
    if len(train_x) != len(train_y) or len(train_x) < 2:
        raise FesaugError(
            f"need at least 2 training images with one label each, got {len(train_x)} images, {len(train_y)} labels"
        )
    if (val_x is None) != (val_y is None):
        raise FesaugError("give both val_x and val_y, or neither")
    has_val = val_x is not None and len(val_x) > 0
    if has_val:
        val_x, val_y = _images(val_x), _labels(val_y)
    if train_x.shape[-1] != config.image_size:
        raise FesaugError(
            f"training images are {train_x.shape[-1]} px but config.image_size is {config.image_size}; "
            "decode them at that size (ManifestDataset(image_size=...))"
        )
    ys = [train_y] + ([val_y] if has_val else [])
    num_classes = num_classes or int(max(int(y.max()) for y in ys)) + 1
    weights = None
    if sample_weights is not None:
        weights = torch.as_tensor(np.asarray(sample_weights), dtype=torch.float64)
        if weights.shape != (len(train_x),) or (weights < 0).any() or weights.sum() <= 0:
            raise FesaugError("sample_weights needs one non-negative weight per training row, not all zero")
    if epoch_size is not None and (weights is None or epoch_size < 2):
        raise FesaugError("epoch_size needs sample_weights and at least 2 draws")
    draws = epoch_size if epoch_size is not None else len(train_x)

    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        gen = torch.Generator().manual_seed(config.seed)
        if init is None:
            model = make_classifier(config.model, num_classes, config.image_size, train_x.shape[1])
            pixels = train_x.float() / 255
            model.mean.fill_(pixels.mean())
            model.std.fill_(pixels.std().clamp_min(1e-6))
        else:
            if (init.num_classes, init.image_size, init.channels) != (num_classes, config.image_size, train_x.shape[1]):
                raise FesaugError(
                    f"the model to fine-tune has {init.num_classes} classes at {init.image_size} px, {init.channels} "
                    f"channel(s); the data has {num_classes} classes at {config.image_size} px, {train_x.shape[1]}"
                )
            model = copy.deepcopy(init)
        model.to(device)
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = math.ceil(draws / config.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
        history: list[dict[str, float]] = []
        best_state, best_epoch, best_f1 = None, config.epochs, -1.0
        erase = v2.RandomErasing(p=config.erasing, scale=(0.02, 0.2)) if config.erasing > 0 else None
        for epoch in range(1, config.epochs + 1):
            kill_point("downstream-epoch")
            model.train()
            order = (
                torch.multinomial(weights, draws, replacement=True, generator=gen)
                if weights is not None
                else torch.randperm(len(train_x), generator=gen)
            )
            total, seen, lr = 0.0, 0, opt.param_groups[0]["lr"]
            for batch in order.split(config.batch_size):
                if len(batch) < 2:  # BatchNorm cannot train on one image
                    continue
                x = train_x[batch].float() / 255
                if config.augment:
                    x = augment_batch(x, gen)
                if erase is not None:
                    # Per image, from torch's global generator, which fork_rng seeded above.
                    x = torch.stack([erase(image) for image in x])
                loss = nn.functional.cross_entropy(
                    model(x.to(device)), train_y[batch].to(device), label_smoothing=config.label_smoothing
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                total, seen = total + loss.item() * len(batch), seen + len(batch)
            row = {"epoch": epoch, "train_loss": total / max(seen, 1), "lr": lr}
            if has_val:
                pred = predict_proba(model, val_x, batch_size=256).argmax(1)
                row["val_accuracy"] = float(accuracy_score(val_y.numpy(), pred))
                row["val_macro_f1"] = float(
                    f1_score(val_y.numpy(), pred, average="macro", labels=list(range(num_classes)), zero_division=0)
                )
                if row["val_macro_f1"] > best_f1:
                    best_f1, best_epoch = row["val_macro_f1"], epoch
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            history.append(row)
    if best_state is not None:
        model.load_state_dict(best_state)
    return FitResult(model.eval(), history, best_epoch)


# --------------------------------------------------------------------------------------------
# inference


@torch.no_grad()
def predict_proba(model: DownstreamClassifier, x: Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (``N×C`` float32) of ``uint8`` images, in eval mode, on the model's device."""
    return _run(model, x, batch_size, lambda logits: logits.softmax(1))


@torch.no_grad()
def features(model: DownstreamClassifier, x: Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Penultimate-layer features (``N×D``: 96 for small-cnn, 512 for resnet18) of ``uint8`` images.

    Read by a forward pre-hook on ``model.head`` (the input of the final linear layer, after
    global pooling), so one code path serves every architecture without splitting modules.
    These are the embeddings for Fréchet distance and precision/recall between synthetic and
    real faces.
    """
    captured: list[Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].detach().float().cpu()))
    try:
        _run(model, x, batch_size, lambda logits: logits)
    finally:
        handle.remove()
    return torch.cat(captured).numpy() if captured else np.zeros((0, model.head.in_features), np.float32)


def _run(model: DownstreamClassifier, x: Tensor | np.ndarray, batch_size: int, out: Any) -> np.ndarray:
    was_training = model.training
    model.eval()
    device = model.mean.device
    pixels = _images(x)
    if pixels.shape[1] != model.channels:
        got = f"got {pixels.shape[1]}-channel ones"
        raise FesaugError(f"the {model.name} classifier takes {KINDS[model.channels]} images, {got}")
    chunks = [
        out(model(pixels[i : i + batch_size].to(device).float() / 255)).float().cpu()
        for i in range(0, len(pixels), batch_size)
    ]
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.num_classes), np.float32)


# --------------------------------------------------------------------------------------------
# metrics and the oversampling baseline


def classification_report(
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    classes: Sequence[str],
    scored: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1 over all ``classes`` (an absent class counts as F1 0, so a classifier
    cannot look better by never predicting a rare class), per-class recall and F1, and the
    confusion matrix (rows true, columns predicted) — all from scikit-learn.

    ``scored``: the classes the test set can score (default all), when it lacks some the model
    was trained on (a test set from another dataset). Macro-F1 and the per-class scores cover
    those only; accuracy and the confusion matrix count every prediction, so predicting a class
    outside ``scored`` is an error like any other."""
    classes = list(classes)
    scored = classes if scored is None else list(scored)
    labels = [classes.index(c) for c in scored]
    recall = recall_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    f1 = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0)
    support = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=len(classes))[labels]
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "recall": {c: float(v) for c, v in zip(scored, recall)},
        "f1": {c: float(v) for c, v in zip(scored, f1)},
        "support": {c: int(v) for c, v in zip(scored, support)},
        "confusion": {
            "classes": classes,
            "matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(classes)))).tolist(),
        },
    }


def random_oversample(labels: np.ndarray, targets: Mapping[int, int], seed: int) -> np.ndarray:
    """Row indices for random oversampling, as imbalanced-learn's ``RandomOverSampler``.

    Every row once, in order, then for each class in ``targets`` (in its order) ``target - count``
    rows of that class drawn uniformly with replacement. Classes not in ``targets`` keep their
    count. The baseline that synthesis must beat: same class counts, no new faces.
    """
    labels = np.asarray(labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    extra = []
    for label, target in targets.items():
        members = np.flatnonzero(labels == label)
        if target < len(members):
            raise FesaugError(
                f"oversampling target {target} for class {label} is below its {len(members)} rows; "
                "oversampling only adds rows"
            )
        if target > 0 and len(members) == 0:
            raise FesaugError(f"class {label} has no rows to oversample to {target}")
        extra.append(
            rng.choice(members, size=target - len(members), replace=True) if target > len(members) else members[:0]
        )
    return np.concatenate([np.arange(len(labels), dtype=np.int64), *extra]).astype(np.int64)


# --------------------------------------------------------------------------------------------
# helpers


def _images(x: Tensor | np.ndarray) -> Tensor:
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise FesaugError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise FesaugError(f"images must be N×C×S×S (C = 1 gray or 3 colour), got shape {tuple(x.shape)}")
    return x


def _labels(y: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)
