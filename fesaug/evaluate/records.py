"""An evaluation's versioned records (:mod:`fesaug.utils.records`): its settings
(``DIR/evaluate.json``, compared on resumption and by ``--generators-from``) and the fold records
(``fold-k/<condition>.json``, ``synthesis.json``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fesaug.balance.records import migrate_config_v0_to_v1 as migrate_balance_v0_to_v1
from fesaug.synthesis.records import migrate_train_config_v0_to_v1, migrate_train_config_v1_to_v2
from fesaug.utils.records import RecordType, fill_missing
from fesaug.utils.runlog import jsonable

# EvaluateConfig.key() of version 1's defaults, but for the generator (a TrainConfig, migrated by
# fesaug.synthesis.records) and the balance settings (fesaug.balance.records).
DOWNSTREAM_V1 = {
    "model": "small-cnn", "epochs": 80, "batch_size": 64, "lr": 0.001, "weight_decay": 0.0005, "image_size": 64,
    "augment": True, "erasing": 0.0, "label_smoothing": 0.1, "seed": 0, "device": None,
}  # fmt: skip
KEY_V1 = {"val_fraction": 0.15, "seed": 0, "judge": False, "expression_judge": False, "truth_intensity": 1.0}
# Downstream settings added after evaluations were first recorded, as they behaved before: an older
# record without them was made with neither (version 1's defaults differ).
DOWNSTREAM_LEGACY = {"erasing": 0.0, "label_smoothing": 0.0}


def migrate_key_v0_to_v1(key: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded :meth:`~fesaug.evaluate.config.EvaluateConfig.key` from before versions, as
    version 1 writes it: generator keys added since mean their behaviour before, a record of the
    model's overrides becomes the model they resolved to then, the balance settings' old names for
    the held-out folds read as today's, and other new keys mean their version-1 defaults."""
    out = fill_missing(key, KEY_V1)
    if isinstance(out.get("generator"), Mapping):
        generator = migrate_train_config_v0_to_v1(fill_missing(out["generator"], {"device": None, "num_workers": None}))
        if "resolved_model" not in generator:
            from fesaug.evaluate.config import model_key  # the model its preset and overrides resolved to
            from fesaug.synthesis.config import TrainConfig

            overrides = {k: generator[k] for k in ("preset", "model")}
            generator["resolved_model"] = jsonable(model_key(TrainConfig.from_dict(overrides, where="evaluate.json")))
        generator.pop("model", None)
        out["generator"] = generator
    if isinstance(out.get("balance"), Mapping):
        out["balance"] = migrate_balance_v0_to_v1(out["balance"])
    if isinstance(out.get("downstream"), Mapping):
        out["downstream"] = fill_missing(fill_missing(out["downstream"], DOWNSTREAM_LEGACY), DOWNSTREAM_V1)
    return out


def _evaluate_v0_to_v1(record: dict[str, Any]) -> dict[str, Any]:
    if isinstance(record.get("config"), Mapping):
        record = {**record, "config": migrate_key_v0_to_v1(record["config"])}
    return record


def _evaluate_v1_to_v2(record: dict[str, Any]) -> dict[str, Any]:
    # Version 2 added the downstream classifier's precision; every earlier evaluation trained in float32.
    config = record.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("downstream"), Mapping):
        downstream = fill_missing(config["downstream"], {"precision": "float32"})
        record = {**record, "config": {**config, "downstream": downstream}}
    return record


def _evaluate_v2_to_v3(record: dict[str, Any]) -> dict[str, Any]:
    # Version 3 added the last layer's re-tune on real faces; no earlier evaluation made one.
    if isinstance(record.get("config"), Mapping):
        record = {**record, "config": fill_missing(record["config"], {"retune_head": False})}
    return record


def _evaluate_v3_to_v4(record: dict[str, Any]) -> dict[str, Any]:
    config = record.get("config")
    if isinstance(config, Mapping) and isinstance(config.get("generator"), Mapping):
        record = {**record, "config": {**config, "generator": migrate_train_config_v1_to_v2(config["generator"])}}
    return record


EVALUATE = RecordType(
    "evaluation settings",
    4,
    {0: _evaluate_v0_to_v1, 1: _evaluate_v1_to_v2, 2: _evaluate_v2_to_v3, 3: _evaluate_v3_to_v4},
)
# A fold record's layout did not change when versions began: version 0 reads as version 1.
FOLD_RECORD = RecordType("evaluation fold record", 1, {0: dict})
