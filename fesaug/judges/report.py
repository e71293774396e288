"""The judges' verdict on a set of synthetic faces, per target class, beside real-face yardsticks.

A distance means nothing alone: 0.45 between a synthetic face and its parent is good if two real
photos of one person lie 0.45 apart on this dataset and bad if they lie 0.30 apart. So every
distance comes with the same distance between real faces of the set the parents come from: pairs
of one subject showing *different* expressions (what a synthetic face should look like next to
its parent), and pairs of different subjects. Likewise the FER2013 judge's recognised share of
synthetic faces comes with its share of real test faces of the same class.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from torch import Tensor

from fesaug.data.labels import canonical_label
from fesaug.judges import load_judge
from fesaug.judges.identity import SAME_PERSON_DISTANCE

MAX_PAIRS = 3000


def yardstick_pairs(
    subjects: Sequence[Any], labels: np.ndarray, *, seed: int = 0, max_pairs: int = MAX_PAIRS
) -> dict[str, np.ndarray]:
    """Index pairs ``(P, 2)`` of real faces: ``same_subject`` (one person, two different
    expressions; consecutive frames of one expression would flatter any distance) and
    ``different_subject``; at most ``max_pairs`` of each, drawn with ``seed``. A face without a
    subject id (None or NaN) is its own identity."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    keys = np.asarray(
        [f"row:{i}" if s is None or (isinstance(s, float) and np.isnan(s)) else str(s) for i, s in enumerate(subjects)]
    )
    same = []
    for idx in (np.flatnonzero(keys == k) for k in np.unique(keys)):
        a, b = np.triu_indices(len(idx), k=1)
        keep = labels[idx[a]] != labels[idx[b]]
        same.append(np.stack([idx[a][keep], idx[b][keep]], axis=1))
    same_pairs = np.concatenate(same) if same else np.zeros((0, 2), dtype=np.int64)
    if len(same_pairs) > max_pairs:
        same_pairs = same_pairs[np.sort(rng.choice(len(same_pairs), size=max_pairs, replace=False))]
    # Different subjects: drawn at random (enumerating all pairs grows with the square of the set).
    draw = rng.integers(0, len(keys), size=(4 * max_pairs, 2)) if len(keys) > 1 else np.zeros((0, 2), dtype=np.int64)
    draw = np.unique(np.sort(draw[keys[draw[:, 0]] != keys[draw[:, 1]]], axis=1), axis=0)
    if len(draw) > max_pairs:
        draw = draw[np.sort(rng.choice(len(draw), size=max_pairs, replace=False))]
    return {"same_subject": same_pairs.astype(np.int64), "different_subject": draw.astype(np.int64)}


