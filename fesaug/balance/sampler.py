""":class:`FESampler`: ``fesaug balance`` as an imbalanced-learn sampler over arrays of faces.

``X_res, y_res = FESampler("runs/ck/checkpoints/best.pt").fit_resample(X, y)`` takes images
``N×H×W`` or ``N×H×W×C`` (uint8, or float in [0, 1]) and labels, and returns them with synthetic
faces of the classes ``sampling_strategy`` raises appended: imbalanced-learn's over-samplers need
flat feature vectors (imbalanced-learn #966, #395), this one keeps the images images. The steps
are ``fesaug balance``'s, from its own functions: targets from
:func:`fesaug.balance.targets.resolve_targets`, sources of each class planned round-robin over
subjects (``groups``) by :func:`~fesaug.balance.plan.plan_sources` and reused mirrored, then
jittered (:func:`~fesaug.balance.plan.candidate`), each candidate kept when the checkpoint's FER
branch gives its target at least ``min_confidence``. It does not write files; ``fesaug balance``
does, with its other quality gates, resumption and dataset card.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state

from fesaug.balance.arrays import Faces, faces_from_arrays, faces_from_manifest, restore
from fesaug.balance.config import BalanceConfig
from fesaug.balance.output import row_weights
from fesaug.balance.plan import candidate, jitter, plan_sources
from fesaug.balance.targets import Strategy, resolve_targets
from fesaug.synthesis.generator import Generator, load_generator
from fesaug.utils.errors import FesaugError, InvalidValue, UsageError
from fesaug.utils.provenance import provenance


class FESampler(BaseEstimator):
    """Over-sample the rare expressions of an image dataset with a trained FERSNet.

    ``checkpoint``: a ``fesaug train`` checkpoint (path) or a loaded
    :class:`~fesaug.synthesis.generator.Generator`. ``sampling_strategy``: as imbalanced-learn's
    over-samplers: ``"auto"`` (every class but the largest up to the largest), ``"minority"``,
    ``"not minority"``, ``"not majority"``, ``"all"``, a ratio in (0, 1] (two classes only), a
    dict label → wanted count, or a callable ``f(y) -> dict``. ``synthetic_share``: synthesis
    fills this share of each shortfall, random repeats of the class's real images (as
    ``RandomOverSampler``'s) the rest, and the repeats that a gate's rejections leave.
    ``synthetic_weight``: what a synthetic image counts in ``sample_weight_`` (below 1, the
    class's real rows count more, so each class's weights still sum to its target).
    ``min_confidence``, ``max_attempts``, ``intensity``, ``batch_size``: as in ``fesaug balance``.
    ``label_names``: the class name of each label of ``y`` (a list indexed by integer labels, or
    a dict); by default integer labels index the generator's classes (the order of the manifest
    it was trained on) and string labels are class names (``"angry"`` = ``anger``).
    ``splits``/``holdout_folds``: the rows of a manifest's ``fit_resample(path)`` (default: the
    train split outside the generator's held-out fold). ``random_state``: an int (the seed of
    ``fesaug balance --seed``), a ``RandomState`` or None.

    ``fit_resample(X, y, groups=None)``: ``groups`` are subject ids (faces of one person share
    one), which spread the sources over identities. Or ``fit_resample("manifest.parquet")``:
    the manifest's real rows (see ``splits``), its labels and subjects. Returns ``(X_res,
    y_res)`` in ``X``'s dtype and layout: ``X``'s rows first, then the repeats, then the
    synthetic rows. Fitted attributes: ``sampling_strategy_`` (label → rows added),
    ``sample_indices_`` (the index in ``X`` of each real row of ``X_res``, the first rows),
    ``parent_indices_``, ``synthetic_targets_``, ``confidences_`` and ``source_transforms_`` (one
    per synthetic row: its source's index in ``X``, its label, the FER branch's confidence in it,
    the source's mirror/jitter), ``is_synthetic_``, ``sample_weight_`` (one per row of ``X_res``),
    ``shortfall_`` (label → synthetic slots no candidate passed the gate for, filled by repeats),
    ``classes_``, ``generator_``, ``provenance_`` and, for a manifest, ``manifest_rows_``.
    """

    _estimator_type = "sampler"

    def __init__(
        self,
        checkpoint: str | os.PathLike | Generator,
        *,
        sampling_strategy: Strategy = "auto",
        synthetic_share: float = 1.0,
        synthetic_weight: float = 1.0,
        min_confidence: float = 0.5,
        max_attempts: int = 5,
        intensity: tuple[float, float] | None = None,
        label_names: Sequence[str] | Mapping[Hashable, str] | None = None,
        splits: tuple[str, ...] = ("train",),
        holdout_folds: tuple[int, ...] | None = None,
        batch_size: int = 64,
        device: str | None = None,
        random_state: int | np.random.RandomState | None = None,
    ) -> None:
        self.checkpoint = checkpoint
        self.sampling_strategy = sampling_strategy
        self.synthetic_share = synthetic_share
        self.synthetic_weight = synthetic_weight
        self.min_confidence = min_confidence
        self.max_attempts = max_attempts
        self.intensity = intensity
        self.label_names = label_names
        self.splits = splits
        self.holdout_folds = holdout_folds
        self.batch_size = batch_size
        self.device = device
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None, *, groups: Sequence[Hashable] | None = None) -> FESampler:
        """Check the inputs and resolve ``sampling_strategy_``, without synthesizing (use
        :meth:`fit_resample`)."""
        self._prepare(X, y, groups)
        return self

    def fit_resample(self, X: Any, y: Any = None, *, groups: Sequence[Hashable] | None = None) -> tuple[Any, Any]:
        """``X`` and ``y`` with the synthetic faces and repeats the targets ask for appended (see the class)."""
        faces, config, to_synthesize, to_repeat = self._prepare(X, y, groups)
        made = synthesize(self.generator_, faces, config, to_synthesize)
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 3]))
        repeats = []
        for k, label in enumerate(self.classes_.tolist()):
            n = to_repeat[label] + made.shortfall[k]
            if n:
                repeats.append(rng.choice(np.flatnonzero(faces.y_index == k), size=n, replace=True))
        self.shortfall_ = {label: int(made.shortfall[k]) for k, label in enumerate(self.classes_.tolist())}
        if made.shortfall.any():
            _warn_shortfall(self.shortfall_, config.min_confidence)
        return self._assemble(faces, made, np.concatenate([np.arange(faces.n), *repeats]).astype(np.int64))

    # ---- steps

    def _prepare(self, X: Any, y: Any, groups: Any) -> tuple[Faces, BalanceConfig, dict, dict]:
        config = _config(self)
        manifest = isinstance(X, (str, os.PathLike)) and y is None
        if y is None and not manifest:
            raise InvalidValue("y is missing: pass the labels of X, or a manifest path as X (its real rows and labels)")
        self.generator_ = self._generator()
        if manifest:
            if groups is not None:
                raise InvalidValue("a manifest's subjects come from its subject_id column; drop groups")
            faces, self.manifest_rows_ = faces_from_manifest(X, self.generator_, self.splits, self.holdout_folds)
        else:
            faces = faces_from_arrays(X, y, groups, self.generator_, self.label_names)
        self.classes_ = faces.classes
        counts = {label: int(n) for label, n in zip(faces.classes.tolist(), np.bincount(faces.y_index))}
        try:
            targets = resolve_targets(counts, sampling_strategy=self.sampling_strategy, labels=faces.y)
            to_synthesize = targets.to_synthesize(config.synthetic_share)
        except UsageError as exc:
            raise InvalidValue(str(exc)) from None
        self.sampling_strategy_ = {c: n for c, n in targets.to_generate.items() if n}
        self._targets = dict(targets)
        to_repeat = {c: targets.to_generate[c] - to_synthesize[c] for c in counts}
        return faces, config, {k: to_synthesize[c] for k, c in enumerate(counts)}, to_repeat

    def _assemble(self, faces: Faces, made: Synthesized, real: np.ndarray) -> tuple[Any, Any]:
        n_real = len(real)
        self.sample_indices_ = real
        self.parent_indices_ = made.parents
        self.synthetic_targets_ = faces.classes[made.targets]
        if faces.form.get("x_list"):
            self.synthetic_targets_ = self.synthetic_targets_.tolist()
        self.confidences_ = made.confidences
        self.source_transforms_ = made.transforms
        self.is_synthetic_ = np.arange(n_real + len(made.parents)) >= n_real
        y_index = np.concatenate([faces.y_index[real], made.targets])
        frame = pd.DataFrame({"label": y_index, "origin": np.where(self.is_synthetic_, "synthetic", "real")})
        self.sample_weight_ = row_weights(
            frame,
            self._targets,
            float(self.synthetic_weight),
            balanced=np.ones(len(frame), dtype=bool),
            classes=self.classes_.tolist(),
        )
        self.provenance_ = _provenance(self, made.seed)
        return restore(faces, real, made.images, y_index)

    def _generator(self) -> Generator:
        if isinstance(self.checkpoint, Generator):
            return self.checkpoint
        return load_generator(self.checkpoint, device=self.device)

    # ---- scikit-learn / imbalanced-learn tags

    def __sklearn_tags__(self) -> Any:
        return _sampler_tags(super().__sklearn_tags__())

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"X_types": ["3darray"], "sample_indices": True}


@dataclass
class Synthesized:
    """What :func:`synthesize` made: ``images`` (``M×C×S×S`` at the generator's size), and per
    image its source row (``parents``), its class (``targets``, a position in ``Faces.classes``),
    the FER branch's ``confidences`` and the ``transforms`` of its source; ``shortfall``: per
    class, the slots no candidate passed the gate for; ``seed``: the seed used."""

    images: torch.Tensor
    parents: np.ndarray
    targets: np.ndarray
    confidences: np.ndarray
    transforms: list[str]
    shortfall: np.ndarray
    seed: int


def synthesize(gen: Generator, faces: Faces, config: BalanceConfig, need: dict[int, int]) -> Synthesized:
    """Fill ``need[k]`` slots of each class ``k`` (a position in ``faces.classes``) as ``fesaug
    balance`` does: sources planned by :func:`plan_sources`, attempt ``a`` at slot ``s`` the
    :func:`candidate` ``(s, a)``, kept when the FER branch gives the target ``min_confidence``."""
    seed, gen_label = config.seed, faces.class_index[faces.y_index]
    pixels, rows = faces.source_pixels(gen.image_size), np.arange(faces.n)
    orders = {}
    for k, n in need.items():
        if n:
            orders[k] = plan_sources(gen_label, faces.subjects, rows, int(faces.class_index[k]), seed)
            if not orders[k]:
                raise FesaugError(f"no source images for {faces.classes[k]!r}: every image is of that class")
    pending = [(k, s) for k in sorted(orders) for s in range(need[k])]
    kept: dict[tuple[int, int], tuple[torch.Tensor, int, float, str]] = {}
    for attempt in range(config.max_attempts):
        still = []
        for start in range(0, len(pending), config.batch_size):
            chunk = pending[start : start + config.batch_size]
            picks = [candidate(orders[k], need[k], s, attempt) for k, s in chunk]
            targets = [int(faces.class_index[k]) for k, _ in chunk]
            made = [
                jitter(pixels[c.source], c.variant, (seed, t, s, attempt))
                for (_, s), c, t in zip(chunk, picks, targets)
            ]
            strength = None
            if config.intensity is not None:
                keys = [[seed, t, s, attempt, 2] for (_, s), t in zip(chunk, targets)]
                strength = [float(np.random.default_rng(key).uniform(*config.intensity)) for key in keys]
            fakes = gen.synthesize(
                torch.stack([m[0] for m in made]), targets, intensity=strength, batch_size=len(chunk)
            )
            confidence = gen.classify(fakes, batch_size=len(chunk))[torch.arange(len(chunk)), targets].tolist()
            for slot, pick, fake, p, (_, how) in zip(chunk, picks, fakes, confidence, made):
                if p >= config.min_confidence:
                    kept[slot] = (fake, pick.source, p, how)
                else:
                    still.append(slot)
        pending = still
    slots = sorted(kept)
    shape = (0, *pixels.shape[1:])
    return Synthesized(
        images=torch.stack([kept[s][0] for s in slots]) if slots else torch.empty(shape, dtype=pixels.dtype),
        parents=np.asarray([kept[s][1] for s in slots], dtype=np.int64),
        targets=np.asarray([k for k, _ in slots], dtype=np.int64),
        confidences=np.asarray([kept[s][2] for s in slots], dtype=np.float64),
        transforms=[kept[s][3] for s in slots],
        shortfall=np.bincount([k for k, _ in pending], minlength=len(faces.classes)),
        seed=seed,
    )


def _warn_shortfall(shortfall: dict[Hashable, int], min_confidence: float) -> None:
    short = ", ".join(f"{c!r}: {n}" for c, n in shortfall.items() if n)
    warnings.warn(
        f"FESampler: no candidate passed the quality gate (min_confidence={min_confidence:g}) for "
        f"{sum(shortfall.values())} synthetic image(s) ({short}); repeats of real images took their place "
        "(shortfall_). Lower min_confidence, raise max_attempts, or train the generator longer",
        stacklevel=3,
    )


def _provenance(sampler: FESampler, seed: int) -> dict[str, Any]:
    """How a resampled set was made: settings, versions, the checkpoint and the seed used."""
    gen = sampler.generator_
    return {
        **provenance("fesaug.FESampler", {k: v for k, v in sampler.get_params().items() if k != "checkpoint"}),
        "checkpoint": str(gen.checkpoint),
        "checkpoint_sha256": gen.checkpoint_sha256,
        "checkpoint_epoch": gen.epoch,
        "seed": seed,
    }


def _config(sampler: FESampler) -> BalanceConfig:
    """The settings ``fesaug balance`` shares, checked by its own config (one set of rules)."""
    try:
        return BalanceConfig(
            synthetic_share=sampler.synthetic_share,
            synthetic_weight=sampler.synthetic_weight,
            min_confidence=sampler.min_confidence,
            max_attempts=sampler.max_attempts,
            intensity=sampler.intensity,
            batch_size=sampler.batch_size,
            seed=_seed(sampler.random_state),
        )
    except (UsageError, TypeError) as exc:
        raise InvalidValue(str(exc)) from None


def _seed(random_state: int | np.random.RandomState | None) -> int:
    """An int ``random_state`` is the seed itself (as ``fesaug balance --seed``); otherwise one is
    drawn from it, as scikit-learn's estimators do."""
    if isinstance(random_state, (int, np.integer)) and not isinstance(random_state, bool):
        return int(random_state)
    try:
        return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    except ValueError as exc:
        raise InvalidValue(f"random_state must be an int, a numpy RandomState or None ({exc})") from None


def _sampler_tags(tags: Any) -> Any:
    """scikit-learn's ``tags`` as imbalanced-learn reads a sampler's: images (3-D and 4-D arrays,
    not rows of features), ``sample_indices_`` set."""
    cls, input_cls, sampler_cls = _tag_classes()
    inputs = input_cls(**{f.name: getattr(tags.input_tags, f.name) for f in dataclasses.fields(tags.input_tags)})
    inputs.two_d_array, inputs.three_d_array = False, True
    given = {f.name: getattr(tags, f.name) for f in dataclasses.fields(tags) if f.name != "input_tags"}
    return cls(**{**given, "estimator_type": "sampler"}, input_tags=inputs, sampler_tags=sampler_cls())


@functools.cache
def _tag_classes() -> tuple[type, type, type]:
    """scikit-learn's tag classes with imbalanced-learn's additions (``sampler_tags``, the
    input tag ``dataframe``), without importing imbalanced-learn."""
    from sklearn.utils import InputTags, Tags

    @dataclass(slots=True)
    class SamplerTags:
        sample_indices: bool = True

    @dataclass(slots=True)
    class SamplerInputTags(InputTags):
        dataframe: bool = False

    @dataclass(slots=True)
    class SamplerEstimatorTags(Tags):
        sampler_tags: SamplerTags | None = None

    return SamplerEstimatorTags, SamplerInputTags, SamplerTags
