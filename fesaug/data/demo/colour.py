"""Colour for the demo faces (``fesaug demo-data --color``): each subject's skin, hair, eye, lip and
background colours.

A colour face is the gray face painted in colour. The renderer draws every part with a gray level
(skin, a crease a few levels darker, the iris, the lips ...); in colour that level is multiplied by
its material's *tint*, an RGB triple whose luma (ITU-R 601, as PIL's ``convert("L")``) is 1. So a
colour face's gray is its gray twin wherever no channel clips: the same face, pose and lighting,
with the same expression cues, and a colour dataset is the gray one in colour.

Tints come from their own random stream (``[seed, 3, subject, *style stream]``), so drawing them
changes no gray identity, and a subject keeps its colours in every image and counterfactual.
"""

from __future__ import annotations

import colorsys
import functools

import numpy as np

from fesaug.data.demo.styles import Subject, get_style

Tint = tuple[float, float, float]
LUMA = np.array([0.299, 0.587, 0.114])

# Skin tones from light to deep (sRGB, the Fitzpatrick-like ramp face renders use); a subject's
# tone sits on this ramp near where its gray skin level sits in its style's range.
SKIN_RAMP = ((255, 224, 196), (241, 194, 167), (222, 172, 130), (190, 130, 90), (130, 85, 55))
DARK_HAIR = ((40, 30, 25), (70, 45, 30), (95, 62, 40), (30, 30, 32))  # black-brown, brown, chestnut, black
LIGHT_HAIR = ((230, 200, 140), (180, 90, 50), (150, 110, 75), (200, 200, 200))  # blonde, auburn, light brown, gray
# Blue, green, brown, hazel, gray.
EYES = ((70, 120, 180), (90, 130, 80), (110, 70, 40), (140, 115, 60), (120, 130, 140))
LIP_RED = (200, 90, 95)
# Parts whose colour is the same on every face.
FIXED: dict[str, tuple[int, int, int]] = {
    "sclera": (245, 240, 235),
    "teeth": (240, 232, 205),
    "mouth": (120, 40, 45),  # the inside of an open mouth
    "dark": (1, 1, 1),  # pupils
    "white": (1, 1, 1),  # catchlights
}


def tint(rgb: tuple[float, ...]) -> Tint:
    """``rgb`` scaled to luma 1: a gray level times it is that colour at that brightness."""
    arr = np.asarray(rgb, dtype=np.float64)
    return tuple(float(v) for v in arr / float(arr @ LUMA))  # type: ignore[return-value]


@functools.lru_cache(maxsize=4096)
def palette(subject: Subject) -> dict[str, Tint]:
    """The tints of ``subject``'s materials: ``skin`` (face, ears, neck, creases, nostrils),
    ``hair`` (hair, brows, lash line), ``iris``, ``lip``, ``background``, and the :data:`FIXED` parts."""
    st = get_style(subject.style)
    r = np.random.default_rng([subject.seed, 3, subject.index, *st.stream])
    low, high = st.identity["skin"]
    # Lighter gray skin leans to the light end of the ramp, with room for every tone at every level.
    where = float(np.clip(1 - (subject.skin - low) / (high - low) + r.normal(0, 0.25), 0, 1)) * (len(SKIN_RAMP) - 1)
    k = min(int(where), len(SKIN_RAMP) - 2)
    skin = np.asarray(tint(SKIN_RAMP[k])) * (k + 1 - where) + np.asarray(tint(SKIN_RAMP[k + 1])) * (where - k)
    hairs = DARK_HAIR if subject.hair < 80 else LIGHT_HAIR
    hair = hairs[int(r.integers(len(hairs)))]
    eye = EYES[int(r.integers(len(EYES)))]
    hue, saturation = float(r.uniform(0, 1)), float(r.uniform(0.15, 0.5))
    background = colorsys.hsv_to_rgb(hue, saturation, 1.0)
    return {
        "skin": tint(skin),
        "hair": tint(hair),
        "iris": tint(eye),
        "lip": tint(0.5 * skin / float(skin @ LUMA) + 0.5 * np.asarray(tint(LIP_RED))),
        "background": tint(background),
        **{name: tint(rgb) for name, rgb in FIXED.items()},
    }


def paint(level: float, tint_: Tint) -> tuple[int, int, int]:
    """A gray ``level`` in a material's tint, as 8-bit RGB."""
    return tuple(int(np.clip(round(level * t), 0, 255)) for t in tint_)  # type: ignore[return-value]
