"""The perceptual judge: shift-tolerant LPIPS (Ghildyal & Liu, ECCV 2022), a learned image distance.

LPIPS compares two images through the normalised activations of an ImageNet network, weighted by
linear heads fitted to human judgements; the shift-tolerant variant makes the network
anti-aliased (blur before every downsampling, stride-1 first convolution), so a face moved by
a pixel or two is not "far". That matters here: a synthetic face and its parent, or two real
photos of one person, are never pixel-aligned.

The networks below reproduce the `stlpips-pytorch` package's ``alex``/``vgg`` with
``variant="shift_tolerant"`` layer for layer (their state-dict keys are the package's), and
their weights are read from that package's files (BSD-2). Its Python modules are never imported:
they import IPython and torchsummary, which it does not declare. :class:`PerceptualDistance` is an
``nn.Module`` and differentiable, so it also serves as a training loss.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fesaug.judges.base import Judge, as_rgb_uint8
from fesaug.utils.dlib_models import EXTRA
from fesaug.utils.errors import FesaugError

BACKBONES = ("alex", "vgg")
WEIGHTS_SHA256 = {
    "alex": "b356b382f96010f77d085ee8343ecd9fd322d0a56e8de2b2d0549fafcad8b9ee",
    "vgg": "44597da68f49c1837c100ff52299050f274d102eb102e5837178c79be6f0e250",
}
# Faces are compared at one size whatever their own: LPIPS values depend on resolution, and a
# yardstick measured at one size only means something for distances measured at the same size.
INPUT_SIZE = 64


class BlurPool(nn.Module):
    """Anti-aliased stride-2 downsampling: reflection padding, a binomial [1, 2, 1]² blur, stride 2."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        a = torch.tensor([1.0, 2.0, 1.0])
        kernel = a[:, None] * a[None, :]
        self.register_buffer("filt", (kernel / kernel.sum()).expand(channels, 1, 3, 3).clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), self.filt, stride=2, groups=x.shape[1])


def _slices(layers: Sequence[nn.Module], bounds: Sequence[int]) -> nn.ModuleList:
    """The backbone cut into the five stages LPIPS reads, each layer keeping its index as its name."""
    return nn.ModuleList(
        nn.Sequential(OrderedDict((str(i), layers[i]) for i in range(a, b))) for a, b in zip(bounds[:-1], bounds[1:])
    )


def _alexnet() -> tuple[nn.ModuleList, list[int]]:
    conv, relu = nn.Conv2d, lambda: nn.ReLU(inplace=True)
    layers = [
        conv(3, 64, 11, stride=1, padding=2),
        BlurPool(64),
        relu(),
        nn.MaxPool2d(3, stride=1),
        BlurPool(64),
        conv(64, 192, 5, padding=2),
        relu(),
        nn.MaxPool2d(3, stride=1),
        BlurPool(192),
        conv(192, 384, 3, padding=1),
        relu(),
        conv(384, 256, 3, padding=1),
        relu(),
        conv(256, 256, 3, padding=1),
        relu(),
    ]
    return _slices(layers, [0, 3, 7, 11, 13, 15]), [64, 192, 384, 256, 256]


def _vgg16() -> tuple[nn.ModuleList, list[int]]:
    layers: list[nn.Module] = []
    c_in = 3
    for v in (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512):
        if v == "M":
            layers += [nn.MaxPool2d(2, stride=1), BlurPool(c_in)]
        else:
            layers += [nn.Conv2d(c_in, int(v), 3, padding=1), nn.ReLU(inplace=True)]
            c_in = int(v)
    return _slices(layers, [0, 4, 10, 18, 26, 34]), [64, 128, 256, 512, 512]


