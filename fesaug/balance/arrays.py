"""The arrays :class:`fesaug.FESampler` takes and gives back.

Inputs are checked in scikit-learn's and imbalanced-learn's order and with their exception type
(labels first, then images; :class:`~fesaug.utils.errors.InvalidValue` is a ``ValueError``),
and outputs come back in the input's form: dtype, ``N×H×W`` or ``N×H×W×C``, list or array,
labels or one-hot rows.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.preprocessing import label_binarize
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import column_or_1d

from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.labels import canonical_label
from fesaug.data.manifest import read_manifest, working_set
from fesaug.synthesis.generator import Generator
from fesaug.utils.errors import FesaugError, InvalidValue


@dataclass
class Faces:
    """Checked input: images ``x`` (``N×C×H×W``, the input's dtype), labels ``y`` (1-D), the
    distinct labels ``classes`` (sorted), each row's position in them (``y_index``), each
    class's index among the generator's classes (``class_index``), each row's identity
    (``subjects``) and how to give results back (``form``)."""

    x: np.ndarray
    y: np.ndarray
    classes: np.ndarray
    y_index: np.ndarray
    class_index: np.ndarray
    subjects: list[str]
    form: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.y)

    def source_pixels(self, size: int) -> torch.Tensor:
        """The images as the generator takes them: ``N×C×size×size``, uint8 or float32 in [0, 1]."""
        x = torch.from_numpy(np.ascontiguousarray(self.x))
        x = x.to(torch.float32) if x.dtype.is_floating_point else x.to(torch.uint8)
        return resize_pixels(x, size)


def faces_from_arrays(
    X: Any, y: Any, groups: Sequence[Hashable] | None, generator: Generator, label_names: Any
) -> Faces:
    """``X``, ``y`` and ``groups`` checked against each other and the generator."""
    labels, y_form = _check_labels(y)
    classes, y_index = np.unique(labels, return_inverse=True)
    if len(classes) < 2:
        raise InvalidValue(
            f"y has a single class ({classes[0]!r}): there is nothing to balance; a sampler needs two classes or more"
        )
    x, x_form = _check_images(X, len(labels), generator)
    return Faces(
        x=x,
        y=labels,
        classes=classes,
        y_index=y_index.reshape(-1),
        class_index=class_indices(classes, generator, label_names),
        subjects=_subjects(groups, len(labels)),
        form={**x_form, **y_form},
    )


def faces_from_manifest(
    path: str | os.PathLike, generator: Generator, splits: Sequence[str], holdout_folds: Sequence[int] | None
) -> tuple[Faces, np.ndarray]:
    """The real rows of a manifest's ``splits`` outside ``holdout_folds`` (default: the fold the
    generator was held out from), as ``fesaug balance`` reads them, and their manifest positions.
    Images are decoded at their own size when they share one square size, else at the
    generator's."""
    m = read_manifest(path)
    m.check_channels(generator.channels, f"the checkpoint {generator.checkpoint}")
    if holdout_folds is None:
        holdout_folds = [] if generator.holdout_fold is None else [generator.holdout_fold]
    real = (m.df["origin"] == "real").to_numpy(dtype=bool)
    rows = np.flatnonzero(working_set(m.df, splits, holdout_folds) & real)
    if rows.size == 0:
        raise FesaugError(
            f"{m.path}: no real rows in split(s) {', '.join(splits)} outside held-out fold(s) {list(holdout_folds)}; "
            "check splits and holdout_folds"
        )
    sizes = set(zip(m.df["width"].iloc[rows].tolist(), m.df["height"].iloc[rows].tolist()))
    (w, h), *others = sorted(sizes)
    data = ManifestDataset(m, rows=rows, image_size=None if not others and w == h else generator.image_size)
    ids = data.sample_ids
    faces = Faces(
        x=data.pixels.numpy(),
        y=data.labels,
        classes=np.unique(data.labels),
        y_index=np.unique(data.labels, return_inverse=True)[1].reshape(-1),
        class_index=class_indices(np.unique(data.labels), generator, m.classes),
        subjects=[f"row:{ids[i]}" if s is None else s for i, s in enumerate(data.subjects)],
        form={"layout": "NHW" if m.channels == 1 else "NHWC", "dtype": np.dtype(np.uint8)},
    )
    if len(faces.classes) < 2:
        raise InvalidValue(f"{m.path}: the rows to balance hold a single class ({m.classes[faces.classes[0]]})")
    return faces, rows


def class_indices(classes: np.ndarray, generator: Generator, label_names: Any) -> np.ndarray:
    """Each label's index among the generator's classes. ``label_names`` (a sequence indexed by
    the labels, or a mapping) names them; without it integer labels are the indices themselves
    and strings are class names, in any spelling fesaug's labels know (``angry`` = ``anger``)."""
    known = generator.classes
    out: list[int] = []
    for label in classes.tolist():
        if label_names is None and isinstance(label, (int, np.integer)):
            if not 0 <= label < len(known):
                raise InvalidValue(
                    f"y has label {label}, but the generator knows classes 0..{len(known) - 1} "
                    f"({', '.join(known)}); pass label_names to name y's labels"
                )
            out.append(int(label))
            continue
        try:
            name = str(label) if label_names is None else label_names[label]
        except (KeyError, IndexError, TypeError):
            raise InvalidValue(f"label_names names no class for label {label!r}; name every label of y") from None
        canonical = name if name in known else canonical_label(str(name))
        if canonical not in known:
            raise InvalidValue(
                f"label {label!r} ({name!r}) is not a class of the generator, which knows {', '.join(known)}; "
                "name y's labels with label_names, or use a checkpoint trained on these classes"
            )
        out.append(known.index(canonical))
    if len(set(out)) < len(out):
        raise InvalidValue(f"labels {classes.tolist()} name one generator class twice ({[known[k] for k in out]})")
    return np.asarray(out, dtype=np.int64)


