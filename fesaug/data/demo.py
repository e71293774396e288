"""The embedded demo dataset: procedural grayscale faces whose expressions are driven by FACS
action units (AUs).

Real FER datasets are licensed, so this generator stands in for CK+ everywhere in fesaug: same
seven classes, same imbalance, subjects that show only some expressions in short sequences of
near-identical frames. Unlike a real dataset it knows its ground truth: every row stores the
parameters that reproduce its image exactly (``demo_params``), and :func:`counterfactual`
re-renders the same face, pose and lighting with another expression, which is what a synthesised
image of that row should have looked like.

Two populations (:data:`STYLES`): ``standard``, the dataset every benchmark uses, and ``shifted``,
a second one for cross-dataset tests (train on one, test on the other): other face shapes and skin
tones, strong side lighting and lower contrast, a wider range of head poses, and faces captured
at 60-85 % of the resolution, then upscaled (blurred). Same classes, same AUs, same manifest; its
subject ids start with ``DS`` instead of ``D``, so no identity is shared with the standard set.

Expressions are built from AU intensities (0..1) through :data:`AU_PROTOTYPES`, an EMFACS-like
table. Classes that share AUs (fear/surprise, anger/disgust/sadness, contempt/happy) are meant to
be confusable at low intensity, and a real share of sequences peaks at low intensity, so a
classifier trained on the imbalanced set does worse on the rare classes.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from fesaug.data.images import encode_png, sha256_bytes
from fesaug.data.labels import CKPLUS_CLASSES, canonical_label, class_list
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.data.splits import assign_folds
from fesaug.utils.errors import FesaugError
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance

DATASET = "fesaug-demo"
# Bump when a change to the renderer changes pixels: stored demo_params then no longer
# reproduce their images, and counterfactual() refuses them instead of scoring against drift.
RENDERER_VERSION = 1

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
SUPERSAMPLE = 4
# Faces are drawn whole (hair, ears, neck); zooming in crops them tightly, like CK+48.
FRAME_ZOOM = 1.25


@dataclass(frozen=True)
class Style:
    """A population of demo faces: who is drawn (``identity``: ranges of :class:`Subject`'s fields)
    and how they are photographed (``pose``: ranges of :class:`Nuisance`'s, per sequence).

    Uniform ranges are ``(low, high)``; integer ones are numpy's half-open ``integers`` bounds;
    ``angle``, ``dx`` and ``dy`` are a normal's ``(sd, clip)``. ``stream`` is appended to every
    random seed, so two styles with one ``--seed`` draw unrelated faces; the standard style's is
    empty, which keeps every image it made before styles existed bit for bit.
    """

    name: str
    subject_prefix: str
    stream: tuple[int, ...]
    identity: Mapping[str, Any]
    pose: Mapping[str, Any]


STYLES: dict[str, Style] = {
    "standard": Style(
        "standard",
        "D",
        (),
        identity={
            "skin": (105, 206),
            "dark_hair": 0.8,
            "hair_dark": (20, 75),
            "hair_light": (25, 60),
            "background": (25, 231),
            "forehead": (0.33, 0.38),
            "chin": (0.15, 0.19),
            "face_w": (0.28, 0.34),
            "jaw": (0.0, 0.35),
            "squareness": (2.0, 2.8),
            "hairline": (0.06, 0.17),
            "temples": (-0.03, 0.12),
            "hair_volume": (0.015, 0.06),
            "eye_y": (0.42, 0.47),
            "eye_dx": (0.105, 0.13),
            "eye_w": (0.045, 0.058),
            "eye_h": (0.017, 0.025),
            "iris": (30, 110),
            "brow_gap": (0.06, 0.085),
            "brow_thick": (0.008, 0.016),
            "brow_light": (50, 80),
            "nose_len": (0.15, 0.19),
            "nose_w": (0.03, 0.042),
            "mouth_gap": (0.085, 0.105),
            "mouth_w": (0.075, 0.1),
            "lip_up": (0.009, 0.016),
            "lip_low": (0.012, 0.021),
            "lip_tone": (22, 50),
            "rest_mouth": (-0.007, 0.007),
            "rest_brow": (-0.008, 0.008),
        },
        pose={
            "angle": (2.5, 6.0),
            "scale": (0.94, 1.06),
            "dx": (0.012, 0.03),
            "dy": (0.012, 0.03),
            "light": (0.0, 0.25),
            "gain": (0.85, 1.15),
            "bias": (-15.0, 15.0),
            "noise": (1.0, 4.0),
            "resolution": None,
        },
    ),
    # Narrower, longer faces with tapered jaws, darker skin, more fair hair, rounder eyes set
    # closer, longer noses, fuller lips; a lighting gradient of 20-45 % (standard: 0-25 %), less
    # contrast (gain 0.7-1.0), heads rolled by up to 20 degrees (standard: 6), off-centre faces,
    # captured at 38-54 px of a 64 px image.
    "shifted": Style(
        "shifted",
        "DS",
        (1,),
        identity={
            "skin": (70, 161),
            "dark_hair": 0.5,
            "hair_dark": (15, 60),
            "hair_light": (40, 80),
            "background": (25, 231),
            "forehead": (0.30, 0.35),
            "chin": (0.18, 0.23),
            "face_w": (0.24, 0.29),
            "jaw": (0.2, 0.45),
            "squareness": (1.8, 2.3),
            "hairline": (0.10, 0.20),
            "temples": (0.0, 0.15),
            "hair_volume": (0.03, 0.08),
            "eye_y": (0.40, 0.45),
            "eye_dx": (0.095, 0.118),
            "eye_w": (0.04, 0.052),
            "eye_h": (0.021, 0.029),
            "iris": (15, 80),
            "brow_gap": (0.07, 0.095),
            "brow_thick": (0.012, 0.022),
            "brow_light": (40, 65),
            "nose_len": (0.17, 0.21),
            "nose_w": (0.036, 0.05),
            "mouth_gap": (0.075, 0.095),
            "mouth_w": (0.085, 0.11),
            "lip_up": (0.012, 0.02),
            "lip_low": (0.016, 0.026),
            "lip_tone": (15, 40),
            "rest_mouth": (-0.01, 0.01),
            "rest_brow": (-0.01, 0.01),
        },
        pose={
            "angle": (8.0, 20.0),
            "scale": (0.86, 1.1),
            "dx": (0.02, 0.05),
            "dy": (0.02, 0.05),
            "light": (0.2, 0.45),
            "gain": (0.7, 1.0),
            "bias": (0.0, 30.0),
            "noise": (2.0, 5.0),
            "resolution": (0.6, 0.85),
        },
    ),
}


def _style(name: str) -> Style:
    if name not in STYLES:
        raise FesaugError(f"unknown demo style {name!r}; choose one of {', '.join(STYLES)}")
    return STYLES[name]


@dataclass(frozen=True)
class Subject:
    """One synthetic identity; lengths are fractions of the image side (before pose nuisances)."""

    index: int
    seed: int
    forehead: float  # eyes to top of head
    chin: float  # mouth to chin
    face_w: float  # half-width
    jaw: float  # how much the face narrows toward the chin
    squareness: float  # superellipse exponent: 2 oval, higher squarer
    skin: int
    hair: int
    background: int
    hairline: float  # top of head to fringe
    temples: float  # how far the fringe drops at the sides (negative: receding temples)
    hair_volume: float
    eye_y: float
    eye_dx: float  # half the distance between the eyes
    eye_w: float  # half-width of an eye
    eye_h: float  # half-height of an open eye
    iris: int
    brow_gap: float
    brow_thick: float
    brow_tone: int
    nose_len: float  # eyes to nose tip
    nose_w: float
    mouth_gap: float  # nose tip to mouth
    mouth_w: float  # half-width
    lip_up: float
    lip_low: float
    lip_tone: int  # how much darker the lips are than the skin
    # Idiosyncratic resting face: some people look slightly happy or worried at rest, which is
    # what makes low-intensity expressions genuinely ambiguous across subjects.
    rest_mouth: float
    rest_brow: float
    style: str = "standard"  # the population (:data:`STYLES`) it was drawn from

    @property
    def subject_id(self) -> str:
        return subject_id(self.index, self.style)

    @classmethod
    def from_seed(cls, index: int, seed: int = 0, style: str = "standard") -> Subject:
        """The identity for subject ``index`` of the ``style`` dataset made with ``seed`` (deterministic)."""
        st = _style(style)
        g = st.identity
        r = np.random.default_rng([seed, 1, index, *st.stream])

        def u(name: str) -> float:
            return float(r.uniform(*g[name]))

        # The order of the draws is part of the format: stored params re-render only if it stays.
        skin = int(r.integers(*g["skin"]))
        dark_hair = r.random() < g["dark_hair"]
        hair = int(r.integers(*g["hair_dark"])) if dark_hair else int(min(235, skin + r.integers(*g["hair_light"])))
        # Keep the background visibly different from the skin so the head has an outline.
        background = int(r.integers(*g["background"]))
        while abs(background - skin) < 35:
            background = int(r.integers(*g["background"]))
        return cls(
            index=index,
            seed=seed,
            forehead=u("forehead"),
            chin=u("chin"),
            face_w=u("face_w"),
            jaw=u("jaw"),
            squareness=u("squareness"),
            skin=skin,
            hair=hair,
            background=background,
            hairline=u("hairline"),
            temples=u("temples"),
            hair_volume=u("hair_volume"),
            eye_y=u("eye_y"),
            eye_dx=u("eye_dx"),
            eye_w=u("eye_w"),
            eye_h=u("eye_h"),
            iris=int(r.integers(*g["iris"])),
            brow_gap=u("brow_gap"),
            brow_thick=u("brow_thick"),
            brow_tone=int(min(hair, skin - 60) if dark_hair else skin - int(r.integers(*g["brow_light"]))),
            nose_len=u("nose_len"),
            nose_w=u("nose_w"),
            mouth_gap=u("mouth_gap"),
            mouth_w=u("mouth_w"),
            lip_up=u("lip_up"),
            lip_low=u("lip_low"),
            lip_tone=int(r.integers(*g["lip_tone"])),
            rest_mouth=u("rest_mouth"),
            rest_brow=u("rest_brow"),
            style=style,
        )


def subject_id(index: int, style: str = "standard") -> str:
    return f"{_style(style).subject_prefix}{index + 1:03d}"


@dataclass(frozen=True)
class Nuisance:
    """Pose, lighting and sensor noise; the identity (all zero, no noise) by default."""

    angle: float = 0.0  # rotation, degrees
    scale: float = 1.0
    dx: float = 0.0  # translation, fraction of the image side
    dy: float = 0.0
    light_angle: float = 0.0  # radians: direction the light comes from
    light: float = 0.0  # strength of the linear lighting gradient (0 = flat)
    gain: float = 1.0
    bias: float = 0.0
    noise: float = 0.0  # Gaussian pixel noise, gray levels
    noise_seed: int = 0
    resolution: float = 1.0  # captured at this fraction of the image side, then upscaled (blur)


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


def _expression(name: str) -> str:
    canon = canonical_label(name)
    if canon not in AU_PROTOTYPES:
        raise FesaugError(f"unknown expression {name!r} for the demo generator; use one of {', '.join(AU_PROTOTYPES)}")
    return canon


def _prototype(expression: str) -> dict[int, float]:
    return AU_PROTOTYPES[_expression(expression)]


def render(
    subject: Subject,
    expression: str,
    intensity: float = 1.0,
    nuisance: Nuisance | None = None,
    *,
    side: int = 1,
    jitter: Collection[float] | None = None,
    size: int = 64,
) -> np.ndarray:
    """``subject`` showing ``expression`` at ``intensity`` (0..1): a ``size`` x ``size`` uint8 image.

    ``side`` (+1 right, -1 left half of the image) is where one-sided AUs (contempt) act.
    """
    expression = _expression(expression)
    aus = expression_aus(expression, intensity, jitter)
    return render_aus(subject, aus, nuisance, one_sided=UNILATERAL.get(expression, ()), side=side, size=size)


def render_aus(
    subject: Subject,
    aus: Mapping[int, float],
    nuisance: Nuisance | None = None,
    *,
    one_sided: Collection[int] = (),
    side: int = 1,
    size: int = 64,
) -> np.ndarray:
    """``subject`` with the given AU intensities; AUs in ``one_sided`` act on ``side`` only."""
    unknown = sorted(set(aus) - set(AU_IDS))
    if unknown:
        raise FesaugError(f"AU(s) {unknown} are not rendered by the demo generator; use AUs from {list(AU_IDS)}")
    if side not in (-1, 1):
        raise FesaugError(f"side must be +1 (right half of the image) or -1 (left), got {side!r}")
    by_side = {
        s: {au: (0.0 if au in one_sided and s != side else float(aus.get(au, 0.0))) for au in AU_IDS} for s in (-1, 1)
    }
    canvas = _Canvas(size * SUPERSAMPLE, subject.background)
    _draw_face(canvas, subject, by_side)
    return _finish(canvas.img, nuisance or Nuisance(), size, subject.background)


# --- drawing -------------------------------------------------------------------------------


class _Canvas:
    """Drawing in image fractions (x right, y down, 0..1) on a supersampled canvas."""

    def __init__(self, pixels: int, background: int):
        self.px = pixels
        self.img = Image.new("L", (pixels, pixels), background)
        self.draw = ImageDraw.Draw(self.img)

    def _pts(self, xy: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (np.asarray(xy, dtype=np.float64) * self.px).tolist()]

    def polygon(self, xy: np.ndarray, fill: float) -> None:
        self.draw.polygon(self._pts(xy), fill=_gray(fill))

    def line(self, xy: np.ndarray, fill: float, width: float) -> None:
        self.draw.line(self._pts(xy), fill=_gray(fill), width=max(1, round(width * self.px)), joint="curve")

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: float) -> None:
        p = self.px
        self.draw.ellipse([(cx - rx) * p, (cy - ry) * p, (cx + rx) * p, (cy + ry) * p], fill=_gray(fill))

    def crease(self, xy: np.ndarray, skin: int, depth: float, width: float = 0.007) -> None:
        """A wrinkle or furrow: darker than the skin by ``depth`` gray levels; invisible at 0."""
        if depth >= 1.0:
            self.line(xy, skin - depth, width)


def _gray(v: float) -> int:
    return int(np.clip(round(v), 0, 255))


def _quad(p0: tuple[float, float], mid: tuple[float, float], p1: tuple[float, float], n: int = 16) -> np.ndarray:
    """Quadratic Bezier from p0 to p1 that passes through ``mid`` halfway."""
    p0, mid, p1 = np.asarray(p0), np.asarray(mid), np.asarray(p1)
    ctrl = 2 * mid - (p0 + p1) / 2
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p1


def _stroke(center: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """A tapered band around a centre line, as a polygon."""
    tangent = np.gradient(center, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    offset = normal * half_widths[:, None]
    return np.concatenate([center + offset, (center - offset)[::-1]])


def _superellipse(
    cx: float, cy: float, rx: float, ry_up: float, ry_low: float, n: float, jaw: float, theta: np.ndarray
) -> np.ndarray:
    c, s = np.cos(theta), np.sin(theta)
    x = np.sign(c) * np.abs(c) ** (2 / n) * (1 - jaw * np.clip(s, 0, None) ** 2)
    y = np.sign(s) * np.abs(s) ** (2 / n)
    return np.stack([cx + rx * x, cy + np.where(s < 0, ry_up, ry_low) * y], axis=1)


def _draw_face(cv: _Canvas, sub: Subject, au: dict[int, dict[int, float]]) -> None:
    """Paint the face; ``au[s][n]`` is AU ``n`` on the image's left (s=-1) or right (s=+1) half."""
    both = {n: max(au[-1][n], au[1][n]) for n in AU_IDS}
    skin, cx = sub.skin, 0.5
    nose_y = sub.eye_y + sub.nose_len
    mouth_y = nose_y + sub.mouth_gap
    top = sub.eye_y - sub.forehead
    drop = 0.06 * both[26]  # jaw drop lowers the chin
    chin_y = mouth_y + sub.chin
    cy = (top + chin_y) / 2
    half_h = (chin_y - top) / 2
    theta = np.linspace(0, 2 * np.pi, 96, endpoint=False)

    # Neck and ears, then the face over them, then the hair: the head outline grown by the
    # hair volume, above a hairline that dips toward the temples.
    neck_w = sub.face_w * 0.55
    cv.polygon(
        np.array([[cx - neck_w, cy], [cx + neck_w, cy], [cx + neck_w * 1.2, 1.05], [cx - neck_w * 1.2, 1.05]]),
        skin - 25,
    )
    for s in (-1, 1):
        cv.ellipse(cx + s * (sub.face_w - 0.01), sub.eye_y + 0.04, 0.03, 0.055, skin - 14)
    cv.polygon(_superellipse(cx, cy, sub.face_w, half_h, half_h + drop, sub.squareness, sub.jaw, theta), skin)
    vol = sub.hair_volume
    hair_y = top + sub.hairline
    mask = _Canvas(cv.px, 0)
    mask.polygon(_superellipse(cx, cy, sub.face_w + vol, half_h + vol, half_h, sub.squareness, 0.0, theta), 255)
    fx = np.linspace(-1.5, 1.5, 31)
    fringe = np.stack([cx + fx * sub.face_w, hair_y + sub.temples * fx**2], axis=1)
    mask.polygon(np.concatenate([fringe, [[1.5, 1.5], [-0.5, 1.5]]]), 0)
    cv.img.paste(sub.hair, mask=mask.img)

    brow_y = sub.eye_y - sub.brow_gap
    # Forehead wrinkles (AU1 centre, AU2 sides) and the vertical furrows of AU4.
    for k in range(3):
        y = brow_y - 0.045 - 0.022 * k
        if y > hair_y + 0.012:
            for s in (-1, 1):
                depth = 38 * (0.6 * au[s][1] + 0.4 * au[s][2]) - 6 * k
                cv.crease(_quad((cx, y), (cx + s * 0.07, y - 0.006), (cx + s * 0.13, y + 0.004)), skin, depth, 0.005)
    for s in (-1, 1):
        cv.crease(
            np.array([[cx + s * 0.012, brow_y - 0.004], [cx + s * 0.016, brow_y + 0.03]]), skin, 50 * au[s][4], 0.007
        )

    for s in (-1, 1):
        a = au[s]
        ex = cx + s * sub.eye_dx
        _draw_eye(cv, sub, ex, s, a)
        # Brow: inner end rises with AU1 and is pulled in (and, unless AU1 holds it up, down) by AU4;
        # the outer end rises with AU2.
        inner = (
            cx + s * max(0.03, sub.eye_dx - sub.eye_w - 0.004 - 0.012 * a[4]),
            brow_y + 0.012 - 0.045 * a[1] + 0.035 * a[4] * (1 - 0.7 * a[1]) + sub.rest_brow,
        )
        mid = (ex + s * 0.006, brow_y - 0.006 - 0.02 * a[1] - 0.042 * a[2] + 0.025 * a[4])
        outer = (ex + s * sub.eye_w * 1.4, brow_y + 0.014 - 0.04 * a[2] + 0.01 * a[4])
        center = _quad(inner, mid, outer, 20)
        widths = sub.brow_thick * (1 + 0.25 * a[4]) * np.linspace(1.0, 0.45, 20)
        cv.polygon(_stroke(center, widths), sub.brow_tone)

    _draw_nose_and_mouth(cv, sub, au, both, nose_y, mouth_y, drop)


def _draw_eye(cv: _Canvas, sub: Subject, ex: float, s: int, a: dict[int, float]) -> None:
    skin, ey, w, h = sub.skin, sub.eye_y, sub.eye_w, sub.eye_h
    up = h * max(0.15, 1 + 1.3 * a[5] - 0.55 * a[7] - 0.4 * a[6] - 0.2 * a[4])
    low = h * max(0.1, 0.8 + 0.2 * a[5] - 0.5 * a[7] - 0.45 * a[6])
    u = np.linspace(-1, 1, 17)
    xs = ex + s * u * w
    tilt = 0.08 * h * u  # outer corner slightly higher
    upper = np.stack([xs, ey - tilt - up * (1 - u**2) ** 0.8], axis=1)
    lower = np.stack([xs, ey - tilt + low * (1 - u**2) ** 0.9], axis=1)
    cv.polygon(np.concatenate([upper, lower[::-1]]), min(240, skin + 55))
    r = min(h * 1.1, w * 0.6)
    iy = ey - 0.1 * h
    cv.ellipse(ex, iy, r, r, sub.iris)
    cv.ellipse(ex, iy, r * 0.45, r * 0.45, 12)
    cv.ellipse(ex - 0.3 * r, iy - 0.3 * r, r * 0.18, r * 0.18, 230)
    # Lids: skin over whatever of the iris lies outside the opening.
    reach = r * 1.4 + 0.01
    cv.polygon(np.concatenate([upper, [[ex + s * w, ey - reach - up], [ex - s * w, ey - reach - up]]]), skin)
    cv.polygon(np.concatenate([lower, [[ex + s * w, ey + reach + low], [ex - s * w, ey + reach + low]]]), skin)
    cv.crease(upper + [0, -(0.35 * h + 0.006)], skin, 22 * (1 - a[5]), 0.004)  # lid fold, hidden when the lid retracts
    cv.line(upper, min(sub.brow_tone, 45), 0.006)
    cv.crease(lower, skin, 28, 0.003)
    # AU6 bunches the cheek under the eye and creases the outer corner; AU7 tenses the lower lid.
    cv.crease(
        _quad((ex - s * w * 0.8, ey + low + 0.018), (ex, ey + low + 0.026), (ex + s * w * 1.1, ey + low + 0.012)),
        skin,
        45 * a[6] + 20 * a[7],
    )
    corner = np.array([ex + s * w * 1.1, ey])
    for ang in (-0.35, 0.0, 0.35):
        d = np.array([s * math.cos(ang), math.sin(ang)]) * 0.025
        cv.crease(np.array([corner + 0.3 * d, corner + d]), skin, 45 * a[6], 0.006)


def _draw_nose_and_mouth(
    cv: _Canvas,
    sub: Subject,
    au: dict[int, dict[int, float]],
    both: dict[int, float],
    nose_y: float,
    mouth_y: float,
    drop: float,
) -> None:
    skin, cx, nw = sub.skin, 0.5, sub.nose_w
    lift = 0.012 * both[9] + 0.006 * both[10]  # nose wrinkling pulls the nostrils up
    ny = nose_y - lift
    for k in range(3):  # AU9 wrinkles across the bridge
        y = sub.eye_y + 0.035 + 0.016 * k
        cv.crease(
            _quad((cx - nw * 0.8, y + 0.004), (cx, y - 0.002), (cx + nw * 0.8, y + 0.004)), skin, 48 * both[9], 0.006
        )
    corner: dict[int, tuple[float, float]] = {}
    for s in (-1, 1):
        a = au[s]
        flare = nw * (1 + 0.3 * a[9])
        cv.crease(np.array([[cx + s * nw * 0.35, sub.eye_y + 0.01], [cx + s * nw * 0.6, ny - 0.035]]), skin, 12, 0.006)
        cv.crease(
            _quad(
                (cx + s * flare * 0.75, ny - 0.03),
                (cx + s * flare * 1.05, ny - 0.004),
                (cx + s * flare * 0.55, ny + 0.012),
            ),
            skin,
            38,
            0.005,
        )
        cv.ellipse(cx + s * nw * 0.42, ny + 0.004, 0.011, 0.0065, skin - 75)
        # Mouth corners: pulled up and out by AU12, out by AU20, in by AU23, down by AU15.
        dx = sub.mouth_w * (1 + 0.25 * a[12] + 0.08 * a[14] + 0.35 * a[20] - 0.22 * a[23] - 0.2 * a[26])
        dy = -0.05 * a[12] - 0.01 * a[14] + 0.036 * a[15] + 0.008 * a[20] + sub.rest_mouth + 0.3 * drop
        corner[s] = (cx + s * dx, mouth_y + dy)
        fold = 10 + 20 * a[6] + 30 * a[9] + 28 * a[10] + 40 * a[12] + 15 * a[14]
        cv.crease(
            _quad(
                (cx + s * (flare + 0.008), ny - 0.012),
                (cx + s * (flare + 0.04), ny + 0.035),
                (corner[s][0] + s * 0.02, corner[s][1] + 0.01),
            ),
            skin,
            fold,
        )
        cv.crease(
            _quad(
                (corner[s][0] + s * 0.018, corner[s][1] - 0.018),
                (corner[s][0] + s * 0.024, corner[s][1]),
                (corner[s][0] + s * 0.016, corner[s][1] + 0.014),
            ),
            skin,
            55 * a[14],
            0.006,
        )

    # Lips: a centre line through both corners, opened by AU25/AU26 (and AU10, AU20).
    u = np.linspace(-1, 1, 41)
    s_of_u = np.where(u < 0, -1, 1)
    corner_x = np.array([corner[s][0] for s in s_of_u])
    corner_dy = np.array([corner[s][1] - mouth_y for s in s_of_u])
    x = cx + np.abs(u) * (corner_x - cx)
    env = (1 - u**2) ** 0.6
    line = mouth_y + corner_dy * np.abs(u) ** 1.6 - 0.006 * both[17] * env
    gap = 0.1 * both[26] + 0.025 * both[25] + 0.012 * both[20] + 0.006 * both[10]
    inner_up = line - 0.3 * gap * env - 0.014 * both[10] * env**0.3
    inner_low = line + 0.7 * gap * env
    t_up = sub.lip_up * (1 - 0.55 * both[23] - 0.2 * both[20])
    t_low = sub.lip_low * (1 - 0.55 * both[23] + 0.3 * both[17])
    outer_up = inner_up - t_up * (0.35 + 0.65 * env) + t_up * 0.3 * np.exp(-((u / 0.12) ** 2))
    outer_low = inner_low + t_low * (0.35 + 0.65 * env)

    def pts(ys: np.ndarray) -> np.ndarray:
        return np.stack([x, ys], axis=1)

    opening = inner_low - inner_up
    if opening.max() > 0.004:
        cv.polygon(np.concatenate([pts(inner_up), pts(inner_low)[::-1]]), 30)
        teeth = inner_up + np.minimum(0.4 * opening, 0.016)
        cv.polygon(np.concatenate([pts(inner_up), pts(teeth)[::-1]]), min(225, skin + 40))
    cv.polygon(np.concatenate([pts(outer_up), pts(inner_up)[::-1]]), skin - sub.lip_tone)
    cv.polygon(np.concatenate([pts(inner_low), pts(outer_low)[::-1]]), skin - 0.75 * sub.lip_tone)
    cv.line(pts(inner_up), skin - sub.lip_tone - 40, 0.005)
    # Chin: the groove under the lower lip, deepened and pushed up by AU17.
    under = mouth_y + sub.lip_low + 0.03 + 0.7 * 0.1 * both[26] - 0.008 * both[17]
    cv.crease(
        _quad((cx - 0.035, under + 0.004), (cx, under), (cx + 0.035, under + 0.004)), skin, 12 + 40 * both[17], 0.005
    )


def _finish(canvas: Image.Image, nz: Nuisance, size: int, background: int) -> np.ndarray:
    """Apply pose, downsample (the anti-aliasing), then lighting, gain and noise."""
    px = canvas.size[0]
    # PIL's affine maps each output pixel back to its input pixel: p = C + R(angle)(p' - C - t) / scale.
    a = math.radians(nz.angle)
    scale = nz.scale * FRAME_ZOOM
    cos, sin = math.cos(a) / scale, math.sin(a) / scale
    c = px / 2
    tx, ty = c + nz.dx * px, c + nz.dy * px
    coeffs = (cos, -sin, c - cos * tx + sin * ty, sin, cos, c - sin * tx - cos * ty)
    canvas = canvas.transform(
        canvas.size, Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=background
    )
    if nz.resolution < 1.0:
        low = max(4, round(size * nz.resolution))
        canvas = canvas.resize((low, low), Image.Resampling.BOX).resize((size, size), Image.Resampling.BICUBIC)
    img = np.asarray(canvas.resize((size, size), Image.Resampling.BOX), dtype=np.float64)
    if nz.light:
        grid = np.linspace(-1.0, 1.0, size)
        img = img * (
            1 + nz.light * (math.cos(nz.light_angle) * grid[None, :] + math.sin(nz.light_angle) * grid[:, None])
        )
    img = img * nz.gain + nz.bias
    if nz.noise:
        img = img + np.random.default_rng(nz.noise_seed).normal(0.0, nz.noise, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --- stored parameters and counterfactuals -------------------------------------------------


def _params_of(params_or_row: Mapping[str, Any] | pd.Series | str) -> dict[str, Any]:
    """The ``demo_params`` of a manifest row, or the params themselves (dict or JSON)."""
    raw: Any = params_or_row
    if not isinstance(raw, str) and "demo_params" in raw:
        raw = raw["demo_params"]
    try:
        params = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError):
        raise FesaugError("demo_params is not valid JSON; take it from a manifest made by `fesaug demo-data`") from None
    if params.get("renderer") != RENDERER_VERSION:
        raise FesaugError(
            f"demo_params were written by demo renderer version {params.get('renderer')!r}, this fesaug renders "
            "version "
            f"{RENDERER_VERSION}; re-create the dataset with `fesaug demo-data --overwrite`"
        )
    return params


def render_params(params_or_row: Mapping[str, Any] | pd.Series | str) -> np.ndarray:
    """Re-render a stored sample exactly: the same pixels its PNG holds."""
    p = _params_of(params_or_row)
    return render(
        Subject.from_seed(p["subject"], p["seed"], p.get("style", "standard")),
        p["expression"],
        p["intensity"],
        Nuisance(**p["nuisance"]),
        side=p["side"],
        jitter=p["jitter"],
        size=p["size"],
    )


def counterfactual(
    params_or_row: Mapping[str, Any] | pd.Series | str, expression: str, intensity: float | None = None
) -> np.ndarray:
    """The same face, pose, lighting and noise as a stored sample, showing ``expression``.

    This is the ground truth for synthesis: what an image generated from this row for
    ``expression`` should look like. ``intensity`` defaults to the row's own (a neutral row
    carries the apex intensity of its sequence). ``params_or_row`` is a manifest row (with a
    ``demo_params`` column) or its decoded or JSON params.
    """
    p = _params_of(params_or_row)
    p["expression"] = _expression(expression)
    if intensity is not None:
        p["intensity"] = float(intensity)
    return render_params(p)


# --- the dataset ---------------------------------------------------------------------------


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
    st = _style(style)
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
) -> Path:
    """Write the demo dataset: ``out_dir/images/<class>/<sample_id>.png`` and ``out_dir/manifest.parquet``.

    ``counts`` overrides the CK+ image counts per class (:data:`DEFAULT_COUNTS`); 0 leaves a
    class out. ``neutral`` adds the onset frame of each sequence as a neutral image (as many as
    there are sequences, or ``counts["neutral"]``, at most that). Rows get subject-independent
    ``folds``. ``style`` chooses the population (:data:`STYLES`): ``shifted`` is a second domain
    with its own subject ids, for training on one and testing on the other. Returns the manifest path.
    """
    out_dir = Path(out_dir)
    manifest = out_dir / "manifest.parquet"
    st = _style(style)
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
        sequence_no = np.zeros(n_subjects, dtype=int)
        rows = []
        for q, (expression, subject, n_frames) in enumerate(plan):
            sequence_no[subject] += 1
            stem = f"{subject_id(subject, style)}_{sequence_no[subject]:03d}"
            base, pose, r = _sequence_params(seed, q, expression, subject, size, style)
            frames = [
                (
                    f"{stem}_{len(FRAME_RAMP) - n_frames + k + 1:02d}",
                    _frame_params(base, pose, r, expression, base["intensity"] * ramp),
                )
                for k, ramp in enumerate(FRAME_RAMP[-n_frames:])
            ]
            if q in with_neutral:
                frames.append((f"{stem}_00", _frame_params(base, pose, r, "neutral", base["intensity"])))
            for sample_id, params in frames:
                rows.append(_write_sample(image_dir, sample_id, params))

        df = pd.DataFrame(rows)
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
        }
        meta = {
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
        return write_manifest(df, manifest, classes=classes, meta=meta, overwrite=True)


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
