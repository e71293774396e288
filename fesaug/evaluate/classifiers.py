"""The downstream classifiers' architectures, their files, and several seeds of one as a single network.

:func:`make_classifier` builds the two architectures ``fesaug evaluate`` trains (re-exported by
:mod:`fesaug.evaluate.downstream`, which trains them); :func:`save_classifier` and
:func:`load_classifier` write and read them. :class:`SeedStack` holds S independently initialised
copies of one architecture as one network whose every layer has S groups (grouped convolutions,
BatchNorm over S×C channels, one linear map per seed), so S seeds train in one forward and
backward pass per step and each seed's weights still see only that seed's images: the memory-bound
layers (BatchNorm, pooling, ReLU) and the per-step Python and dispatch overhead are paid once for
S seeds instead of S times.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fesaug.data.images import KINDS
from fesaug.evaluate.classifier_records import CLASSIFIER
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path
from fesaug.utils.records import SCHEMA_KEY

__all__ = [
    "CLASSIFIERS",
    "DownstreamClassifier",
    "SeedStack",
    "features",
    "load_classifier",
    "make_classifier",
    "predict_proba",
    "save_classifier",
    "stackable",
    "uint8_images",
]

CLASSIFIERS = ("small-cnn", "resnet18")


class DownstreamClassifier(nn.Module):
    """A classifier ``net`` whose last module is the linear ``head``, plus the standardisation.

    ``forward`` takes float images in [0, 1] and standardises them with the training set's
    ``mean`` and ``std`` (buffers, so they travel with ``state_dict`` and ``.to(device)``).
    Keeping ``head`` separate lets :func:`~fesaug.evaluate.downstream.features` read the
    penultimate layer with a hook on it, whatever the architecture. ``channels``: the images'
    (1 gray, 3 colour).
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
        # Pooling before the ReLU computes the same function with the same gradients (ReLU is
        # monotonic, so the max of the rectified values is the rectified max, and both send the
        # gradient to the same pixel), on a quarter of the pixels. The module indices holding
        # weights (conv, BatchNorm) are those of the conv-BN-ReLU-pool order, so classifiers
        # saved before still load.
        return [
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.MaxPool2d(2),
            nn.ReLU(inplace=True),
        ]

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

    ``"small-cnn"``: four conv/BN/max-pool/ReLU blocks and global pooling (about 100k
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


FORMAT = "fesaug-downstream-classifier"


def save_classifier(model: DownstreamClassifier, path: str | os.PathLike, classes: Sequence[str]) -> None:
    """Write ``model`` (weights, architecture, size, class names) atomically, loadable with
    ``torch.load(weights_only=True)``; ``fesaug evaluate`` keeps one per condition and fold."""
    if len(classes) != model.num_classes:
        raise FesaugError(f"{len(classes)} class names for a {model.num_classes}-class model")
    with atomic_path(path) as tmp:
        torch.save(
            CLASSIFIER.stamp(
                {
                    "format": FORMAT,
                    "state_dict": model.state_dict(),
                    "model": model.name,
                    "num_classes": model.num_classes,
                    "image_size": model.image_size,
                    "channels": model.channels,
                    "classes": list(classes),
                }
            ),
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
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        raise FesaugError(
            f"{path} is not a fesaug downstream classifier; pass a fold-K/<condition>.pt written by fesaug evaluate"
        )
    if SCHEMA_KEY not in saved and saved.get("format_version") != 1:
        raise FesaugError(f"{path}: downstream classifier format version {saved.get('format_version')!r} is unknown")
    saved = CLASSIFIER.read(saved, where=str(path))
    model = make_classifier(saved["model"], saved["num_classes"], saved["image_size"], saved["channels"])
    model.load_state_dict(saved["state_dict"])
    device = resolve_device(device)
    return model.to(device).eval(), list(saved["classes"])


# --------------------------------------------------------------------------------------------
# inference (one model)


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
    pixels = uint8_images(x)
    if pixels.shape[1] != model.channels:
        got = f"got {pixels.shape[1]}-channel ones"
        raise FesaugError(f"the {model.name} classifier takes {KINDS[model.channels]} images, {got}")
    chunks = [
        out(model(pixels[i : i + batch_size].to(device).float() / 255)).float().cpu()
        for i in range(0, len(pixels), batch_size)
    ]
    model.train(was_training)
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, model.num_classes), np.float32)


