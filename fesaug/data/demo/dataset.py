"""Writing the demo dataset: CK+'s counts and sequences, one recipe per image, a manifest."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fesaug.data.demo.aus import AU_IDS, AU_NAMES, AU_PROTOTYPES, AU_THRESHOLD, UNILATERAL, expression_aus
from fesaug.data.demo.renderer import RENDERER_VERSION, render_params
from fesaug.data.demo.styles import Style, get_style, subject_id
from fesaug.data.images import encode_png, sha256_bytes
from fesaug.data.labels import CKPLUS_CLASSES, canonical_label, class_list
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.data.splits import assign_folds
from fesaug.utils.errors import FesaugError
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance

DATASET = "fesaug-demo"

# CK+ (Lucey et al., 2010), last three frames of each labelled sequence: 981 images.
DEFAULT_COUNTS: dict[str, int] = {
    "anger": 135,
    "contempt": 54,
    "disgust": 177,
    "fear": 75,
    "happy": 207,
    "sadness": 84,
    "surprise": 249,
}
DEFAULT_SUBJECTS = 118  # CK+'s labelled sequences come from 118 subjects
# Like CK+'s "last three frames": near-identical, intensity still rising toward the apex.
FRAME_RAMP = (0.9, 0.95, 1.0)
# Apex intensity of a sequence: LOW + (1 - LOW) * Beta(A, B). The weight near LOW gives the
# low-intensity share where classes sharing AUs are confusable.
INTENSITY_LOW, INTENSITY_A, INTENSITY_B = 0.1, 1.8, 1.2
JITTER_SD = 0.15  # per-AU relative deviation from the prototype, per sequence


def _check_counts(counts: Mapping[str, int] | None, neutral: bool) -> dict[str, int]:
    """``counts`` over the CK+ defaults, keyed by canonical class name."""
    out = dict(DEFAULT_COUNTS)
    for name, n in (counts or {}).items():
        canon = canonical_label(str(name))
        if canon not in AU_PROTOTYPES:
            raise FesaugError(f"unknown class {name!r} in counts; use {', '.join(AU_PROTOTYPES)}")
        if canon == "neutral" and not neutral:
            raise FesaugError("counts gives neutral images but neutral is off; pass --neutral (neutral=True)")
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise FesaugError(f"count for {canon} must be a whole number >= 0, got {n!r}")
        out[canon] = int(n)
    if not any(n for c, n in out.items() if c != "neutral"):
        raise FesaugError("every expression count is 0; give at least one class a positive count")
    return out


def _plan(counts: dict[str, int], n_subjects: int, rng: np.random.Generator) -> list[tuple[str, int, int]]:
    """(expression, subject index, frames) per sequence.

    Like CK+, a subject shows an expression at most once (while there are enough subjects) and
    each sequence gives up to ``len(FRAME_RAMP)`` frames; the least-busy subjects get the next
    sequence, with random tie-breaks, so everyone shows a few expressions.
    """
    per = len(FRAME_RAMP)
    load = np.zeros(n_subjects)
    plan = []
    for expression in CKPLUS_CLASSES:
        n = counts.get(expression, 0)
        frames = [per] * (n // per) + ([n % per] if n % per else [])
        subjects: list[int] = []
        while len(subjects) < len(frames):
            k = min(len(frames) - len(subjects), n_subjects)
            pick = np.argsort(load + rng.random(n_subjects) * 1.5, kind="stable")[:k]
            load[pick] += 1
            subjects.extend(int(i) for i in pick)
        plan.extend((expression, s, f) for s, f in zip(subjects, frames))
    return plan


def _sequence_params(
    seed: int, q: int, expression: str, subject: int, size: int, style: str = "standard"
) -> tuple[dict[str, Any], dict[str, Any], np.random.Generator]:
    """Shared params of sequence ``q`` and its pose/lighting; frames vary them only slightly."""
    st = get_style(style)
    r = np.random.default_rng([seed, 2, q, *st.stream])
    apex = INTENSITY_LOW + (1 - INTENSITY_LOW) * r.beta(INTENSITY_A, INTENSITY_B)
    base = {
        "renderer": RENDERER_VERSION,
        "subject": subject,
        "seed": seed,
        "expression": expression,
        "intensity": round(float(apex), 4),
        "side": int(r.choice([-1, 1])),
        "size": size,
        "jitter": [round(float(v), 3) for v in np.clip(r.normal(0, JITTER_SD, len(AU_IDS)), -0.4, 0.4)],
    }
    if style != "standard":  # absent means standard: the standard set's params stay as they were
        base["style"] = style
    g = st.pose

    def normal(key: str) -> float:
        return float(np.clip(r.normal(0, g[key][0]), -g[key][1], g[key][1]))

    pose = {
        "angle": normal("angle"),
        "scale": float(r.uniform(*g["scale"])),
        "dx": normal("dx"),
        "dy": normal("dy"),
        "light_angle": float(r.uniform(0, 2 * np.pi)),
        "light": float(r.uniform(*g["light"])),
        "gain": float(r.uniform(*g["gain"])),
        "bias": float(r.uniform(*g["bias"])),
        "noise": float(r.uniform(*g["noise"])),
    }
    if g["resolution"] is not None:
        pose["resolution"] = float(r.uniform(*g["resolution"]))
    return base, pose, r


def _frame_params(
    base: dict[str, Any], pose: dict[str, Any], r: np.random.Generator, expression: str, intensity: float
) -> dict[str, Any]:
    nuisance = {**pose, "dx": pose["dx"] + r.normal(0, 0.002), "dy": pose["dy"] + r.normal(0, 0.002)}
    nuisance = {k: round(float(v), 4) for k, v in nuisance.items()}
    nuisance["noise_seed"] = int(r.integers(2**31))
    return {**base, "expression": expression, "intensity": round(float(intensity), 4), "nuisance": nuisance}


def _remove_previous(manifest: Path, image_dir: Path) -> None:
    """Delete an earlier manifest, then the demo images it listed, so runs never mix.

    The manifest goes first: an interruption then leaves stray images, never a manifest that
    points at missing or rewritten files.
    """
    try:
        old = read_manifest(manifest)
    except FesaugError:
        old = None
    manifest.unlink()
    if old is None or old.meta.get("dataset") != DATASET:
        return
    root = image_dir.resolve()
    for image in old.df["image"]:
        file = (old.image_root / image["path"]).resolve()
        if file.is_relative_to(root):
            file.unlink(missing_ok=True)


def make_demo_dataset(
    out_dir: str | os.PathLike,
    *,
    counts: Mapping[str, int] | None = None,
    n_subjects: int = DEFAULT_SUBJECTS,
    size: int = 64,
    seed: int = 0,
    neutral: bool = False,
    folds: int = 5,
    overwrite: bool = False,
    style: str = "standard",
    color: bool = False,
) -> Path:
    """Write the demo dataset: ``out_dir/images/<class>/<sample_id>.png`` and ``out_dir/manifest.parquet``.

    ``counts`` overrides the CK+ image counts per class (:data:`DEFAULT_COUNTS`); 0 leaves a
    class out. ``neutral`` adds the onset frame of each sequence as a neutral image (as many as
    there are sequences, or ``counts["neutral"]``, at most that). Rows get subject-independent
    ``folds``. ``style`` chooses the population (:data:`STYLES`): ``shifted`` is a second domain
    with its own subject ids, for training on one and testing on the other. ``color`` paints the
    same faces in colour (skin tones, hair, eyes, lips, backgrounds; :mod:`.colour`): RGB PNGs, a
    colour manifest (``channels`` 3), and counterfactuals in colour. Returns the manifest path.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.parquet"
    st = get_style(style)
    counts = _check_counts(counts, neutral)
    if not 16 <= size <= 1024:
        raise FesaugError(f"--size must be between 16 and 1024 pixels, got {size}")
    if n_subjects < folds:
        raise FesaugError(
            f"cannot make {folds} subject-independent folds from {n_subjects} subject(s); raise --n-subjects or "
            "lower --folds"
        )
    with output_lock(out_dir):
        if manifest.exists() and not overwrite:
            raise FesaugError(
                f"{manifest} already exists; pass --overwrite to replace the demo dataset or choose another --out"
            )
        rng = np.random.default_rng([seed, 0, *st.stream])
        plan = _plan(counts, n_subjects, rng)
        n_used = len({s for _, s, _ in plan})
        if n_used < folds:
            raise FesaugError(
                f"only {n_used} subject(s) get images, too few for {folds} subject-independent folds; raise the "
                "counts or lower --folds"
            )
        n_neutral = counts.get("neutral", len(plan)) if neutral else 0
        if n_neutral > len(plan):
            raise FesaugError(
                f"at most {len(plan)} neutral images (one onset frame per sequence), got {n_neutral}; lower the "
                "neutral count"
            )
        with_neutral = set(rng.choice(len(plan), n_neutral, replace=False).tolist())

        image_dir = out_dir / "images"
        if manifest.exists():
            _remove_previous(manifest, image_dir)
        recipes = _recipes(plan, with_neutral, n_subjects, seed, size, style, 3 if color else 1)
        df = pd.DataFrame([_write_sample(image_dir, sample_id, params) for sample_id, params in recipes])
        classes = class_list(df["label_name"])
        df["label"] = [classes.index(c) for c in df["label_name"]]
        df["fold"] = assign_folds(df["label"].to_numpy(), df["subject_id"].to_numpy(), folds, seed)
        settings = {
            "counts": {c: n for c, n in counts.items() if n},
            "n_subjects": n_subjects,
            "size": size,
            "seed": seed,
            "neutral": neutral,
            "n_neutral": n_neutral,
            "folds": folds,
            "style": style,
            "color": color,
        }
        meta = {**_footer(settings, st), "channels": 3 if color else 1}
        return write_manifest(df, manifest, classes=classes, meta=meta, overwrite=True)


