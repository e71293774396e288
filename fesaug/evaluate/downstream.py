"""Downstream facial-expression classifiers, independent of FERSNet, for ``fesaug evaluate``.

Balancing by synthesis is only worth something if a classifier that never saw FERSNet learns
better from the balanced data than from the real data alone or from plain oversampling. This
module is that classifier and its yardsticks: two architectures (:func:`make_classifier`, defined in
:mod:`fesaug.evaluate.classifiers`), one training loop with model selection on validation
macro-F1 (:func:`fit`, and :func:`fit_seeds` for several seeds at once), inference
(:func:`predict_proba`, :func:`features` for feature-space comparisons of synthetic and real
faces), the metrics (:func:`classification_report`, computed by scikit-learn so they match what
readers compute themselves) and the random-oversampling baseline (:func:`random_oversample`).

Images go in as the ``uint8`` ``N×C×S×S`` tensors of ``ManifestDataset.pixels``; the model
stores the training mean and standard deviation it standardises with, so callers never have
to carry them around.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score
from torch import Tensor, nn
from torchvision.transforms import v2

from fesaug.evaluate.augment import augment_batch, augment_theta, resample
from fesaug.evaluate.classification import classification_report
from fesaug.evaluate.classifiers import (
    CLASSIFIERS,
    DownstreamClassifier,
    SeedStack,
    features,
    load_classifier,
    make_classifier,
    predict_proba,
    save_classifier,
    stackable,
    uint8_images,
)
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError
from fesaug.utils.killpoints import kill_point

__all__ = [
    "CLASSIFIERS",
    "DownstreamClassifier",
    "DownstreamConfig",
    "FitResult",
    "augment_batch",
    "classification_report",
    "features",
    "fit",
    "fit_seeds",
    "load_classifier",
    "make_classifier",
    "predict_proba",
    "random_oversample",
    "save_classifier",
]


# --------------------------------------------------------------------------------------------
# training


@dataclass(frozen=True)
class DownstreamConfig:
    """Training settings. ``augment``: per-sample horizontal flip, shift of up to ±4 px,
    rotation up to ±10° and scale 0.9–1.1, drawn from a generator seeded by ``seed``.
    ``erasing``: after that, each image loses a random rectangle (2–20 % of it, torchvision's
    ``RandomErasing``) with this probability, so no single region (the mouth) decides alone.
    ``label_smoothing``: cross-entropy against targets smoothed by this much (0: none).
    ``precision``: ``"bfloat16"`` runs the network under bfloat16 autocast, much faster where the
    processor has bfloat16 arithmetic (recent Xeons, GPUs) and slower where it has not; it
    changes the arithmetic, so results differ from ``"float32"``'s (compared on CK+48 in
    ``bench/results/downstream_speed_ckplus.md``).

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
    precision: str = "float32"

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
            ("precision", self.precision in ("float32", "bfloat16")),
        ]
        bad = [name for name, ok in checks if not ok]
        if bad:
            raise FesaugError(
                f"invalid downstream setting(s): {', '.join(f'{n}={getattr(self, n)!r}' for n in bad)} "
                f"(model one of {', '.join(CLASSIFIERS)}, epochs >= 1, batch_size >= 2, lr > 0, "
                "weight_decay >= 0, image_size >= 16, erasing in [0, 1], label_smoothing in [0, 1), "
                "device auto/cpu/cuda, precision float32/bfloat16)"
            )


@dataclass
class FitResult:
    """The selected model (in eval mode), one ``history`` dict per epoch (``epoch``,
    ``train_loss``, ``lr`` and, with validation data, ``val_accuracy`` and ``val_macro_f1``) and
    the 1-based epoch whose weights ``model`` holds."""

    model: DownstreamClassifier
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


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
    soft_targets: Tensor | np.ndarray | None = None,
) -> FitResult:
    """Train ``config.model`` on ``uint8`` ``N×C×S×S`` images (gray or colour) with cross-entropy.

    Adam with a per-step cosine learning-rate decay. With ``val_x``/``val_y`` (validation
    subjects, e.g. from :func:`fesaug.data.splits.split_subjects`) the returned model holds the
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
    ``soft_targets``: an ``N×num_classes`` probability per row (``ManifestDataset.targets`` of a
    balance run with ``--synthetic-labels soft``), trained with cross-entropy against it instead
    of against ``train_y``, which still names each row's class; a row whose mass is all on its
    class trains exactly as a hard label does. Deterministic for a ``seed`` on CPU; the global
    torch RNG is left as it was.
    """
    return fit_seeds(
        train_x, train_y, val_x, val_y, config, [config.seed],
        sample_weights=sample_weights, num_classes=num_classes, init=init, epoch_size=epoch_size,
        soft_targets=soft_targets,
    )[0]  # fmt: skip


