"""FERSNet's versioned records (:mod:`fesaug.utils.records`): its training checkpoints, and the
training configuration as a run's ``config.yaml``, a checkpoint and an evaluation record it.

Version 0 is everything written before records carried a schema version. What such a record
meant by the keys it lacks is said here once: a key added later means the behaviour fesaug had
before it existed (:data:`LEGACY`, :data:`LEGACY_MODEL`), and any other key its version-1 default
(:data:`TRAIN_CONFIG_V1`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fesaug.data.manifest import HOLDOUT_RENAMES
from fesaug.utils.records import RecordType, fill_missing, rename_keys

# TrainConfig.to_dict() of version 1's defaults.
TRAIN_CONFIG_V1: dict[str, Any] = {
    "preset": "cpu", "model": {}, "epochs": 30, "batch_size": 32, "lr": 0.0005, "betas": [0.5, 0.999],
    "weight_decay": 0.0005, "d_steps": 1, "lr_milestones": [0.7], "lr_gamma": 0.1, "holdout_fold": None,
    "val_fraction": 0.15, "paired_prob": 0.7, "own_expression_prob": 0.0, "align_pairs": True, "pair_threshold": 10.0,
    "paired_intensities": [], "shift": 0.0625, "hflip": True, "rotation": 0.0, "scale": 0.0, "label_smoothing": 0.0,
    "ema": 0.0, "num_workers": 0, "seed": 0, "deterministic": True, "device": "auto", "amp": True, "sample_rows": 4,
    "loss": {
        "fer": 1.0, "adversarial": 0.3, "cycle": 1.0, "paired": 10.0, "paired_perceptual": 0.0, "expression": 0.1,
        "mask_smoothness": 0.5, "flow_smoothness": 0.01, "edit_sparsity": 1.0, "flow_magnitude": 0.05,
        "attention": 0.1,
    },
    "expression_classifier": None,
}  # fmt: skip
# What a key meant in a version-0 config recorded before the key existed: the behaviour fesaug had
# then. Keys whose version-1 default is that behaviour need no entry.
LEGACY: dict[str, Any] = {
    "align_pairs": False,
    "pair_threshold": 0.0,
    "paired_intensities": [],
    "loss": {"paired_perceptual": 0.0, "flow_smoothness": 0.0, "edit_sparsity": 0.0, "flow_magnitude": 0.0},
}
# Model defaults that changed, keyed by a TrainConfig key that arrived with the change: runs record
# only the model keys they set, so a version-0 record without the key was made with these model values.
LEGACY_MODEL: dict[str, dict[str, Any]] = {
    "align_pairs": {"output": "attention"},  # before the warp decoder became the default
    "pair_threshold": {"flow_threshold": 0.0, "mask_threshold": 0.0},  # before the warp's dead zones
}
# A resolved FERSNet config (a checkpoint's model_config) without these was made before they existed.
MODEL_CONFIG_LEGACY: dict[str, Any] = {"flow_threshold": 0.0, "mask_threshold": 0.0}


def migrate_train_config_v0_to_v1(config: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainConfig dict recorded before versions, as version 1 writes it."""
    out = fill_missing(config, LEGACY)
    for marker, model in LEGACY_MODEL.items():
        if marker not in config:
            out["model"] = {**model, **dict(out.get("model") or {})}
    return fill_missing(rename_keys(out, HOLDOUT_RENAMES), TRAIN_CONFIG_V1)


def _checkpoint_v0_to_v1(ckpt: dict[str, Any]) -> dict[str, Any]:
    out = dict(ckpt)
    out.pop("format_version", None)  # version 0's constant 1, never bumped: schema_version replaces it
    if isinstance(out.get("config"), Mapping):
        out["config"] = migrate_train_config_v0_to_v1(out["config"])
    if isinstance(out.get("model_config"), Mapping):
        out["model_config"] = fill_missing(out["model_config"], MODEL_CONFIG_LEGACY)
    if isinstance(out.get("split"), Mapping):
        out["split"] = rename_keys(out["split"], HOLDOUT_RENAMES)
    return out


def migrate_train_config_v1_to_v2(config: Mapping[str, Any]) -> dict[str, Any]:
    """Version 2 added the flow-target loss (``LossWeights.flow_target``); no earlier run had it."""
    return fill_missing(config, {"loss": {"flow_target": 0.0}})


def _checkpoint_v1_to_v2(ckpt: dict[str, Any]) -> dict[str, Any]:
    if isinstance(ckpt.get("config"), Mapping):
        ckpt = {**ckpt, "config": migrate_train_config_v1_to_v2(ckpt["config"])}
    return ckpt


CHECKPOINT = RecordType("FERSNet checkpoint", 2, {0: _checkpoint_v0_to_v1, 1: _checkpoint_v1_to_v2})
# A run's config.yaml: the resolved TrainConfig and its schema version.
RUN_CONFIG = RecordType("run configuration", 2, {0: migrate_train_config_v0_to_v1, 1: migrate_train_config_v1_to_v2})