def _recipes(
    plan: list[tuple[str, int, int]],
    with_neutral: set[int],
    n_subjects: int,
    seed: int,
    size: int,
    style: str,
    channels: int = 1,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """(sample id, params) of every image, sequence by sequence: its frames, then its neutral onset
    frame if it has one. Colour (``channels`` 3) adds one key to the params, the same draws else."""
    sequence_no = np.zeros(n_subjects, dtype=int)
    for q, (expression, subject, n_frames) in enumerate(plan):
        sequence_no[subject] += 1
        stem = f"{subject_id(subject, style)}_{sequence_no[subject]:03d}"
        base, pose, r = _sequence_params(seed, q, expression, subject, size, style)
        if channels != 1:  # absent means gray: the gray sets' params stay as they were
            base["channels"] = channels
        frames = [
            (
                f"{stem}_{len(FRAME_RAMP) - n_frames + k + 1:02d}",
                _frame_params(base, pose, r, expression, base["intensity"] * ramp),
            )
            for k, ramp in enumerate(FRAME_RAMP[-n_frames:])
        ]
        if q in with_neutral:
            frames.append((f"{stem}_00", _frame_params(base, pose, r, "neutral", base["intensity"])))
        yield from frames


def _footer(settings: dict[str, Any], st: Style) -> dict[str, Any]:
    """The manifest footer: the AU tables, how the set was drawn, and its provenance."""
    return {
        "dataset": DATASET,
        "au_ids": list(AU_IDS),
        "au_names": {str(k): v for k, v in AU_NAMES.items()},
        "au_prototypes": {c: {str(k): v for k, v in p.items()} for c, p in AU_PROTOTYPES.items()},
        "au_unilateral": {c: list(v) for c, v in UNILATERAL.items()},
        "au_threshold": AU_THRESHOLD,
        "demo": {
            **settings,
            "renderer": RENDERER_VERSION,
            "frame_ramp": list(FRAME_RAMP),
            "jitter_sd": JITTER_SD,
            "intensity": {"low": INTENSITY_LOW, "beta_a": INTENSITY_A, "beta_b": INTENSITY_B},
            "subject_prefix": st.subject_prefix,
            "identity": dict(st.identity),
            "pose": dict(st.pose),
        },
        "provenance": provenance("demo-data", settings),
    }


def _write_sample(image_dir: Path, sample_id: str, params: dict[str, Any]) -> dict[str, Any]:
    pixels = render_params(params)
    data = encode_png(Image.fromarray(pixels))
    expression = params["expression"]
    rel = f"images/{expression}/{sample_id}.png"
    (image_dir / expression).mkdir(parents=True, exist_ok=True)
    (image_dir / expression / f"{sample_id}.png").write_bytes(data)
    aus = expression_aus(expression, params["intensity"], params["jitter"])
    intensity = np.array([aus[au] for au in AU_IDS], dtype=np.float32)
    return {
        "sample_id": sample_id,
        "image": {"bytes": None, "path": rel},
        "label_name": expression,
        "subject_id": subject_id(params["subject"], params.get("style", "standard")),
        "split": "train",
        "origin": "real",
        "width": pixels.shape[1],
        "height": pixels.shape[0],
        "sha256": sha256_bytes(data),
        "au_intensity": intensity.tolist(),
        "au_occurrence": (intensity >= AU_THRESHOLD).astype(np.int8).tolist(),
        "demo_params": json.dumps(params, sort_keys=True),
    }
