"""Drawing primitives of the demo renderer: a supersampled canvas in image fractions, and curves."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from PIL import Image, ImageDraw

from fesaug.data.demo.colour import Tint, paint


class Canvas:
    """Drawing in image fractions (x right, y down, 0..1) on a supersampled canvas.

    Every fill is a gray level; ``material`` names what is drawn (``skin``, ``hair``, ``iris``,
    ... :func:`fesaug.data.demo.colour.palette`). A gray canvas ignores it; a colour one (given
    ``tints``) paints the level in that material's tint.
    """

    def __init__(self, pixels: int, background: int, tints: Mapping[str, Tint] | None = None):
        self.px = pixels
        self.tints = tints
        colour = background if tints is None else paint(background, tints["background"])
        self.img = Image.new("L" if tints is None else "RGB", (pixels, pixels), colour)
        self.draw = ImageDraw.Draw(self.img)

    def _pts(self, xy: np.ndarray) -> list[tuple[float, float]]:
        return [tuple(p) for p in (np.asarray(xy, dtype=np.float64) * self.px).tolist()]

    def fill(self, level: float, material: str) -> int | tuple[int, int, int]:
        """What a gray ``level`` of ``material`` is on this canvas: the level, or its colour."""
        return _gray(level) if self.tints is None else paint(_gray(level), self.tints[material])

    def polygon(self, xy: np.ndarray, fill: float, material: str = "skin") -> None:
        self.draw.polygon(self._pts(xy), fill=self.fill(fill, material))

    def line(self, xy: np.ndarray, fill: float, width: float, material: str = "skin") -> None:
        self.draw.line(
            self._pts(xy), fill=self.fill(fill, material), width=max(1, round(width * self.px)), joint="curve"
        )

    def ellipse(self, cx: float, cy: float, rx: float, ry: float, fill: float, material: str = "skin") -> None:
        p = self.px
        box = [(cx - rx) * p, (cy - ry) * p, (cx + rx) * p, (cy + ry) * p]
        self.draw.ellipse(box, fill=self.fill(fill, material))

    def paste(self, level: float, material: str, mask: Image.Image) -> None:
        """Fill the pixels ``mask`` covers (an ``L`` canvas of the same size) with ``level``."""
        self.img.paste(self.fill(level, material), mask=mask)

    def crease(self, xy: np.ndarray, skin: int, depth: float, width: float = 0.007) -> None:
        """A wrinkle or furrow: darker than the skin by ``depth`` gray levels; invisible at 0."""
        if depth >= 1.0:
            self.line(xy, skin - depth, width)


def _gray(v: float) -> int:
    return int(np.clip(round(v), 0, 255))


def quad(p0: tuple[float, float], mid: tuple[float, float], p1: tuple[float, float], n: int = 16) -> np.ndarray:
    """Quadratic Bezier from p0 to p1 that passes through ``mid`` halfway."""
    p0, mid, p1 = np.asarray(p0), np.asarray(mid), np.asarray(p1)
    ctrl = 2 * mid - (p0 + p1) / 2
    t = np.linspace(0.0, 1.0, n)[:, None]
    return (1 - t) ** 2 * p0 + 2 * (1 - t) * t * ctrl + t**2 * p1


def stroke(center: np.ndarray, half_widths: np.ndarray) -> np.ndarray:
    """A tapered band around a centre line, as a polygon."""
    tangent = np.gradient(center, axis=0)
    normal = np.stack([-tangent[:, 1], tangent[:, 0]], axis=1)
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)
    offset = normal * half_widths[:, None]
    return np.concatenate([center + offset, (center - offset)[::-1]])


def superellipse(
    cx: float, cy: float, rx: float, ry_up: float, ry_low: float, n: float, jaw: float, theta: np.ndarray
) -> np.ndarray:
    """A head outline: a superellipse of exponent ``n`` with separate upper and lower half-heights,
    narrowed toward the bottom by ``jaw``, at angles ``theta``."""
    c, s = np.cos(theta), np.sin(theta)
    x = np.sign(c) * np.abs(c) ** (2 / n) * (1 - jaw * np.clip(s, 0, None) ** 2)
    y = np.sign(s) * np.abs(s) ** (2 / n)
    return np.stack([cx + rx * x, cy + np.where(s < 0, ry_up, ry_low) * y], axis=1)
