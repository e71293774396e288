"""Rendering a demo face: a subject with an expression (or AU intensities) under a pose, and
stored samples re-rendered exactly or with another expression (:func:`counterfactual`)."""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from fesaug.data.demo.aus import AU_IDS, UNILATERAL, expression_aus, expression_name
from fesaug.data.demo.canvas import Canvas
from fesaug.data.demo.colour import palette
from fesaug.data.demo.face import draw_face
from fesaug.data.demo.styles import Nuisance, Subject
from fesaug.utils.errors import FesaugError

# Bump when a change to the renderer changes pixels: stored demo_params then no longer
# reproduce their images, and counterfactual() refuses them instead of scoring against drift.
RENDERER_VERSION = 1
SUPERSAMPLE = 4
# Faces are drawn whole (hair, ears, neck); zooming in crops them tightly, like CK+48.
FRAME_ZOOM = 1.25


def render(
    subject: Subject,
    expression: str,
    intensity: float = 1.0,
    nuisance: Nuisance | None = None,
    *,
    side: int = 1,
    jitter: Collection[float] | None = None,
    size: int = 64,
    channels: int = 1,
) -> np.ndarray:
    """``subject`` showing ``expression`` at ``intensity`` (0..1): a ``size`` x ``size`` uint8 image
    (``channels`` 1), or ``size`` x ``size`` x 3 in colour (``channels`` 3; :mod:`.colour`).

    ``side`` (+1 right, -1 left half of the image) is where one-sided AUs (contempt) act.
    """
    expression = expression_name(expression)
    aus = expression_aus(expression, intensity, jitter)
    return render_aus(
        subject, aus, nuisance, one_sided=UNILATERAL.get(expression, ()), side=side, size=size, channels=channels
    )


def render_aus(
    subject: Subject,
    aus: Mapping[int, float],
    nuisance: Nuisance | None = None,
    *,
    one_sided: Collection[int] = (),
    side: int = 1,
    size: int = 64,
    channels: int = 1,
) -> np.ndarray:
    """``subject`` with the given AU intensities; AUs in ``one_sided`` act on ``side`` only;
    ``channels`` 3 paints it in the subject's colours."""
    unknown = sorted(set(aus) - set(AU_IDS))
    if unknown:
        raise FesaugError(f"AU(s) {unknown} are not rendered by the demo generator; use AUs from {list(AU_IDS)}")
    if side not in (-1, 1):
        raise FesaugError(f"side must be +1 (right half of the image) or -1 (left), got {side!r}")
    if channels not in (1, 3):
        raise FesaugError(f"channels must be 1 (gray) or 3 (colour), got {channels!r}")
    tints = palette(subject) if channels == 3 else None
    by_side = {
        s: {au: (0.0 if au in one_sided and s != side else float(aus.get(au, 0.0))) for au in AU_IDS} for s in (-1, 1)
    }
    canvas = Canvas(size * SUPERSAMPLE, subject.background, tints)
    draw_face(canvas, subject, by_side)
    return _finish(canvas.img, nuisance or Nuisance(), size, canvas.fill(subject.background, "background"))


def _finish(canvas: Image.Image, nz: Nuisance, size: int, background: int | tuple[int, ...]) -> np.ndarray:
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
        light = 1 + nz.light * (math.cos(nz.light_angle) * grid[None, :] + math.sin(nz.light_angle) * grid[:, None])
        img = img * (light if img.ndim == 2 else light[:, :, None])
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
    """Re-render a stored sample exactly: the same pixels its PNG holds (in colour, ``H×W×3``,
    for a sample of a colour dataset: its params carry ``"channels": 3``)."""
    p = _params_of(params_or_row)
    return render(
        Subject.from_seed(p["subject"], p["seed"], p.get("style", "standard")),
        p["expression"],
        p["intensity"],
        Nuisance(**p["nuisance"]),
        side=p["side"],
        jitter=p["jitter"],
        size=p["size"],
        channels=p.get("channels", 1),
    )


def counterfactual(
    params_or_row: Mapping[str, Any] | pd.Series | str, expression: str, intensity: float | None = None
) -> np.ndarray:
    """The same face, pose, lighting and noise as a stored sample, showing ``expression``.

    This is the ground truth for synthesis: what an image generated from this row for
    ``expression`` should look like (in colour, ``H×W×3``, for a row of a colour dataset).
    ``intensity`` defaults to the row's own (a neutral row carries the apex intensity of its
    sequence). ``params_or_row`` is a manifest row (with a
    ``demo_params`` column) or its decoded or JSON params.
    """
    p = _params_of(params_or_row)
    p["expression"] = expression_name(expression)
    if intensity is not None:
        p["intensity"] = float(intensity)
    return render_params(p)
