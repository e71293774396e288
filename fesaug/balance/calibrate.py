"""Per-class edit strength, calibrated so that synthetic faces are as recognisable as real ones.

A generator trained with a pixel loss toward same-subject pairs learns an average, shrunken edit:
its faces show their target less clearly than real faces of that class do. Scaling the edit
(``intensity`` above 1) makes it stronger, but by how much is a per-class question. Here a
classifier trained apart on real faces (the ``--judge``) is the yardstick: for each target class,
the smallest gain from :data:`GAINS` whose synthetic faces the judge recognises at least as often
as it recognises the real faces of that class. Both are measured on the generator's validation
subjects only (their faces are the sources and the real yardstick), never on test faces.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fesaug.data.datasets import ManifestDataset, resize_pixels
from fesaug.data.manifest import Manifest
from fesaug.evaluate.downstream import predict_proba
from fesaug.synthesis.generator import Generator
from fesaug.utils.errors import FesaugError

# The gains tried, weakest first; MAX_INTENSITY (2) is the generator's limit.
GAINS = (1.0, 1.25, 1.5, 1.75, 2.0)
# Sources per target class: enough for a rate to within a few points, few enough to stay quick.
MAX_SOURCES = 96


def calibrate_gains(
    m: Manifest, rows: np.ndarray, generator: Generator, judge: Any, *, seed: int
) -> tuple[dict[int, float], dict[str, Any]]:
    """Per class index, the calibrated gain, and the record of how it was chosen (per class: the
    judge's recall on the real validation faces, its recognition rate at each gain, the gain).
    ``rows``: the manifest rows of the generator's validation subjects."""
    if rows.size == 0:
        raise FesaugError(
            "--calibrate-intensity measures edits on the generator's validation subjects, and the manifest has no "
            "real row of theirs; balance the manifest the generator was trained on"
        )
    data = ManifestDataset(m, rows=rows, image_size=generator.image_size)
    judged = predict_proba(judge, resize_pixels(data.pixels, judge.image_size)).argmax(1)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))
    gains: dict[int, float] = {}
    record: dict[str, Any] = {}
    for k, c in enumerate(m.classes):
        real = data.labels == k
        others = np.flatnonzero(~real)
        if not real.any() or others.size == 0:
            record[c] = {"gain": 1.0, "why": "no real validation face of this class to measure against"}
            continue
        chosen = np.sort(rng.permutation(others)[:MAX_SOURCES])
        yardstick = float((judged[real] == k).mean())
        rates = _rates(generator, judge, data.pixels[chosen], k)
        reached = [g for g, r in zip(GAINS, rates) if r >= yardstick]
        gain = reached[0] if reached else GAINS[int(np.argmax(rates))]
        gains[k] = gain
        record[c] = {"gain": gain, "real_recognised": round(yardstick, 4), "recognised": dict(zip(GAINS, rates))}
    return gains, {"gains_tried": list(GAINS), "sources_per_class": MAX_SOURCES, "classes": record}


def _rates(generator: Generator, judge: Any, sources: torch.Tensor, k: int) -> Sequence[float]:
    rates = []
    for gain in GAINS:
        fakes = generator.synthesize(sources, k, intensity=gain)
        pred = predict_proba(judge, resize_pixels(fakes, judge.image_size)).argmax(1)
        rates.append(round(float((pred == k).mean()), 4))
    return rates