def uint8_images(x: Tensor | np.ndarray) -> Tensor:
    """``x`` as a ``uint8`` ``N×C×S×S`` tensor, C 1 (gray) or 3 (colour); ``N×S×S`` gets its channel.
    A :class:`FesaugError` if it is not one."""
    x = torch.as_tensor(x)
    if x.dtype != torch.uint8:
        raise FesaugError(f"images must be uint8 (0-255), got {x.dtype}")
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise FesaugError(f"images must be N×C×S×S (C = 1 gray or 3 colour), got shape {tuple(x.shape)}")
    return x


# --------------------------------------------------------------------------------------------
# several seeds as one network


class SeedStack(nn.Module):
    """S classifiers of one architecture as one network with S groups in every layer.

    ``forward`` takes S images side by side, ``(B, S×C, H, W)`` floats in [0, 1] (seed s's image
    in channels s×C to s×C + C - 1), and returns ``(B, S, num_classes)`` logits, seed s's from seed s's weights
    alone: convolutions are grouped (``groups = S × groups``), BatchNorm runs over S×C channels
    (statistics per seed, as each channel's are), the head is one linear map per seed, and
    dropout draws each seed's mask from that seed's own stream (``streams``, see
    :meth:`draw`). Every parameter and buffer is the seeds' tensors concatenated along the first
    dimension (0-d buffers stacked), under the single model's name, so each seed comes back as
    an ordinary :class:`DownstreamClassifier` (:meth:`seed_model`).

    One seed is the model itself (any architecture, e.g. a fine-tuned FERSNet recogniser);
    several need layers :func:`stackable` knows.
    """

    def __init__(self, models: Sequence[DownstreamClassifier], streams: list[Tensor]) -> None:
        super().__init__()
        first = models[0]
        self.seeds, self.name = len(models), first.name
        self.num_classes, self.image_size = first.num_classes, first.image_size
        # The seeds' own global-RNG states (torch.get_rng_state()), for what draws from torch's
        # global generator (dropout, random erasing): each seed's stream advances exactly as it
        # would in a run of that seed alone.
        self.streams = streams
        # The architecture each seed's model comes back in; not a submodule (no parameters to train).
        object.__setattr__(self, "_template", copy.deepcopy(first).cpu())
        self.net = copy.deepcopy(first.net)
        if self.seeds > 1:
            _group_layers(self.net, self.seeds, self)
        # BatchNorm's step counters are the same for every seed (they train in step): one is kept.
        shared = {name for name, t in first.state_dict().items() if t.ndim == 0 and name not in ("mean", "std")}
        self._shared = shared
        merged = {
            name: ts[0] if name in shared else torch.stack(ts) if ts[0].ndim == 0 else torch.cat(ts)
            for name, ts in _by_name([dict(m.state_dict()) for m in models]).items()
        }
        self.register_buffer("mean", merged.pop("mean"))
        self.register_buffer("std", merged.pop("std"))
        self.net.load_state_dict({k.removeprefix("net."): v for k, v in merged.items()})

    def forward(self, x: Tensor) -> Tensor:
        # Each seed's scalar standardisation applies to all of its C channels.
        per_channel = x.shape[1] // self.seeds
        mean, std = (t.repeat_interleave(per_channel)[:, None, None] for t in (self.mean, self.std))
        x = (x - mean) / std
        return self.net(x).view(len(x), self.seeds, self.num_classes)

    def draw(self, seed_index: int, fn: Callable[[], Tensor]) -> Tensor:
        """``fn()`` with torch's global generator in seed ``seed_index``'s stream, which it advances.
        A single seed's stream is the global generator itself, as in a plain training loop."""
        if self.seeds == 1:
            return fn()
        torch.set_rng_state(self.streams[seed_index])
        out = fn()
        self.streams[seed_index] = torch.get_rng_state()
        return out

    def seed_state(self, s: int) -> dict[str, Tensor]:
        """Seed ``s``'s weights and buffers as a single model's state dict (copies, contiguous)."""
        out = {}
        for name, t in self.state_dict().items():
            if name in ("mean", "std"):
                part = t[s]
            elif name in self._shared:
                part = t
            else:
                part = t.chunk(self.seeds)[s]
            out[name] = part.clone(memory_format=torch.contiguous_format)
        return out

    def seed_model(self, s: int, state: dict[str, Tensor] | None = None) -> DownstreamClassifier:
        """Seed ``s`` as a model of the architecture it was given in, holding ``state`` (one of
        :meth:`seed_state`'s; default its weights now), on this network's device."""
        model = copy.deepcopy(self._template)
        model.load_state_dict(self.seed_state(s) if state is None else state)
        return model.to(self.mean.device)