def fit_seeds(
    train_x: Tensor,
    train_y: Tensor | np.ndarray,
    val_x: Tensor | None = None,
    val_y: Tensor | np.ndarray | None = None,
    config: DownstreamConfig = DownstreamConfig(),
    seeds: Sequence[int] = (0,),
    *,
    sample_weights: Tensor | np.ndarray | None = None,
    num_classes: int | None = None,
    init: DownstreamClassifier | None = None,
    epoch_size: int | None = None,
    soft_targets: Tensor | np.ndarray | None = None,
) -> list[FitResult]:
    """:func:`fit` once per seed in ``seeds`` (``config.seed`` is ignored), all trained at once.

    The seeds train as one network with a group per seed in every layer
    (:class:`~fesaug.evaluate.classifiers.SeedStack`): per step one forward and backward pass for
    all of them, each seed's weights seeing only its own batch. Each seed keeps its own
    initialisation, batch order, augmentation, dropout and erasing draws and its own model
    selection, so result ``i`` is what ``fit`` with ``seed=seeds[i]`` returns, up to the rounding
    of the grouped convolutions' arithmetic (a few ulps per step; over a whole run that can
    still move a near-tied best epoch). On a CPU this is not faster per image than one seed at a
    time (``bench/results/downstream_throughput.md``), so ``fesaug evaluate`` trains seeds one
    after another (on a GPU, where one small network leaves the device idle, it may pay: not
    measured).
    An ``init`` model of an architecture the stack cannot group
    (:func:`~fesaug.evaluate.classifiers.stackable`) trains one seed at a time.
    """
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise FesaugError(f"fit_seeds needs one or more distinct seeds, got {seeds}")
    rest = {
        "sample_weights": sample_weights,
        "num_classes": num_classes,
        "init": init,
        "epoch_size": epoch_size,
        "soft_targets": soft_targets,
    }
    if len(seeds) > 1 and init is not None and not stackable(init.net):  # e.g. a FERSNet recogniser
        return [fit(train_x, train_y, val_x, val_y, dataclasses.replace(config, seed=seed), **rest) for seed in seeds]
    data = _training_data(train_x, train_y, val_x, val_y, config, sample_weights, num_classes, epoch_size)
    data.soft = _soft_targets(soft_targets, data)
    device = resolve_device(config.device)
    with torch.random.fork_rng(devices=[]):
        stack = _seed_stack(config, seeds, data, init).to(device, memory_format=CHANNELS_LAST)
        gens = [torch.Generator().manual_seed(seed) for seed in seeds]
        opt = torch.optim.Adam(stack.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        steps_per_epoch = math.ceil(data.draws / config.batch_size)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs * steps_per_epoch)
        selections = [_Selection() for _ in seeds]
        for epoch in range(1, config.epochs + 1):
            kill_point("downstream-epoch")
            lr = opt.param_groups[0]["lr"]
            losses = _train_epoch(stack, data, config, gens, opt, sched)
            scores = _validate(stack, data, config) if data.has_val else [{} for _ in seeds]
            for s, selection in enumerate(selections):
                row = {"epoch": epoch, "train_loss": float(losses[s]), "lr": lr, **scores[s]}
                selection.record(row, stack, s)
        return [selection.result(stack, s, config.epochs) for s, selection in enumerate(selections)]


# Convolutions, BatchNorm and max-pooling on CPU are several times faster on channels-last tensors,
# where one pixel's channels are adjacent (bench/results/downstream_throughput.md); on CUDA, cuDNN
# takes either. The same arithmetic up to rounding.
CHANNELS_LAST = torch.channels_last


@dataclass
class _Data:
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor | None
    val_y: Tensor | None
    num_classes: int
    weights: Tensor | None  # per row, to draw an epoch with replacement
    draws: int  # rows per epoch
    soft: Tensor | None = None  # N×num_classes target probabilities, instead of train_y's one-hot

    @property
    def has_val(self) -> bool:
        return self.val_x is not None


