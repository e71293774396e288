"""A trained FERSNet for inference: synthesize expressions and classify faces.

``fesaug.load_generator("runs/ck/checkpoints/best.pt")`` returns a :class:`Generator`. Images go
in and come out as tensors ``(B, C, S, S)`` (or one ``(C, S, S)`` image), ``C`` =
``generator.channels`` (1 gray, 3 RGB: what it was trained on), ``S`` = ``generator.image_size``:

* ``uint8`` in [0, 255] → ``synthesize`` returns ``uint8``;
* float in [0, 1] → ``synthesize`` returns float32 in [0, 1].

Resize faces to ``image_size`` first (e.g. ``ManifestDataset(..., image_size=gen.image_size)``).
Results are on the CPU, whatever device the model runs on.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from fesaug.evaluate.downstream import DownstreamClassifier
from fesaug.models import MAX_INTENSITY, FERSNet, FERSNetConfig, from_model_range, to_model_range
from fesaug.synthesis.checkpoint import load_checkpoint
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import file_sha256


class Generator:
    """FERSNet's synthesis branch (and its FER branch) loaded from a training checkpoint.

    Attributes: ``classes`` (label order), ``image_size``, ``channels`` (1 gray, 3 colour: the
    images it was trained on and makes), ``checkpoint`` (path),
    ``checkpoint_sha256``, ``epoch``, ``training_subjects`` / ``training_folds`` (the faces
    the weights were fitted on), ``validation_subjects``, ``heldout_subjects``,
    ``holdout_fold``, ``config`` (the training configuration, a dict), ``model`` (the
    ``FERSNet``, in eval mode) and ``device``.
    """

    def __init__(self, model: FERSNet, ckpt: dict[str, Any], path: Path, sha256: str, device: torch.device) -> None:
        split = ckpt["split"]
        self.model = model
        self.device = device
        self.checkpoint = path
        self.checkpoint_sha256 = sha256
        self.classes: list[str] = list(ckpt["classes"])
        self.image_size: int = int(ckpt["image_size"])
        self.channels: int = model.config.in_channels
        self.epoch: int = int(ckpt["epoch"])
        self.config: dict[str, Any] = ckpt["config"]
        self.holdout_fold: int | None = split["holdout_fold"]
        self.training_subjects: list[str] = list(split["train_subjects"])
        self.training_folds: list[int] = list(split["train_folds"])
        self.validation_subjects: list[str] = list(split["val_subjects"])
        self.heldout_subjects: list[str] = list(split["heldout_subjects"])

    def __repr__(self) -> str:
        return (
            f"Generator({self.checkpoint}, epoch {self.epoch}, {len(self.classes)} classes, "
            f"{self.image_size}x{self.image_size}{' RGB' if self.channels == 3 else ''}, {self.device})"
        )

    @torch.inference_mode()
    def synthesize(
        self,
        images: Tensor | np.ndarray,
        target_labels: int | str | Sequence[int | str] | Tensor,
        *,
        intensity: float | Sequence[float] | Tensor | None = None,
        batch_size: int = 64,
    ) -> Tensor:
        """``images`` translated to ``target_labels`` (one label for all, or one per image; class
        indices or names). Same dtype convention as the input (see the module docstring).
        ``intensity`` (one for all, or one per image, in [0, ``MAX_INTENSITY``]) scales the edit:
        0 returns the input, 1 (the default) the learnt translation, above 1 an exaggerated one."""
        x, as_uint8, single = self._prepare(images)
        targets = self._labels(target_labels, len(x))
        scale = self._intensity(intensity, len(x))
        out = []
        for start in range(0, len(x), batch_size):
            batch = to_model_range(x[start : start + batch_size].to(self.device))
            fake = self.model.synthesize(
                batch,
                targets[start : start + batch_size].to(self.device),
                None if scale is None else scale[start : start + batch_size].to(self.device),
            )
            out.append(from_model_range(fake, as_uint8=as_uint8).cpu())
        result = torch.cat(out) if out else torch.empty_like(x, dtype=torch.uint8 if as_uint8 else torch.float32)
        return result[0] if single else result

    @torch.inference_mode()
    def classify(self, images: Tensor | np.ndarray, *, batch_size: int = 256, flip: bool = False) -> Tensor:
        """Class probabilities ``(B, len(classes))`` from the FER branch (``(C,)`` for one image).
        ``flip``: the mean of the probabilities of each face and its mirror image (test-time
        augmentation; a face's expression does not change with its mirror image)."""
        x, _, single = self._prepare(images)
        out = []
        for s in range(0, len(x), batch_size):
            views = [to_model_range(x[s : s + batch_size].to(self.device))]
            views += [views[0].flip(-1)] if flip else []
            out.append(torch.stack([torch.softmax(self.model.classify(v).float(), 1) for v in views]).mean(0).cpu())
        probs = torch.cat(out) if out else torch.empty((0, len(self.classes)))
        return probs[0] if single else probs

    def recogniser(self) -> DownstreamClassifier:
        """A copy of the FER branch as a downstream classifier (float [0, 1] images in, logits
        out), e.g. to fine-tune on real + synthetic faces with :func:`fesaug.evaluate.downstream.fit`
        (the paper's recipe). The copy has its own weights; this generator is unchanged."""
        net = copy.deepcopy(self.model)
        model = DownstreamClassifier(
            _FERBranch(net), net.fer_head.fc, "fersnet", len(self.classes), self.image_size, self.channels
        )
        # The standardisation (x - 0.5) / 0.5 is FERSNet's own [0, 1] → [-1, 1] input range.
        model.mean.fill_(0.5)
        model.std.fill_(0.5)
        return model.to(self.device)

    def _prepare(self, images: Tensor | np.ndarray) -> tuple[Tensor, bool, bool]:
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        if not isinstance(x, Tensor):
            raise FesaugError(f"images must be a torch tensor or numpy array, got {type(images).__name__}")
        single = x.dim() == 3
        x = x[None] if single else x
        c, s = self.channels, self.image_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (c, s, s):
            kind = "colour" if c == 3 else "grayscale"
            raise FesaugError(
                f"expected {kind} images of shape (B, {c}, {s}, {s}) or ({c}, {s}, {s}), got {tuple(images.shape)}; "
                f"resize faces to the generator's image_size ({s}) first"
                + (f" (this generator was trained on {kind} images)" if x.dim() in (3, 4) and x.shape[-3] != c else "")
            )
        return x, x.dtype == torch.uint8, single

    @staticmethod
    def _intensity(intensity: float | Sequence[float] | Tensor | None, n: int) -> Tensor | None:
        if intensity is None:
            return None
        values = torch.as_tensor(intensity, dtype=torch.float32).reshape(-1)
        values = values.expand(n) if values.numel() == 1 else values
        if values.numel() != n or not bool(((values >= 0) & (values <= MAX_INTENSITY)).all()):
            raise FesaugError(
                f"intensity must be one number or one per image, each in [0, {MAX_INTENSITY:g}]; "
                f"got {intensity!r} for {n} images"
            )
        return values

    def _labels(self, labels: int | str | Sequence[int | str] | Tensor, n: int) -> Tensor:
        if isinstance(labels, Tensor):
            values = labels.reshape(-1).tolist()
        elif isinstance(labels, (int, str, np.integer)):
            values = [labels] * n
        else:
            values = list(labels)
        ids = []
        for v in values:
            if isinstance(v, str):
                if v not in self.classes:
                    raise FesaugError(f"unknown class {v!r}; this generator knows {', '.join(self.classes)}")
                v = self.classes.index(v)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= v < len(self.classes):
                raise FesaugError(f"target labels must be class names or indices 0..{len(self.classes) - 1}, got {v!r}")
            ids.append(int(v))
        if len(ids) != n:
            raise FesaugError(f"got {len(ids)} target labels for {n} images; pass one label, or one per image")
        return torch.tensor(ids, dtype=torch.long)


class _FERBranch(nn.Module):
    """FERSNet's recognition path as a plain module (logits only)."""

    def __init__(self, fersnet: FERSNet) -> None:
        super().__init__()
        self.fersnet = fersnet

    def forward(self, x: Tensor) -> Tensor:
        return self.fersnet.classify(x)


def load_generator(checkpoint: str | os.PathLike, device: str | torch.device | None = None) -> Generator:
    """Load a ``fesaug train`` checkpoint (``best.pt`` or ``last.pt``) for inference.

    ``device`` defaults to CUDA when available, else the CPU. Raises
    :class:`~fesaug.utils.errors.FesaugError` for anything that is not a readable checkpoint.
    """
    path = Path(checkpoint)
    ckpt = load_checkpoint(path)
    try:
        model_config = FERSNetConfig(**ckpt["model_config"])
    except (TypeError, FesaugError) as exc:
        raise FesaugError(
            f"{path}: the checkpoint's model config is not understood ({exc}); it was written by another fesaug version"
        ) from None
    if model_config.num_classes != len(ckpt["classes"]) or model_config.image_size != ckpt["image_size"]:
        raise FesaugError(f"{path}: the checkpoint's class list / image size disagree with its model; it is damaged")
    device = resolve_device(device)
    model = FERSNet(model_config)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError, TypeError) as exc:
        raise FesaugError(
            f"{path}: the model weights do not fit its FERSNet config ({str(exc).splitlines()[0]}); the checkpoint "
            "is damaged or from an older fesaug — retrain it with `fesaug train`"
        ) from None
    model.to(device).eval()
    return Generator(model, ckpt, path, file_sha256(path), device)
