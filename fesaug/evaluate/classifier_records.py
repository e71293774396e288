"""The downstream classifier file's versioned record (:mod:`fesaug.utils.records`).

Version 0 is what fesaug wrote before records carried a schema version: ``format_version`` 1
(never bumped) and, before colour, no ``channels`` (gray images).
"""

from __future__ import annotations

from typing import Any

from fesaug.utils.records import RecordType, fill_missing


def _classifier_v0_to_v1(saved: dict[str, Any]) -> dict[str, Any]:
    out = fill_missing(saved, {"channels": 1})
    out.pop("format_version", None)  # version 0's constant 1: schema_version replaces it
    return out


CLASSIFIER = RecordType("downstream classifier", 1, {0: _classifier_v0_to_v1})
