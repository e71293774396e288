"""The truth ceiling: what a perfect generator's faces are worth as training data.

On the demo set every face is rendered from stored parameters, so the face a generator *should*
make from a source for a target expression is known exactly
(:func:`fesaug.data.demo.counterfactual`). :func:`exact_counterfactuals` fills the slots a
``fesaug balance`` run would fill (same working set, targets, source order and reuse variants,
:func:`fesaug.balance.plan.plan_slots`) with those exact faces, each at its source's own
intensity times ``scale``, as if every first candidate had passed the gates. The ``truth``
conditions of ``fesaug evaluate`` train on them, so every demo report can say how much of the gap
between random oversampling and a perfect generator the real generator closes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fesaug.balance.config import BalanceConfig
from fesaug.balance.plan import candidate, jitter, plan_slots, working_rows
from fesaug.balance.targets import Targets
from fesaug.data.demo import counterfactual
from fesaug.data.images import to_array
from fesaug.data.manifest import Manifest
from fesaug.utils.errors import FesaugError, UsageError

__all__ = ["ExactSet", "check_truth_possible", "exact_counterfactuals"]


@dataclass
class ExactSet:
    """The exact faces of a balance plan's slots. ``pixels``: ``uint8`` ``N×C×S×S`` at the
    manifest's stored size and channels; ``labels``: their targets; ``parents``: each face's source row
    (manifest position); ``variants``: 0 as is, 1 mirrored, ≥ 2 mirrored or not and jittered, as
    balance reuses a source; ``removed``: rows under-sampling drops; ``targets``: the plan's."""

    pixels: torch.Tensor
    labels: np.ndarray
    parents: np.ndarray
    variants: np.ndarray
    removed: list[int]
    targets: Targets


def check_truth_possible(m: Manifest, config: BalanceConfig) -> None:
    """One clear error unless ``m`` can give exact counterfactuals under ``config``."""
    if "demo_params" not in m.df.columns:
        raise FesaugError(
            f"{m.path} has no demo_params column: the truth conditions render exact counterfactuals, which only "
            "the demo dataset has (fesaug demo-data); drop truth and truth-half from --conditions"
        )
    if config.source_order != "subjects":
        raise UsageError(
            "the truth conditions take sources in the default order (--source-order subjects); --source-order "
            "similar ranks them with a generator, which the truth does not use"
        )


def exact_counterfactuals(
    m: Manifest,
    config: BalanceConfig,
    holdout_folds: Sequence[int],
    scale: float = 1.0,
    limit: Mapping[str, int] | None = None,
) -> ExactSet:
    """The exact faces for the slots ``fesaug balance`` would fill on ``m`` with ``config``
    (``holdout_folds`` held out), first candidate of each slot. ``scale`` multiplies each source's
    own expression intensity (0.5: a timid but clean edit). ``limit``: at most this many faces per
    class (e.g. what a ``fes`` run reached), the first slots of each class kept."""
    check_truth_possible(m, config)
    working = working_rows(m, config.splits, holdout_folds)
    sp = plan_slots(m, working, config)
    kept: dict[int, int] = {}
    images, labels, parents, variants = [], [], [], []
    for k, s in sp.slots:
        c = m.classes[k]
        if limit is not None and kept.get(k, 0) >= limit.get(c, 0):
            continue
        kept[k] = kept.get(k, 0) + 1
        cnd = candidate(sp.orders[k], sp.to_synthesize[c], s, 0)
        row = m.df.iloc[cnd.source]
        own = float(json.loads(row["demo_params"])["intensity"])
        face = torch.from_numpy(to_array(counterfactual(row, c, intensity=own * scale)))
        image, _ = jitter(face, cnd.variant, (config.seed, k, s, 0))
        images.append(image)
        labels.append(k)
        parents.append(cnd.source)
        variants.append(cnd.variant)
    side = int(m.df["height"].iat[int(working[0])])
    pixels = torch.stack(images) if images else torch.empty((0, m.channels, side, side), dtype=torch.uint8)
    return ExactSet(
        pixels,
        np.asarray(labels, dtype=np.int64),
        np.asarray(parents, dtype=np.int64),
        np.asarray(variants, dtype=np.int64),
        sp.removed,
        sp.targets,
    )
