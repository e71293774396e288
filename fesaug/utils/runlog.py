"""What every long-running command shares: seeding, the ``metrics.jsonl`` log and plain-JSON records.

Training (FERSNet and the emotion + AU network), balancing and evaluation all write JSON that
other tools read back (``json.load``, pandas, jq), so values are plain Python types and
non-finite numbers become ``null`` rather than the ``NaN`` that strict JSON readers reject.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fesaug.utils.files import atomic_write_text

__all__ = ["json_number", "jsonable", "read_metrics", "seed_everything", "write_metrics"]


def seed_everything(*seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) from a tuple such as (seed, epoch)."""
    value = int(np.random.SeedSequence(list(seed)).generate_state(1, np.uint32)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)


def json_number(value: float | None) -> float | None:
    """A metric for JSON: rounded to 6 decimals, ``None`` when missing or not finite."""
    return None if value is None or not math.isfinite(value) else round(float(value), 6)


def jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: string keys, lists for tuples, Python numbers for numpy
    ones, ``None`` for non-finite floats, ``str()`` of anything else (paths, say)."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(float(obj)) else None
    return str(obj)


def changed_settings(recorded: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """The settings that differ between two records, as ``a.b: OLD -> NEW`` (dotted paths into
    nested dicts; a key one side lacks reads as None), so an error can say what changed."""
    out = []
    for key in dict.fromkeys([*recorded, *now]):
        old, new = recorded.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            out += changed_settings(old, new, f"{prefix}{key}.")
        elif old != new:
            out.append(f"{prefix}{key}: {json.dumps(old)} -> {json.dumps(new)}")
    return out


def changed_settings_text(recorded: dict[str, Any], now: dict[str, Any], limit: int = 3) -> str:
    """:func:`changed_settings` for an error line: the first ``limit`` changes, then how many more
    ("" when nothing changed)."""
    changed = changed_settings(recorded, now)
    return "; ".join(changed[:limit]) + (f"; and {len(changed) - limit} more" if len(changed) > limit else "")


def read_metrics(path: Path, up_to_epoch: int | None = None) -> list[dict[str, Any]]:
    """The lines of a ``metrics.jsonl`` (none if it does not exist), up to an epoch if given."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [m for m in lines if up_to_epoch is None or m["epoch"] <= up_to_epoch]


def write_metrics(path: Path, metrics: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.jsonl`` atomically, one JSON object per line."""
    atomic_write_text(path, "".join(json.dumps(m, allow_nan=False) + "\n" for m in metrics))