def restore(faces: Faces, real: np.ndarray, synthetic: torch.Tensor, y_index: np.ndarray) -> tuple[Any, Any]:
    """``X_res`` (the rows ``real`` of ``X``, then ``synthetic`` at ``X``'s size and dtype) and
    ``y_res`` (the labels at ``y_index``), in the form ``X`` and ``y`` came in."""
    form = faces.form
    side = faces.x.shape[-1]
    fakes = resize_pixels(synthetic, side) if len(synthetic) else synthetic.reshape(0, *faces.x.shape[1:])
    fakes = fakes.numpy()
    if form["dtype"].kind == "f":
        fakes = fakes.astype(form["dtype"])
    else:
        fakes = (np.round(fakes * 255) if fakes.dtype.kind == "f" else fakes).astype(form["dtype"])
    x = np.concatenate([faces.x[real], fakes])
    x = x[:, 0] if form["layout"] == "NHW" else np.moveaxis(x, 1, -1)
    y = faces.classes[y_index]
    if form.get("one_hot"):
        y = label_binarize(y, classes=faces.classes).astype(form["y_dtype"])
    return (x.tolist() if form.get("x_list") else x), (y.tolist() if form.get("y_list") else y)


def _check_labels(y: Any) -> tuple[np.ndarray, dict[str, Any]]:
    form = {"y_list": isinstance(y, list)}
    values = np.asarray(y)
    if values.ndim == 2 and values.shape[1] > 1 and type_of_target(values) == "multilabel-indicator":
        if (values.sum(axis=1) != 1).any():
            raise InvalidValue(
                "y has rows with several labels (multilabel); a face gets one expression here. Multilabel and "
                "multioutput targets are not supported"
            )
        return values.argmax(axis=1), {**form, "one_hot": True, "y_dtype": values.dtype}
    try:
        check_classification_targets(values)
        labels = column_or_1d(values)
    except ValueError as exc:
        raise InvalidValue(
            f"y must hold one class label per image (integers or names, or one-hot rows): {exc}"
        ) from None
    if pd.isna(pd.Series(labels)).any():
        raise InvalidValue("y has missing labels (None/NaN); label every image or drop it")
    return labels, form


def _check_images(X: Any, n: int, generator: Generator) -> tuple[np.ndarray, dict[str, Any]]:
    try:
        x = np.asarray(X)
    except ValueError as exc:
        raise InvalidValue(f"X is not an array of equally sized images ({exc})") from None
    if x.dtype.kind not in "uif" or x.ndim not in (3, 4):
        raise InvalidValue(
            f"X has shape {x.shape} and dtype {x.dtype}; FESampler takes images N×H×W or N×H×W×C, uint8 (or "
            "float in [0, 1]). Rows of features are for imbalanced-learn's own samplers"
        )
    if len(x) != n:
        raise InvalidValue(f"X has {len(x)} images but y has {n} labels; give one label per image")
    channels, want = (x.shape[3] if x.ndim == 4 else 1), getattr(generator, "channels", 1)
    if channels != want:
        raise InvalidValue(
            f"X's images have {channels} channel(s), but the generator {generator.checkpoint} makes {want}; "
            "convert the images, or use a checkpoint trained on such images"
        )
    if x.shape[1] != x.shape[2]:
        raise InvalidValue(f"X's images are {x.shape[1]}x{x.shape[2]}; crop or pad the faces to squares first")
    low, high = (0, 1) if x.dtype.kind == "f" else (0, 255)
    if x.size and not (np.isfinite(x).all() and x.min() >= low and x.max() <= high):
        raise InvalidValue(
            f"X's values lie in [{x.min()}, {x.max()}]; {x.dtype} images must lie in [{low}, {high}]"
            + (" (scale float images to [0, 1])" if low == 0 and high == 1 else "")
        )
    form = {"x_list": isinstance(X, list), "layout": "NHW" if x.ndim == 3 else "NHWC", "dtype": x.dtype}
    return (x[:, None] if x.ndim == 3 else np.moveaxis(x, -1, 1)), form


def _subjects(groups: Sequence[Hashable] | None, n: int) -> list[str]:
    """One identity per image: ``groups`` (subject ids), or each image its own."""
    if groups is None:
        return [f"row:{i}" for i in range(n)]
    values = list(groups)
    if len(values) != n:
        raise InvalidValue(f"groups has {len(values)} subject ids for {n} images; give one per image")
    return [f"row:{i}" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v) for i, v in enumerate(values)]
