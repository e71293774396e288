"""EmotionAUNet's versioned records (:mod:`fesaug.utils.records`): its training checkpoints.

Version 0 is what fesaug wrote before records carried a schema version: ``format_version`` 1
(never bumped), and the split's held-out folds under older names (``heldout_folds``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fesaug.data.manifest import HOLDOUT_RENAMES
from fesaug.utils.records import RecordType, rename_keys


def _checkpoint_v0_to_v1(ckpt: dict[str, Any]) -> dict[str, Any]:
    out = dict(ckpt)
    out.pop("format_version", None)  # version 0's constant 1: schema_version replaces it
    if isinstance(out.get("split"), Mapping):
        out["split"] = rename_keys(out["split"], HOLDOUT_RENAMES)
    return out


CHECKPOINT = RecordType("emotion + AU checkpoint", 1, {0: _checkpoint_v0_to_v1})
