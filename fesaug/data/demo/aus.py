"""The demo faces' action units: which AUs the renderer draws, and each expression as AU intensities."""

from __future__ import annotations

from collections.abc import Collection

import numpy as np

from fesaug.data.labels import canonical_label
from fesaug.utils.errors import FesaugError

AU_IDS: tuple[int, ...] = (1, 2, 4, 5, 6, 7, 9, 10, 12, 14, 15, 17, 20, 23, 25, 26)
AU_NAMES: dict[int, str] = {
    1: "inner brow raiser",
    2: "outer brow raiser",
    4: "brow lowerer",
    5: "upper lid raiser",
    6: "cheek raiser",
    7: "lid tightener",
    9: "nose wrinkler",
    10: "upper lip raiser",
    12: "lip corner puller",
    14: "dimpler",
    15: "lip corner depressor",
    17: "chin raiser",
    20: "lip stretcher",
    23: "lip tightener",
    25: "lips part",
    26: "jaw drop",
}

# Emotion -> {AU: intensity at the apex of a full-intensity expression}, after the EMFACS
# prototypes: happy 6+12, sadness 1+4+15(+17), surprise 1+2+5+26, fear 1+2+4+5+7+20+26,
# anger 4+5+7+23, disgust 9+10(+4)+15, contempt unilateral 12+14. Optional AUs get lower
# weights, so they only occur (>= AU_THRESHOLD) in stronger expressions; happy adds 25 (lips
# part), as broad smiles do. A later AU-consistency check reads this table.
AU_PROTOTYPES: dict[str, dict[int, float]] = {
    "anger": {4: 1.0, 5: 0.5, 7: 0.8, 23: 0.9},
    "contempt": {12: 0.8, 14: 0.9},
    "disgust": {4: 0.4, 9: 0.9, 10: 0.8, 15: 0.6},
    "fear": {1: 0.8, 2: 0.6, 4: 0.6, 5: 0.9, 7: 0.4, 20: 0.9, 26: 0.5},
    "happy": {6: 0.8, 12: 1.0, 25: 0.5},
    "neutral": {},
    "sadness": {1: 0.9, 4: 0.6, 15: 0.9, 17: 0.5},
    "surprise": {1: 0.9, 2: 0.9, 5: 0.8, 26: 0.9},
}
# AUs that act on one side of the face only (FACS writes them R12, L14).
UNILATERAL: dict[str, tuple[int, ...]] = {"contempt": (12, 14)}
# An AU "occurs" at or above this intensity: roughly FACS intensity B, above a trace.
AU_THRESHOLD = 0.2


def expression_aus(expression: str, intensity: float, jitter: Collection[float] | None = None) -> dict[int, float]:
    """AU intensities (every id in :data:`AU_IDS`) for ``expression`` at global ``intensity``.

    ``jitter`` (one relative deviation per AU in :data:`AU_IDS`) makes each sample's mix differ
    a little from the prototype.
    """
    prototype = _prototype(expression)
    jit = dict(zip(AU_IDS, jitter)) if jitter is not None else {}
    return {
        au: float(np.clip(prototype.get(au, 0.0) * intensity * (1.0 + jit.get(au, 0.0)), 0.0, 1.0)) for au in AU_IDS
    }


def expression_name(name: str) -> str:
    """``name`` as the demo's expression (canonical label), or one clear error."""
    canon = canonical_label(name)
    if canon not in AU_PROTOTYPES:
        raise FesaugError(f"unknown expression {name!r} for the demo generator; use one of {', '.join(AU_PROTOTYPES)}")
    return canon


def _prototype(expression: str) -> dict[int, float]:
    return AU_PROTOTYPES[expression_name(expression)]
