"""The balance run's versioned records (:mod:`fesaug.utils.records`): the plan a resumed run must
match (``DIR/.fesaug-balance/plan.json``), and the balance settings as other records embed them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fesaug.data.manifest import HOLDOUT_RENAMES
from fesaug.utils.records import RecordType, fill_missing, rename_keys

# BalanceConfig.to_dict() as version 1 wrote it: in a version-0 record, a setting it lacks had not
# been added yet, and its behaviour then was this value's.
CONFIG_V1 = {
    "target_per_class": "max", "sampling_strategy": None, "targets": {}, "undersample": False, "splits": ["train"],
    "holdout_folds": None, "min_confidence": 0.5, "max_attempts": 5, "seed": 0, "batch_size": 64,
    "embed_images": False, "output_size": None, "au_checkpoint": None, "min_au_consistency": 0.5,
    "judge_checkpoint": None, "min_judge_confidence": 0.5, "min_judge_margin": None, "source_order": "subjects",
    "max_identity_distance": None, "external_judge": None, "min_external_confidence": 0.5, "intensity": None,
    "class_intensity": {}, "calibrate_intensity": False, "synthetic_share": 1.0, "synthetic_weight": 1.0,
    "synthetic_labels": "hard", "soft_label_source": "intensity", "soft_gamma": 1.0,
}  # fmt: skip


def migrate_config_v0_to_v1(config: Mapping[str, Any]) -> dict[str, Any]:
    """Balance settings recorded before versions: older names of the held-out folds read as
    today's (``exclude_folds``), and settings added since mean what the run did without them."""
    return fill_missing(rename_keys(config, HOLDOUT_RENAMES), CONFIG_V1)


def _plan_v0_to_v1(plan: dict[str, Any]) -> dict[str, Any]:
    if isinstance(plan.get("config"), Mapping):
        plan = {**plan, "config": migrate_config_v0_to_v1(plan["config"])}
    return plan


PLAN = RecordType("balance plan", 1, {0: _plan_v0_to_v1})
