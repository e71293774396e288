"""The workers of a balance run: fill one chunk of slots through the quality gates.

Work is cut into chunks of ``batch_size`` slots; each chunk's images and a JSON part file are
written atomically under ``DIR/.fesaug-balance/`` (:mod:`fesaug.balance.run`), so an interrupted
run resumes at the first missing part. A chunk's content is a function of the plan and the chunk
alone, so any number of processes gives the same result.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from fesaug.balance.gates import gate_scores, target_mass
from fesaug.balance.plan import Candidate, Plan, jitter, seeded_rng
from fesaug.data.images import encode_png, from_array, resize_square, sha256_bytes
from fesaug.models import MAX_INTENSITY
from fesaug.utils.files import atomic_write_bytes


def run_chunk(
    plan: Plan,
    pixels: torch.Tensor,
    position: dict[int, int],
    chunk: list[tuple[int, int]],
    out: Path,
    pool: ThreadPoolExecutor,
) -> tuple[list[dict[str, Any]], dict[str, Any], list[Future]]:
    """Fill the slots of one chunk through the quality gates; images are written by ``pool``.
    Also returns the attempts per class and, per gate, how many candidates of each class it passed."""
    m, cfg = plan.manifest, plan.config
    accepted: list[dict[str, Any]] = []
    attempts = dict.fromkeys(m.classes, 0)
    passed: dict[str, dict[str, int]] = {}
    writes: list[Future] = []
    pending = list(chunk)
    for attempt in range(cfg.max_attempts):
        if not pending:
            break
        cands = [plan.candidate(k, s, attempt) for k, s in pending]
        inputs, transforms = [], []
        for (k, s), cnd in zip(pending, cands):
            image, how = jitter(pixels[position[cnd.source]], cnd.variant, (cfg.seed, k, s, attempt))
            inputs.append(image)
            transforms.append(how)
        targets = torch.tensor([k for k, _ in pending])
        sources = torch.stack(inputs)
        strength = _strength(plan, pending, attempt)
        fakes = plan.generator.synthesize(sources, targets, intensity=strength, batch_size=len(inputs))
        source_labels = torch.tensor([int(m.df["label"].iat[c.source]) for c in cands])
        scores, gates = gate_scores(plan.gates, cfg, plan.generator, m.classes, sources, fakes, targets, source_labels)
        if cfg.soft:
            scores["target_mass"] = target_mass(cfg, plan.gates, fakes, targets, source_labels, strength)
        for gate, ok in gates.items():
            counts = passed.setdefault(gate, dict.fromkeys(m.classes, 0))
            for k, good in zip(targets.tolist(), ok):
                counts[m.classes[k]] += int(good)
        still = []
        for i, ((k, s), cnd, how, fake) in enumerate(zip(pending, cands, transforms, fakes)):
            attempts[m.classes[k]] += 1
            if not all(ok[i] for ok in gates.values()):
                still.append((k, s))
                continue
            row = synthetic_row(plan, k, s, cnd, attempt, how)
            row |= {"intensity": round(strength[i], 6)} if strength is not None else {}
            row |= {column: _rounded(v[i]) for column, v in scores.items()}
            accepted.append(row)
            writes.append(pool.submit(write_image, fake, plan.output_size, out / row["path"], row))
        pending = still
    return accepted, {"attempts": attempts, "passed": passed}, writes


def _strength(plan: Plan, pending: list[tuple[int, int]], attempt: int) -> list[float] | None:
    """Each slot's edit intensity: drawn from ``intensity`` (seeded per slot and attempt), times its
    class's gain; None when neither is set (the learnt edit)."""
    cfg = plan.config
    if cfg.intensity is None and not plan.gains:
        return None
    out = []
    for k, s in pending:
        drawn = 1.0 if cfg.intensity is None else float(seeded_rng(cfg.seed, k, s, attempt, 2).uniform(*cfg.intensity))
        out.append(min(drawn * plan.gains.get(k, 1.0), MAX_INTENSITY))
    return out


def synthetic_row(plan: Plan, k: int, slot: int, cnd: Candidate, attempt: int, how: str) -> dict[str, Any]:
    """The manifest row of slot ``slot`` of class ``k``, made from ``cnd``'s source: it keeps the
    parent's subject, split and fold and names the parent (the provenance of every synthetic row)."""
    df, src = plan.manifest.df, cnd.source
    sid = plan.sample_id(k, slot)
    return {
        "sample_id": sid,
        "path": f"images/{plan.manifest.classes[k]}/{sid}.png",
        "label": k,
        "subject_id": _plain(df["subject_id"].iat[src]),
        "fold": _plain(df["fold"].iat[src]),
        "split": df["split"].iat[src],
        "parent_id": df["sample_id"].iat[src],
        "source_label": int(df["label"].iat[src]),
        "attempt": attempt,
        "source_transform": how,
        "slot": slot,
    }


def write_image(fake: torch.Tensor, size: int, path: Path, row: dict[str, Any]) -> None:
    """Write ``fake`` (uint8 ``C×S×S``: gray or RGB) as a ``size`` px PNG at ``path`` (atomically)
    and record its digest and size in ``row``."""
    img = resize_square(from_array(fake.numpy()), size)
    data = encode_png(img)
    row.update(sha256=sha256_bytes(data), width=img.width, height=img.height)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _rounded(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 6)


def _plain(value: Any) -> Any:
    """A manifest cell as plain JSON (missing → None, numpy ints → int)."""
    if pd.isna(value):
        return None
    return int(value) if isinstance(value, np.integer) else value