def _training_data(
    train_x: Tensor,
    train_y: Tensor | np.ndarray,
    val_x: Tensor | None,
    val_y: Tensor | np.ndarray | None,
    config: DownstreamConfig,
    sample_weights: Tensor | np.ndarray | None,
    num_classes: int | None,
    epoch_size: int | None,
) -> _Data:
    """The inputs of :func:`fit`, checked and as tensors."""
    train_x, train_y = uint8_images(train_x), _labels(train_y)
    if len(train_x) != len(train_y) or len(train_x) < 2:
        raise FesaugError(
            f"need at least 2 training images with one label each, got {len(train_x)} images, {len(train_y)} labels"
        )
    if (val_x is None) != (val_y is None):
        raise FesaugError("give both val_x and val_y, or neither")
    has_val = val_x is not None and len(val_x) > 0
    vx, vy = (uint8_images(val_x), _labels(val_y)) if has_val else (None, None)
    if vx is not None and vx.shape[1] != train_x.shape[1]:
        raise FesaugError(
            f"training images have {train_x.shape[1]} channel(s), validation images {vx.shape[1]}; decode both "
            "from one manifest"
        )
    if train_x.shape[-1] != config.image_size:
        raise FesaugError(
            f"training images are {train_x.shape[-1]} px but config.image_size is {config.image_size}; "
            "decode them at that size (ManifestDataset(image_size=...))"
        )
    ys = [train_y] + ([vy] if vy is not None else [])
    num_classes = num_classes or int(max(int(y.max()) for y in ys)) + 1
    weights = None
    if sample_weights is not None:
        weights = torch.as_tensor(np.asarray(sample_weights), dtype=torch.float64)
        if weights.shape != (len(train_x),) or (weights < 0).any() or weights.sum() <= 0:
            raise FesaugError("sample_weights needs one non-negative weight per training row, not all zero")
    if epoch_size is not None and (weights is None or epoch_size < 2):
        raise FesaugError("epoch_size needs sample_weights and at least 2 draws")
    draws = epoch_size if epoch_size is not None else len(train_x)
    return _Data(train_x, train_y, vx, vy, num_classes, weights, draws)


def _soft_targets(soft: Tensor | np.ndarray | None, data: _Data) -> Tensor | None:
    """``soft`` checked against the training rows: one probability vector over the classes per row."""
    if soft is None:
        return None
    t = torch.as_tensor(np.asarray(soft), dtype=torch.float32)
    if t.shape != (len(data.train_y), data.num_classes):
        raise FesaugError(
            f"soft_targets must be one row of {data.num_classes} class probabilities per training image, got shape "
            f"{tuple(t.shape)} for {len(data.train_y)} images"
        )
    if (t < 0).any() or not torch.allclose(t.sum(1), torch.ones(len(t)), atol=1e-4):
        raise FesaugError("soft_targets must be non-negative and sum to 1 in every row (ManifestDataset.targets)")
    return t


def _seed_stack(
    config: DownstreamConfig, seeds: list[int], data: _Data, init: DownstreamClassifier | None
) -> SeedStack:
    """Each seed's model, initialised as a run of that seed alone initialises it (torch's global
    generator seeded with it), stacked; each seed's global stream continues from there."""
    channels = data.train_x.shape[1]
    if init is not None and (init.num_classes, init.image_size, init.channels) != (
        data.num_classes,
        config.image_size,
        channels,
    ):
        raise FesaugError(
            f"the model to fine-tune has {init.num_classes} classes at {init.image_size} px, {init.channels} "
            f"channel(s); the data has {data.num_classes} classes at {config.image_size} px, {channels}"
        )
    pixels = data.train_x.float() / 255
    models, streams = [], []
    for seed in seeds:
        torch.manual_seed(seed)
        if init is None:
            model = make_classifier(config.model, data.num_classes, config.image_size, channels)
            model.mean.fill_(pixels.mean())
            model.std.fill_(pixels.std().clamp_min(1e-6))
        else:
            model = copy.deepcopy(init)
        models.append(model)
        streams.append(torch.get_rng_state())
    return SeedStack(models, streams)


