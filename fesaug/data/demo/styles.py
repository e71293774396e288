"""Who the demo faces are: the populations (:data:`STYLES`), one identity per subject
(:class:`Subject`), and how a face is photographed (:class:`Nuisance`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from fesaug.utils.errors import FesaugError


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


def get_style(name: str) -> Style:
    """The population called ``name`` (:data:`STYLES`), or one clear error."""
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
        st = get_style(style)
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
    """The manifest's subject id of subject ``index`` of ``style`` (``D001``, ``DS001``, ...)."""
    return f"{get_style(style).subject_prefix}{index + 1:03d}"


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
