"""PyTorch datasets over a manifest.

* :class:`ManifestDataset`: ``(image, label)`` pairs for any classifier or generator; images are
  float32 ``C×H×W`` in [0, 1], ``C`` the manifest's channels (1 gray, 3 RGB).
* :class:`PairedTargetDataset`: FERSNet's training samples, a source image plus a target
  expression and, when the subject has one, a real image of that subject showing it.

Both decode every image once, when the dataset is built, and keep the 8-bit pixels in memory:
expression datasets are small (CK+48 is 981 images, about 4 MB at 64×64), decoding PNGs is the
slowest part of loading them, and every epoch reads every image again. Worker processes of a
``DataLoader`` share the cache copy-on-write.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from fesaug.data.images import to_array
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.utils.errors import FesaugError


class ManifestDataset(Dataset):
    """The images and labels of a manifest, optionally a subset of its rows.

    ``origins`` keeps only rows of these origins (e.g. ``("real",)``); ``rows`` keeps only these
    row positions of ``manifest.df`` (both filters apply together, in manifest order).
    ``image_size`` resizes every image to ``image_size × image_size`` once, when it is decoded
    (shorter side to ``image_size``, then a centre crop, so faces keep their aspect ratio);
    without it all images must already share one size. ``transform`` is applied to each item's
    image, a float32 ``torchvision.tv_tensors.Image`` in [0, 1]: any ``torchvision.transforms.v2``
    transform or pipeline (``v2.Compose([v2.RandomHorizontalFlip(), v2.RandomResizedCrop(48,
    antialias=True), v2.Normalize([0.5], [0.5])])``) or any callable on a tensor.

    Images are decoded once, when the dataset is built, unless ``lazy``: then on first use (an
    item, :attr:`pixels` or :attr:`image_shape`). Either way the labels and weights come from the
    manifest alone, so a sampler can read them without decoding an image.

    Aligned with the items: ``pixels`` (the decoded uint8 images, ``N×C×H×W``, ``C`` =
    :attr:`channels`, the manifest's: 1 gray, 3 RGB), ``labels`` (also
    :meth:`get_labels`, the name samplers such as torchsampler's ``ImbalancedDatasetSampler``
    ask for), ``subjects``, ``sample_ids``, ``rows`` (positions in ``manifest.df``) and ``weights``
    (the manifest's ``weight`` column, 1 where it is absent or null: a weighted balance run's
    rows, to sample in proportion to, e.g. with
    :class:`~fesaug.data.samplers.WeightedDistributedSampler`, or to weight the loss by).

    ``soft_labels``: items are ``(image, target)`` with ``target`` a float32 vector over the
    classes (:attr:`targets`) instead of a class index, so a synthetic row labelled soft by
    ``fesaug balance --synthetic-labels soft`` trains with the mass it carries; train with
    ``torch.nn.functional.cross_entropy(logits, target)`` (probability targets).
    """

    def __init__(
        self,
        manifest: Manifest | str | os.PathLike,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        origins: Collection[str] | None = None,
        rows: Sequence[int] | None = None,
        image_size: int | None = None,
        lazy: bool = False,
        soft_labels: bool = False,
    ) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
        df = self.manifest.df
        keep = np.ones(len(df), dtype=bool)
        if origins is not None:
            keep &= df["origin"].isin(list(origins)).to_numpy()
        if rows is not None:
            chosen = np.zeros(len(df), dtype=bool)
            chosen[np.asarray(rows, dtype=np.int64)] = True
            keep &= chosen
        self.rows = np.flatnonzero(keep)
        self.labels = df["label"].to_numpy(dtype=np.int64)[self.rows]
        self.subjects = [None if pd.isna(s) else str(s) for s in df["subject_id"].iloc[self.rows].tolist()]
        self.sample_ids = df["sample_id"].iloc[self.rows].tolist()
        self.weights = (
            torch.from_numpy(df["weight"].to_numpy(dtype=np.float64, na_value=1.0)[self.rows].copy())
            if "weight" in df.columns
            else torch.ones(len(self.rows), dtype=torch.float64)
        )
        self.classes = self.manifest.classes
        self.channels = self.manifest.channels
        self.target_mass = (
            df["target_mass"].to_numpy(dtype=np.float64, na_value=1.0)[self.rows].copy()
            if "target_mass" in df.columns
            else np.ones(len(self.rows))
        )
        self.source_labels = df["source_label"].to_numpy(dtype=np.float64, na_value=-1)[self.rows].astype(np.int64)
        self.soft_labels = soft_labels
        self.transform = transform
        self.image_size = image_size
        self._pixels = None if lazy else _decode(self.manifest, self.rows, image_size)
        self._to_float = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    @property
    def pixels(self) -> torch.Tensor:
        """The decoded uint8 images ``N×C×H×W`` (decoded now if the dataset is ``lazy``)."""
        if self._pixels is None:
            self._pixels = _decode(self.manifest, self.rows, self.image_size)
        return self._pixels

    @property
    def has_soft_labels(self) -> bool:
        """Whether some row puts part of its label on another class (``target_mass`` below 1)."""
        return bool((self.target_mass < 1).any())

    @property
    def targets(self) -> torch.Tensor:
        """Every item's label as a probability vector ``N×C`` (float32): one-hot for a hard label,
        ``target_mass`` on the class and the rest on the row's ``source_label`` for a soft one."""
        out = torch.zeros(len(self.rows), len(self.classes), dtype=torch.float32)
        index = torch.arange(len(self.rows))
        mass = torch.from_numpy(self.target_mass).float()
        out[index, torch.from_numpy(self.labels)] = mass
        soft = torch.from_numpy(self.target_mass < 1)
        out[index[soft], torch.from_numpy(self.source_labels)[soft]] += 1 - mass[soft]
        return out

    def get_labels(self) -> list[int]:
        """The class index of every item, read from the manifest (no image is decoded)."""
        return self.labels.tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int | torch.Tensor]:
        image = self._to_float(self.pixels[i])
        if self.transform is not None:
            image = self.transform(image)
        if self.soft_labels:
            target = torch.zeros(len(self.classes))
            target[int(self.labels[i])] = float(self.target_mass[i])
            if self.target_mass[i] < 1:
                target[int(self.source_labels[i])] += 1 - float(self.target_mass[i])
            return image.as_subclass(torch.Tensor), target
        return image.as_subclass(torch.Tensor), int(self.labels[i])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.pixels.shape[1:])  # type: ignore[return-value]

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.classes))

    def sample_weights(self) -> torch.Tensor:
        """One weight per item, inversely proportional to its class's frequency, so that a
        ``WeightedRandomSampler(weights, num_samples=len(ds))`` draws every class equally often."""
        counts = self.class_counts()
        return torch.from_numpy(1.0 / counts[self.labels]).to(torch.float64)