def _train_epoch(
    stack: SeedStack,
    data: _Data,
    config: DownstreamConfig,
    gens: list[torch.Generator],
    opt: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
) -> Tensor:
    """One epoch of every seed, each in its own order; returns each seed's mean training loss."""
    stack.train()
    device = stack.mean.device
    orders = [
        torch.multinomial(data.weights, data.draws, replacement=True, generator=gen)
        if data.weights is not None
        else torch.randperm(len(data.train_x), generator=gen)
        for gen in gens
    ]
    total, seen = torch.zeros(len(gens), dtype=torch.float64), 0
    for batches in zip(*(order.split(config.batch_size) for order in orders)):
        if len(batches[0]) < 2:  # BatchNorm cannot train on one image
            continue
        x = _training_batch(stack, data, config, batches, gens).to(device)
        targets = data.train_y if data.soft is None else data.soft
        y = torch.stack([targets[batch] for batch in batches], -1).to(device)  # (B, seeds) or (B, classes, seeds)
        with _autocast(config, device):
            logits = stack(x).float().permute(0, 2, 1)  # (B, classes, seeds)
        per_seed = nn.functional.cross_entropy(
            logits, y, reduction="none", label_smoothing=config.label_smoothing
        ).mean(0)
        opt.zero_grad()
        # The seeds' weights are disjoint, so the gradient of the sum is each seed's own.
        per_seed.sum().backward()
        opt.step()
        sched.step()
        total += per_seed.detach().double().cpu() * len(batches[0])
        seen += len(batches[0])
    return total / max(seen, 1)


def _training_batch(
    stack: SeedStack, data: _Data, config: DownstreamConfig, batches: tuple[Tensor, ...], gens: list[torch.Generator]
) -> Tensor:
    """The seeds' batches side by side, ``(B, S×C, H, W)`` channels-last (seed s's image in
    channels s×C to s×C + C - 1), augmented as each seed's run would augment its own (all of them
    in one ``grid_sample``)."""
    x = torch.stack([data.train_x[batch] for batch in batches]).float() / 255  # (S, B, C, H, W)
    if config.augment:
        theta = torch.cat([augment_theta(len(batch), config.image_size, gen) for batch, gen in zip(batches, gens)])
        x = resample(x.flatten(0, 1), theta).view_as(x)
    if config.erasing > 0:
        erase = v2.RandomErasing(p=config.erasing, scale=(0.02, 0.2))
        # Per image, from torch's global generator: each seed's own stream.
        x = torch.stack(
            [stack.draw(s, lambda s=s: torch.stack([erase(image) for image in x[s]])) for s in range(len(x))]
        )
    seeds, b, c, h, w = x.shape
    return x.permute(1, 0, 2, 3, 4).reshape(b, seeds * c, h, w).contiguous(memory_format=CHANNELS_LAST)


def _autocast(config: DownstreamConfig, device: torch.device) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bfloat16")


@torch.no_grad()
def _validate(stack: SeedStack, data: _Data, config: DownstreamConfig, batch_size: int = 256) -> list[dict[str, float]]:
    """Each seed's validation accuracy and macro-F1, from one pass of the stacked network."""
    assert data.val_x is not None and data.val_y is not None
    stack.eval()
    device, seeds = stack.mean.device, stack.seeds
    preds = []
    for i in range(0, len(data.val_x), batch_size):
        x = data.val_x[i : i + batch_size].float() / 255
        x = x.repeat(1, seeds, 1, 1).contiguous(memory_format=CHANNELS_LAST)
        with _autocast(config, device):
            preds.append(stack(x.to(device)).argmax(2).cpu())
    pred, truth, labels = torch.cat(preds).numpy(), data.val_y.numpy(), list(range(data.num_classes))
    return [
        {
            "val_accuracy": float(accuracy_score(truth, pred[:, s])),
            "val_macro_f1": float(f1_score(truth, pred[:, s], average="macro", labels=labels, zero_division=0)),
        }
        for s in range(seeds)
    ]


@dataclass
class _Selection:
    """One seed's epochs and the weights of its best validation epoch (the first on ties)."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_f1: float = -1.0
    best_state: dict[str, Tensor] | None = None

    def record(self, row: dict[str, float], stack: SeedStack, s: int) -> None:
        self.history.append(row)
        if "val_macro_f1" in row and row["val_macro_f1"] > self.best_f1:
            self.best_f1, self.best_epoch = row["val_macro_f1"], int(row["epoch"])
            self.best_state = stack.seed_state(s)

    def result(self, stack: SeedStack, s: int, epochs: int) -> FitResult:
        return FitResult(stack.seed_model(s, self.best_state).eval(), self.history, self.best_epoch or epochs)


# --------------------------------------------------------------------------------------------
# metrics and the oversampling baseline


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


def _labels(y: Tensor | np.ndarray) -> Tensor:
    return torch.as_tensor(np.asarray(y), dtype=torch.int64)