def stats(values: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    """Median, mean and (with ``threshold``) the share below it, over the judged (finite) values."""
    values = np.asarray(values, dtype=float)
    ok = values[np.isfinite(values)]
    out: dict[str, Any] = {
        "n": int(values.size),
        "not_judged": int(values.size - ok.size),
        "median": float(np.median(ok)) if ok.size else None,
        "mean": float(ok.mean()) if ok.size else None,
    }
    if threshold is not None:
        out["share_under"] = float((ok < threshold).mean()) if ok.size else None
    return out


def _distance_report(
    synthetic: np.ndarray,
    targets: np.ndarray,
    yardstick: dict[str, np.ndarray],
    classes: Sequence[str],
    threshold: float | None,
) -> dict[str, Any]:
    return {
        "yardstick": {kind: stats(d, threshold) for kind, d in yardstick.items()},
        "all": stats(synthetic, threshold),
        "per_class": {
            c: stats(synthetic[targets == k], threshold) for k, c in enumerate(classes) if (targets == k).any()
        },
    }


def judge_synthesis(
    names: Sequence[str],
    classes: Sequence[str],
    synthetic: Tensor,
    targets: np.ndarray,
    parents: np.ndarray,
    real: tuple[Tensor, np.ndarray, Sequence[str]],
    real_test: tuple[Tensor, np.ndarray],
    *,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, Any]:
    """Each judge in ``names`` on the synthetic faces.

    ``synthetic``/``targets``: the faces and their target class indices; ``parents``: each face's
    parent as a position in ``real`` = (faces, labels, subjects), the real set the parents come
    from (also the yardstick pairs' set); ``real_test``: real test faces and labels, for the
    FER2013 judge's share on real faces. All faces go through the same resampling.
    """
    targets, parents = np.asarray(targets), np.asarray(parents)
    pairs = yardstick_pairs(real[2], real[1], seed=seed)
    out: dict[str, Any] = {}
    for name in names:
        judge = load_judge(name, device)
        if name == "identity":
            emb_real, emb_syn = judge.embed(real[0]), judge.embed(synthetic)
            dist = np.linalg.norm(emb_syn - emb_real[parents], axis=1)
            yard = {k: np.linalg.norm(emb_real[p[:, 0]] - emb_real[p[:, 1]], axis=1) for k, p in pairs.items()}
            out[name] = {
                "model": "dlib face-recognition ResNet v1, 5-point face chips",
                "threshold": SAME_PERSON_DISTANCE,
                **_distance_report(dist, targets, yard, classes, SAME_PERSON_DISTANCE),
            }
        elif name == "perceptual":
            f_real, f_syn = judge.features(real[0]), judge.features(synthetic)
            dist = judge.pair_distances(f_syn, f_real, np.arange(len(targets)), parents)
            yard = {k: judge.pair_distances(f_real, f_real, p[:, 0], p[:, 1]) for k, p in pairs.items()}
            del f_real, f_syn
            out[name] = {
                "model": "shift-tolerant LPIPS, AlexNet",
                **_distance_report(dist, targets, yard, classes, None),
            }
        else:
            out[name] = _expression_report(judge, classes, synthetic, targets, real_test)
    return out


def _expression_report(
    judge: Any, classes: Sequence[str], synthetic: Tensor, targets: np.ndarray, real_test: tuple[Tensor, np.ndarray]
) -> dict[str, Any]:
    """Recognised = the judge's top class (of its seven, neutral included) is the target."""
    mapped = [canonical_label(c) for c in classes]
    judged = [k for k, c in enumerate(mapped) if c in judge.classes]
    top_syn = np.asarray(judge.classes)[judge.probabilities(synthetic).argmax(1)] if len(targets) else np.array([])
    test_x, test_y = real_test[0], np.asarray(real_test[1])
    top_test = np.asarray(judge.classes)[judge.probabilities(test_x).argmax(1)] if len(test_y) else np.array([])
    per_class: dict[str, Any] = {}
    for k, c in enumerate(classes):
        mine, theirs = targets == k, test_y == k
        if not mine.any():
            continue
        if k not in judged:
            per_class[c] = {"n": int(mine.sum()), "judged": False}
            continue
        per_class[c] = {
            "n": int(mine.sum()),
            "judged": True,
            "synthetic": float((top_syn[mine] == mapped[k]).mean()),
            "real_test": float((top_test[theirs] == mapped[k]).mean()) if theirs.any() else None,
            "n_real_test": int(theirs.sum()),
        }
    scored = [c for c, e in per_class.items() if e["judged"]]
    n = np.asarray([per_class[c]["n"] for c in scored], dtype=float)
    syn_all = float(np.dot([per_class[c]["synthetic"] for c in scored], n) / n.sum()) if scored else None
    with_real = [c for c in scored if per_class[c]["real_test"] is not None]
    w = np.asarray([per_class[c]["n"] for c in with_real], dtype=float)
    # Weighted like the synthetic set, so the two shares compare the same mix of classes.
    real_all = float(np.dot([per_class[c]["real_test"] for c in with_real], w) / w.sum()) if with_real else None
    return {
        "model": "mini-Xception trained on FER2013 (7 classes)",
        "all": {"synthetic": syn_all, "real_test": real_all},
        "per_class": per_class,
        "not_judged": [c for k, c in enumerate(classes) if k not in judged],
    }