def stackable(net: nn.Module) -> bool:
    """Whether several seeds of ``net`` can train as one :class:`SeedStack` (every layer with
    weights or randomness is one the stack knows how to group)."""
    return all(isinstance(m, (*_GROUPED, *_SHARED, nn.Sequential)) or _is_container(m) for m in net.modules())


def _is_container(module: nn.Module) -> bool:
    """A module that only calls its children (torchvision's BasicBlock, ResNet): nothing of its own."""
    return any(True for _ in module.children()) and not any(True for _ in module.parameters(recurse=False))


def _by_name(states: list[dict[str, Tensor]]) -> dict[str, list[Tensor]]:
    return {name: [s[name] for s in states] for name in states[0]}


class _SeedLinear(nn.Module):
    """S linear maps, ``(B, S×in) → (B, S×out)``; weight ``(S×out, in)`` as the seeds' weights stacked."""

    def __init__(self, seeds: int, in_features: int, out_features: int, **kw: Any) -> None:
        super().__init__()
        self.seeds, self.in_features, self.out_features = seeds, in_features, out_features
        self.weight = nn.Parameter(torch.empty(seeds * out_features, in_features, **kw))
        self.bias = nn.Parameter(torch.empty(seeds * out_features, **kw))

    def forward(self, x: Tensor) -> Tensor:
        if self.seeds == 1:
            return nn.functional.linear(x, self.weight, self.bias)
        s, b = self.seeds, len(x)
        weight = self.weight.view(s, self.out_features, self.in_features)
        out = torch.baddbmm(self.bias.view(s, 1, -1), x.view(b, s, -1).transpose(0, 1), weight.transpose(1, 2))
        return out.transpose(0, 1).reshape(b, -1)


class _SeedDropout(nn.Module):
    """Dropout on ``(B, S×F)`` with each seed's mask drawn from its own stream (:meth:`SeedStack.draw`)."""

    def __init__(self, p: float, stack: SeedStack) -> None:
        super().__init__()
        self.p = p
        object.__setattr__(self, "stack", stack)  # a back-reference, not a submodule

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0:
            return x
        stack: SeedStack = self.stack  # type: ignore[assignment]
        # The same call on the same (B, F) shape as the single model's, so the same mask.
        parts = x.view(len(x), stack.seeds, -1).unbind(1)
        return torch.cat(
            [
                stack.draw(s, lambda part=part: nn.functional.dropout(part.contiguous(), self.p))
                for s, part in enumerate(parts)
            ],
            dim=1,
        )


# Layers the stack replaces by S-group versions, and layers without weights that act per channel.
_GROUPED = (nn.Conv2d, nn.BatchNorm2d, nn.Linear, nn.Dropout)
_SHARED = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity)


def _group_layers(module: nn.Module, seeds: int, stack: SeedStack) -> None:
    """Replace, in place, every layer with weights by its S-group version (weights uninitialised)."""
    for name, child in module.named_children():
        like = next(child.parameters(), None)
        kw: dict[str, Any] = {} if like is None else {"device": like.device, "dtype": like.dtype}
        if isinstance(child, nn.Conv2d):
            grouped: nn.Module = nn.Conv2d(
                seeds * child.in_channels,
                seeds * child.out_channels,
                child.kernel_size,
                child.stride,
                child.padding,
                child.dilation,
                groups=seeds * child.groups,
                bias=child.bias is not None,
                **kw,
            )
        elif isinstance(child, nn.BatchNorm2d):
            grouped = nn.BatchNorm2d(seeds * child.num_features, child.eps, child.momentum, **kw)
        elif isinstance(child, nn.Linear):
            grouped = _SeedLinear(seeds, child.in_features, child.out_features, **kw)
        elif isinstance(child, nn.Dropout):
            grouped = _SeedDropout(child.p, stack)
        elif isinstance(child, _SHARED):
            continue
        elif _is_container(child):
            _group_layers(child, seeds, stack)
            continue
        else:
            raise FesaugError(f"cannot train several seeds of a network with a {type(child).__name__} layer at once")
        setattr(module, name, grouped)
