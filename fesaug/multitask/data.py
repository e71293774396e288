"""The faces an emotion + AU run trains on: which training subjects keep which labels
(:func:`label_split`), the AU occurrence labels of a manifest, and the loaded images (:class:`Faces`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import Manifest
from fesaug.utils.errors import FesaugError

__all__ = ["Faces", "au_occurrence", "label_split"]


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