def _decode(manifest: Manifest, rows: np.ndarray, image_size: int | None) -> torch.Tensor:
    """uint8 pixels ``(N, C, S, S)`` of ``rows`` (C: the manifest's channels), resized to ``image_size`` if given."""
    if image_size is not None and image_size < 1:
        raise FesaugError(f"image_size must be a positive number of pixels, got {image_size}")
    resize = (
        None if image_size is None else v2.Compose([v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)])
    )
    images = []
    for i in rows.tolist():
        image = torch.from_numpy(to_array(manifest.open_image(i)).copy())
        if resize is not None:
            image = resize(tv_tensors.Image(image)).as_subclass(torch.Tensor)
        images.append(image)
    if not images:
        return torch.empty((0, manifest.channels, image_size or 0, image_size or 0), dtype=torch.uint8)
    shapes = {tuple(im.shape) for im in images}
    if len(shapes) > 1:
        raise FesaugError(
            f"{manifest.path}: images have different sizes "
            f"({', '.join(f'{h}x{w}' for _, h, w in sorted(shapes)[:4])}); "
            "pass image_size to resize them to one size"
        )
    return torch.stack(images)


def resize_pixels(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """A batch of images ``N×C×H×W`` (uint8 or float) resized to ``size × size`` with
    antialiasing; returned unchanged when it already has that size. Models with their own input
    size (a quality gate, a judge, an AU detector) read other models' images through this."""
    if tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    return v2.functional.resize(pixels, [size, size], antialias=True)


class PairedTargetDataset(Dataset):
    """FERSNet training samples built on a :class:`ManifestDataset` (its rows and pixel cache).

    Item ``i`` is a dict of

    * ``source`` (uint8 ``C×S×S``) and ``source_label``: row ``i``;
    * ``target_label``: the expression to synthesize, the source's own only with probability
      ``own_expression_prob`` (then ``target`` is the source itself and ``paired`` is True: a face
      asked for the expression it already shows should come back unchanged, CycleGAN's identity
      loss through the paired loss);
    * ``target`` (uint8 ``C×S×S``) and ``paired`` (bool): otherwise, with probability ``paired_prob``, and
      when the subject shows another expression somewhere in the dataset, a real image of the
      same subject with that expression (a supervised pair, as in the authors' code); otherwise
      ``paired`` is False, ``target_label`` is a uniformly drawn other class and ``target`` is
      all zeros (only unpaired losses apply).

    With ``align_pairs``, the partner image is first registered onto the source and matched in
    brightness (:func:`fesaug.data.pairs.align_pair`; computed once per pair), so the pair
    differs in expression rather than in pose and lighting; with ``pair_threshold`` > 0 as well,
    the target keeps the source's pixels wherever the partner differs by less than that many
    gray levels (:func:`fesaug.data.pairs.keep_unchanged`).

    With ``pair_flow`` (and ``align_pairs``), items also hold ``flow`` (``2×S×S``) and
    ``flow_weight`` (``S×S``): :func:`fesaug.data.pairs.pair_flow` of the augmented pair, zeros
    when the target is not a moved partner (``LossWeights.flow_target``).

    With ``augment``, the same random pad-and-crop (up to ``shift × S`` pixels each way, edge
    padding), rotation (up to ``rotation`` degrees either way), zoom (by up to ``scale`` in or
    out) and horizontal flip are applied to source and target, so a pair stays aligned.

    Every random choice of item ``i`` comes from a generator seeded with ``(seed, epoch, i)``;
    call :meth:`set_epoch` before each epoch. An item is thus a pure function of those three
    numbers, whatever the worker count, world size or iterator state, which is what makes
    resumed and distributed runs reproducible.
    """

    def __init__(
        self,
        base: ManifestDataset,
        *,
        paired_prob: float,
        augment: bool,
        shift: float = 0.0,
        hflip: bool = True,
        rotation: float = 0.0,
        scale: float = 0.0,
        own_expression_prob: float = 0.0,
        seed: int = 0,
        align_pairs: bool = False,
        pair_threshold: float = 0.0,
        pair_flow: bool = False,
    ) -> None:
        if not 0.0 <= paired_prob <= 1.0:
            raise FesaugError(f"paired_prob must lie in [0, 1], got {paired_prob}")
        if not 0.0 <= own_expression_prob < 1.0:
            raise FesaugError(f"own_expression_prob must lie in [0, 1), got {own_expression_prob}")
        if any(s is None for s in base.subjects):
            missing = base.sample_ids[next(i for i, s in enumerate(base.subjects) if s is None)]
            raise FesaugError(
                f"{base.manifest.path}: row {missing} has no subject_id; training pairs images of the same "
                "subject and splits by subject, so every real row needs one (re-ingest with a subject pattern)"
            )
        self.base = base
        self.align_pairs = align_pairs
        self.pair_threshold = pair_threshold
        if pair_flow and not align_pairs:
            raise FesaugError("pair_flow needs align_pairs: a displacement between unregistered photos is mostly pose")
        self.pair_flow = pair_flow
        self._aligned: dict[tuple[int, int], torch.Tensor] = {}
        self.paired_prob = paired_prob
        self.own_expression_prob = own_expression_prob
        self.seed = seed
        self.epoch = 0
        self.num_classes = len(base.classes)
        # partners[i]: rows of the same subject showing another expression than row i.
        self.partners = _partners(base.subjects, base.labels)
        side = base.image_shape[-1]
        self.augment = (
            _pair_augmentation(side, shift=shift, hflip=hflip, rotation=rotation, scale=scale) if augment else None
        )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.base)

    def has_partner(self) -> np.ndarray:
        """Whether each row's subject shows another expression (so row can be paired)."""
        return np.array([len(p) > 0 for p in self.partners])

    def partner(self, i: int, j: int) -> torch.Tensor:
        """Row ``j`` as the target of source ``i``: as stored, or registered onto ``i``."""
        if not self.align_pairs:
            return self.base.pixels[j]
        if (i, j) not in self._aligned:
            from fesaug.data.pairs import align_pair, keep_unchanged

            # Gray faces as H×W (as before colour), colour ones C×H×W.
            gray = self.base.pixels.shape[1] == 1
            source = self.base.pixels[i, 0].numpy() if gray else self.base.pixels[i].numpy()
            aligned = align_pair(source, self.base.pixels[j, 0].numpy() if gray else self.base.pixels[j].numpy())
            if self.pair_threshold:
                aligned = keep_unchanged(source, aligned, self.pair_threshold)
            self._aligned[i, j] = torch.from_numpy(aligned)[None] if gray else torch.from_numpy(aligned)
        return self._aligned[i, j]

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng_seed = int(np.random.SeedSequence([self.seed, self.epoch, i]).generate_state(1, np.uint64)[0] >> 1)
        # v2 transforms draw from torch's global generator; fork it so this item's draws are
        # fixed by its seed and leave the caller's generator state untouched. Only the CPU
        # generator: torch.manual_seed would also reseed a GPU's generator on every item, which
        # fork_rng(devices=[]) does not restore (and costs 0.2 ms an item on a CPU, 25x this).
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(rng_seed)
            source_label = int(self.base.labels[i])
            partners = self.partners[i]
            # Drawn only when asked for, so the other draws (and older runs) stay as they were.
            own = self.own_expression_prob > 0 and float(torch.rand(())) < self.own_expression_prob
            paired = own or (len(partners) > 0 and float(torch.rand(())) < self.paired_prob)
            if own:
                target_label, target = source_label, self.base.pixels[i]
            elif paired:
                j = int(partners[int(torch.randint(len(partners), ()))])
                target_label, target = int(self.base.labels[j]), self.partner(i, j)
            else:
                # Uniform over the other classes: shift the source label by 1..C-1.
                offset = 1 + int(torch.randint(self.num_classes - 1, ()))
                target_label = (source_label + offset) % self.num_classes
                target = torch.zeros_like(self.base.pixels[i])
            source = self.base.pixels[i]
            if self.augment is not None:
                source, target = self.augment(tv_tensors.Image(source), tv_tensors.Image(target))
        item = {
            "source": source.as_subclass(torch.Tensor),
            "source_label": source_label,
            "target": target.as_subclass(torch.Tensor),
            "target_label": target_label,
            "paired": paired,
        }
        if self.pair_flow:  # the flow of the images the generator is shown, after augmentation
            from fesaug.data.pairs import pair_flow_tensors  # OpenCV, only when asked for

            side = source.shape[-1]
            item["flow"], item["flow_weight"] = (
                pair_flow_tensors(item["source"], item["target"], max(self.pair_threshold, 1.0))
                if paired and not own
                else (torch.zeros(2, side, side), torch.zeros(side, side))
            )
        return item


