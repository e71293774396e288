"""FERSNet training checkpoints: writing them atomically, reading and checking them.

A checkpoint is a plain dict saved with ``torch.save`` that ``torch.load(path, weights_only=True)``
reads: tensors, lists, dicts, strings and numbers only (no pickled classes), so loading a
checkpoint from elsewhere cannot run code. Keys (schema version 1,
:data:`fesaug.synthesis.records.CHECKPOINT`; an older checkpoint is read through its migrations):

``format``, ``schema_version``, ``fesaug_version``
    identify the file.
``epoch``, ``step``
    completed epochs and optimiser steps.
``model``, ``discriminator``, ``optimizer_g``, ``optimizer_d``, ``scheduler_g``, ``scheduler_d``,
``grad_scaler``
    state dicts (``grad_scaler`` is empty unless fp16 mixed precision was used).
``rng``
    torch CPU / CUDA, numpy and Python generator states, for resuming.
``config``, ``model_config``
    the resolved :class:`~fesaug.synthesis.config.TrainConfig` and FERSNet config, as dicts.
``classes``, ``image_size``
    the class list (label order) and the square image side the model takes.
``manifest``
    ``{"path", "sha256"}`` of the training manifest.
``split``
    ``{"holdout_fold", "train_subjects", "val_subjects", "heldout_subjects", "train_folds",
    "val_folds", "holdout_folds"}``: who was trained on, validated on, and never seen.
``best``
    ``{"epoch", "val_fer_acc", "val_fer_loss"}`` of the best epoch so far.
``metrics``
    this epoch's line of ``metrics.jsonl``.
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fesaug import __version__
from fesaug.synthesis.records import CHECKPOINT
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path

FORMAT = "fesaug-fersnet-checkpoint"
REQUIRED_KEYS = (
    "epoch",
    "step",
    "model",
    "discriminator",
    "optimizer_g",
    "optimizer_d",
    "scheduler_g",
    "scheduler_d",
    "grad_scaler",
    "rng",
    "config",
    "model_config",
    "classes",
    "image_size",
    "manifest",
    "split",
    "best",
)


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format keys) atomically: temp file in the same folder, then rename."""
    with atomic_path(path) as tmp:
        torch.save(CHECKPOINT.stamp({"format": FORMAT, "fesaug_version": __version__, **payload}), tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a checkpoint written by :func:`save_checkpoint`, on the CPU."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise FesaugError(
            f"checkpoint {path} {what}; pass a .pt file from a run's checkpoints/ folder (last.pt or best.pt)"
        )
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of non-torch files before failing on them.
            warnings.simplefilter("ignore", UserWarning)
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise FesaugError(
            f"{path} is not a readable fesaug checkpoint ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else 'no details'}); "
            "it may be truncated or another kind of file — use a checkpoints/last.pt or best.pt written by `fesaug "
            "train`"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise FesaugError(
            f"{path} is a torch file but not a fesaug FERSNet checkpoint; use one written by `fesaug train`"
        )
    if data.get("schema_version") is None and data.get("format_version") != 1:
        raise FesaugError(
            f"{path}: checkpoint format version {data.get('format_version')!r} is not supported; use the fesaug "
            f"version that wrote it ({data.get('fesaug_version')})"
        )
    data = CHECKPOINT.read(data, where=str(path))
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise FesaugError(
            f"{path}: checkpoint is incomplete (missing {', '.join(missing)}); retrain or use another checkpoint"
        )
    return data


# --------------------------------------------------------------------------------------------
# random generator states, in weights_only-loadable types


def rng_state() -> dict[str, Any]:
    version, mt_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": version, "state": list(mt_state), "gauss": gauss},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