class _Linear(nn.Module):
    """LPIPS' per-stage weighting: a 1×1 convolution without bias (``model.1``: after a dropout
    in the original, which is inactive at evaluation)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(OrderedDict([("1", nn.Conv2d(channels, 1, 1, bias=False))]))

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)


class PerceptualDistance(nn.Module):
    """Shift-tolerant LPIPS between two batches of faces: ``(N, 1 or 3, H, W)`` floats in [0, 1]
    → ``(N,)`` distances (0 = identical). Differentiable; resizes to :data:`INPUT_SIZE`."""

    def __init__(self, backbone: str = "alex") -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise FesaugError(f"unknown perceptual backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
        self.backbone = backbone
        stages, channels = _alexnet() if backbone == "alex" else _vgg16()
        self.net = nn.Module()
        for i, stage in enumerate(stages, start=1):
            self.net.add_module(f"slice{i}", stage)
        for i, c in enumerate(channels):
            self.add_module(f"lin{i}", _Linear(c))
        # LPIPS v0.1's input scaling: ImageNet statistics in its [-1, 1] convention.
        self.register_buffer("scaling_shift", torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None])
        self.register_buffer("scaling_scale", torch.tensor([0.458, 0.448, 0.450])[None, :, None, None])

    def features(self, x: Tensor) -> list[Tensor]:
        """Unit-normalised activations of the five stages, for images in [0, 1]."""
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", antialias=True, align_corners=False)
        x = (x.expand(-1, 3, -1, -1) * 2 - 1 - self.scaling_shift) / self.scaling_scale
        out = []
        for i in range(1, 6):
            x = getattr(self.net, f"slice{i}")(x)
            out.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10))
        return out

    def between(self, fa: Sequence[Tensor], fb: Sequence[Tensor]) -> Tensor:
        """The distance between two images' :meth:`features` (so a set's features are computed once)."""
        return sum(getattr(self, f"lin{i}")((a - b) ** 2).mean(dim=(1, 2, 3)) for i, (a, b) in enumerate(zip(fa, fb)))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.between(self.features(a), self.features(b))


def weights_path(backbone: str) -> Path:
    """The `stlpips-pytorch` package's weight file for ``backbone`` (its code is not imported)."""
    spec = importlib.util.find_spec("stlpips_pytorch")
    if spec is None or spec.origin is None:
        raise FesaugError(
            f"the perceptual judge needs the optional package 'stlpips-pytorch', which is not installed: "
            f"pip install 'fesaug[{EXTRA}]'"
        )
    return Path(spec.origin).parent / "weights" / "vST0.0" / f"{backbone}_shift_tolerant.pth"


def load_perceptual(backbone: str = "alex") -> PerceptualDistance:
    """:class:`PerceptualDistance` with the shipped weights, checked against their sha256."""
    model = PerceptualDistance(backbone)
    path = weights_path(backbone)
    if not path.is_file():
        raise FesaugError(
            f"{path} is missing; reinstall the judges extra: pip install --force-reinstall 'fesaug[{EXTRA}]'"
        )
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != WEIGHTS_SHA256[backbone]:
        raise FesaugError(
            f"{path}: sha256 does not match the known shift-tolerant LPIPS weights; the file is damaged "
            f"or was replaced: pip install --force-reinstall 'fesaug[{EXTRA}]'"
        )
    import io

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    state["scaling_shift"], state["scaling_scale"] = state.pop("scaling_layer.shift"), state.pop("scaling_layer.scale")
    model.load_state_dict(state)
    model.requires_grad_(False)
    return model.eval()


class PerceptualJudge(Judge):
    """Scores each synthetic face by its perceptual distance to its parent."""

    name = "perceptual"
    column = "perceptual_distance"
    higher_is_better = False

    def __init__(self, backbone: str = "alex", device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_perceptual(backbone).to(self.device)

    @torch.inference_mode()
    def features(self, images: Tensor | np.ndarray, batch_size: int = 128) -> list[Tensor]:
        """Per-stage features of a set of faces (kept to compare many pairs without recomputing)."""
        x = as_rgb_uint8(images)
        parts = [
            self.model.features(x[i : i + batch_size].to(self.device).float() / 255)
            for i in range(0, len(x), batch_size)
        ]
        return [torch.cat(stage) for stage in zip(*parts)] if parts else []

    @torch.inference_mode()
    def pair_distances(
        self, fa: Sequence[Tensor], fb: Sequence[Tensor], i: np.ndarray, j: np.ndarray, batch_size: int = 512
    ) -> np.ndarray:
        """Distances between faces ``i`` of feature set ``fa`` and faces ``j`` of ``fb`` (:meth:`features`)."""
        out = []
        for s in range(0, len(i), batch_size):
            a, b = torch.as_tensor(i[s : s + batch_size]), torch.as_tensor(j[s : s + batch_size])
            out.append(self.model.between([f[a] for f in fa], [f[b] for f in fb]).cpu())
        return torch.cat(out).numpy().astype(float) if out else np.zeros(0)

    def score(
        self, images: Tensor | np.ndarray, targets: Sequence[str], parents: Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        if parents is None:
            raise FesaugError("the perceptual judge compares each synthetic face with its parent; pass the parents")
        n = np.arange(len(targets))
        return self.pair_distances(self.features(images), self.features(parents), n, n)
