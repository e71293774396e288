"""The quality gates a synthetic face passes before a balance run keeps it.

Always: the checkpoint's own FER branch gives the target at least ``min_confidence``. Optional
(:class:`Gates`, loaded once per run by :func:`load_gates`): an emotion + AU model whose predicted
AUs must show the target's prototype, a classifier trained apart on real faces (``--judge``), dlib's
identity distance to the source face, and an expression judge trained on another dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fesaug.balance.config import BalanceConfig
from fesaug.data.au import au_consistency
from fesaug.data.datasets import resize_pixels
from fesaug.data.manifest import Manifest
from fesaug.evaluate.downstream import load_classifier, predict_proba
from fesaug.judges import load_judge
from fesaug.multitask.training import load_emotion_au
from fesaug.synthesis.generator import Generator
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import file_sha256

# How the gates are named in summaries, by the key their pass counts are recorded under.
GATE_NAMES = {
    "fer_branch": "FER branch",
    "au_check": "AU check",
    "judge": "judge",
    "identity": "identity",
    "external": "external judge",
    "judge_margin": "judge margin",
}


@dataclass
class Gates:
    """The optional gates of a run (None: not asked for) and the digests a resume must match."""

    au_checker: Any = None  # an EmotionAUPredictor for the AU check
    judge: Any = None  # a DownstreamClassifier for the independent-judge check
    identity: Any = None  # fesaug.judges' IdentityJudge for --max-identity-distance
    external: Any = None  # an expression judge trained elsewhere for --external-judge
    key: dict[str, str] = field(default_factory=dict)


def load_gates(config: BalanceConfig, m: Manifest, device: str | None) -> Gates:
    """The optional gates ``config`` asks for, each checked to know the classes of the manifest
    ``m`` and to read its images (gray or colour)."""
    gates, classes, where = Gates(), m.classes, str(m.path)
    if config.au_checkpoint is not None:
        gates.au_checker = load_emotion_au(config.au_checkpoint, device=device)
        m.check_channels(gates.au_checker.channels, f"the --au-check model {config.au_checkpoint}")
        if gates.au_checker.classes != list(classes):
            raise FesaugError(
                f"the --au-check model {config.au_checkpoint} knows classes {', '.join(gates.au_checker.classes)}, "
                f"but {where} has {', '.join(classes)}; train it on this dataset"
            )
        gates.key["au_checkpoint_sha256"] = file_sha256(config.au_checkpoint)
    if config.judge_checkpoint is not None:
        gates.judge, judge_classes = load_classifier(config.judge_checkpoint, device=device)
        m.check_channels(gates.judge.channels, f"the --judge classifier {config.judge_checkpoint}")
        if judge_classes != list(classes):
            raise FesaugError(
                f"the --judge classifier {config.judge_checkpoint} knows classes {', '.join(judge_classes)}, "
                f"but {where} has {', '.join(classes)}; use one trained on this dataset"
            )
        gates.key["judge_checkpoint_sha256"] = file_sha256(config.judge_checkpoint)
    if config.max_identity_distance is not None:
        gates.identity = load_judge("identity")
    if config.external_judge:
        gates.external = load_judge(config.external_judge, device=device or "cpu")
    return gates


def gate_scores(
    gates: Gates,
    config: BalanceConfig,
    generator: Generator,
    classes: Sequence[str],
    sources: torch.Tensor,
    fakes: torch.Tensor,
    targets: torch.Tensor,
    source_labels: torch.Tensor,
) -> tuple[dict[str, list[float | None]], dict[str, list[bool]]]:
    """Every active gate's score of each fake (by manifest column) and its pass/fail (by gate).

    A class an AU model or external judge has no opinion on (None / NaN) passes that gate; a face
    the identity judge cannot align fails, since nothing then shows it is still the same person.
    The independent judge (``--judge``: a classifier trained apart on real faces, not fooled the
    way the jointly trained FER branch is) scores the target and, with ``min_judge_margin``, its
    lead over the source's class. ``source_labels``: each fake's source's class."""
    names = [classes[k] for k in targets.tolist()]
    confidence = generator.classify(fakes, batch_size=len(fakes))[torch.arange(len(fakes)), targets].tolist()
    scores: dict[str, list[float | None]] = {"confidence": confidence}
    passed = {"fer_branch": [c >= config.min_confidence for c in confidence]}
    if gates.au_checker is not None:
        scores["au_consistency"] = au = _au_check(gates.au_checker, classes, fakes, targets)
        passed["au_check"] = [a is None or a >= config.min_au_consistency for a in au]
    if gates.judge is not None:
        probs = predict_proba(gates.judge, resize_pixels(fakes, gates.judge.image_size))
        rows = np.arange(len(fakes))
        jc = probs[rows, targets.numpy()].astype(float)
        scores["judge_confidence"] = jc.tolist()
        passed["judge"] = [j >= config.min_judge_confidence for j in jc]
        if config.min_judge_margin is not None:
            # The weakest edits leave the face nearer its source's class than the target: a margin, not
            # the raw confidence, finds them (ALIA, NeurIPS 2023).
            margin = jc - probs[rows, source_labels.numpy()]
            scores["judge_margin"] = margin.tolist()
            passed["judge_margin"] = [bool(v >= config.min_judge_margin) for v in margin]
    if gates.identity is not None:
        d = gates.identity.score(fakes, names, sources)
        scores["identity_distance"] = d.tolist()
        passed["identity"] = [bool(np.isfinite(v) and v <= config.max_identity_distance) for v in d]
    if gates.external is not None:
        p = gates.external.score(fakes, names)
        scores["external_confidence"] = p.tolist()
        passed["external"] = [bool(not np.isfinite(v) or v >= config.min_external_confidence) for v in p]
    return scores, passed


def _au_check(checker: Any, classes: Sequence[str], fakes: torch.Tensor, targets: torch.Tensor) -> list[float | None]:
    """Each fake's AU consistency with its target (None: nothing to check for that class)."""
    _, au_probs = checker.predict(resize_pixels(fakes, checker.image_size))
    out: list[float | None] = [None] * len(fakes)
    for k in targets.unique().tolist():
        rows = (targets == k).nonzero().flatten()
        score = au_consistency(au_probs[rows], checker.au_ids, classes[k])
        for i, v in zip(rows.tolist(), score.tolist() if score is not None else [None] * len(rows)):
            out[i] = v
    return out


def target_mass(
    config: BalanceConfig,
    gates: Gates,
    fakes: torch.Tensor,
    targets: torch.Tensor,
    source_labels: torch.Tensor,
    strength: Sequence[float] | None,
) -> list[float]:
    """Each fake's soft-label mass on its target (:class:`BalanceConfig` ``synthetic_labels``)."""
    if config.soft_label_source == "judge":
        probs = predict_proba(gates.judge, resize_pixels(fakes, gates.judge.image_size))
        rows = np.arange(len(fakes))
        p_target, p_source = probs[rows, targets.numpy()], probs[rows, source_labels.numpy()]
        share = p_target / np.maximum(p_target + p_source, 1e-12)
    else:
        share = np.ones(len(fakes)) if strength is None else np.minimum(np.asarray(strength, dtype=float), 1.0)
    return (np.clip(share, 0.0, 1.0) ** config.soft_gamma).astype(float).tolist()
