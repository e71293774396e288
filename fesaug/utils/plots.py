"""Figures fesaug writes (histograms, image grids): matplotlib's Agg canvas, saved atomically.

Figures are built on ``matplotlib.figure.Figure`` directly rather than pyplot, so no global
backend is switched and no GUI is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fesaug.data.manifest import Manifest
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path

PLOT_FORMATS = ("png", "svg", "pdf")


def plot_format(path: str | os.PathLike) -> str:
    """The image format for ``path``, from its extension; other extensions are an error."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise FesaugError(
            f"cannot write a plot to {path}: use a file name ending in {', '.join('.' + f for f in PLOT_FORMATS)}"
        )
    return fmt


def new_figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: str | os.PathLike, dpi: int = 120) -> Path:
    fmt = plot_format(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return Path(path)


def image_axis(ax) -> None:
    """An axis that only shows an image: no ticks, no frame."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def show_image(ax, img: Any) -> None:
    """Draw a decoded image (PIL ``L`` or ``RGB``, or its array) on ``ax``: gray on a fixed 0-255
    gray scale, colour as it is."""
    pixels = np.asarray(img)
    if pixels.ndim == 2:
        ax.imshow(pixels, cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(pixels)


def change_map(source: Image.Image, made: Image.Image) -> np.ndarray:
    """Per-pixel absolute difference (the mean over colour channels), the source resized to the
    synthetic image's size where the two differ."""
    if source.size != made.size:
        source = source.resize(made.size, Image.Resampling.BILINEAR)
    diff = np.abs(np.asarray(made, dtype=np.float32) - np.asarray(source, dtype=np.float32))
    return diff.mean(axis=2) if diff.ndim == 3 else diff


def class_grid(manifest: Manifest, path: str | os.PathLike, *, per_class: int = 8, seed: int = 0) -> Path:
    """One row per class of ``per_class`` randomly chosen images (fewer if the class is smaller)."""
    rng = np.random.default_rng(seed)
    labels = manifest.df["label"].to_numpy(dtype=np.int64)
    fig = new_figure(1.0 * per_class + 1.2, 1.0 * len(manifest.classes) + 0.3)
    axes = fig.subplots(len(manifest.classes), per_class, squeeze=False)
    for k, name in enumerate(manifest.classes):
        rows = np.flatnonzero(labels == k)
        chosen = rng.choice(rows, size=min(per_class, rows.size), replace=False) if rows.size else []
        for j, ax in enumerate(axes[k]):
            image_axis(ax)
            if j < len(chosen):
                show_image(ax, manifest.open_image(int(chosen[j])))
        axes[k][0].set_ylabel(f"{name}\n({rows.size})", rotation=0, ha="right", va="center", fontsize=9)
    return save_figure(fig, path)