def _partners(subjects: Sequence[str | None], labels: np.ndarray) -> list[np.ndarray]:
    """For each row, the rows of the same subject showing another expression."""
    by_subject: dict[str | None, list[int]] = {}
    for i, s in enumerate(subjects):
        by_subject.setdefault(s, []).append(i)
    return [
        np.array([j for j in by_subject[s] if labels[j] != labels[i]], dtype=np.int64) for i, s in enumerate(subjects)
    ]


def _pair_augmentation(side: int, *, shift: float, hflip: bool, rotation: float, scale: float) -> v2.Compose | None:
    """The random pad-and-crop (up to ``shift × side`` pixels), rotation, zoom and horizontal flip
    :class:`PairedTargetDataset` applies to a source and its target together; None when it does nothing."""
    pad = round(shift * side)
    transforms: list[v2.Transform] = []
    if pad:
        transforms.append(v2.RandomCrop(side, padding=pad, padding_mode="edge"))
    if rotation or scale:
        # Rotated or zoomed out, the face shows corners from outside the image: pad by edge
        # replication first (as the shift does), so they are skin and background, not black.
        transforms += [
            v2.Pad(side // 2, padding_mode="edge"),
            v2.RandomAffine(
                degrees=rotation, scale=(1 - scale, 1 + scale), interpolation=v2.InterpolationMode.BILINEAR
            ),
            v2.CenterCrop(side),
        ]
    if hflip:
        transforms.append(v2.RandomHorizontalFlip())
    return v2.Compose(transforms) if transforms else None
