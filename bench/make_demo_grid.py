"""Draw docs/demo-grid.png: one row per expression, the same few demo subjects in every row.

    .venv/bin/python bench/make_demo_grid.py [--out docs/demo-grid.png]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fesaug.data.demo import Subject, render
from fesaug.data.labels import CKPLUS_CLASSES

ROWS = ("neutral", *CKPLUS_CLASSES)
LABEL_W = 70


def demo_grid(subjects: int = 6, size: int = 64, zoom: int = 2, seed: int = 0) -> Image.Image:
    """Apex expressions (intensity 1) without pose or lighting nuisances, labelled by row."""
    faces = [[render(Subject.from_seed(i, seed), expression, 1.0, size=size) for i in range(subjects)] for expression in ROWS]
    grid = Image.fromarray(np.block(faces)).resize((subjects * size * zoom, len(ROWS) * size * zoom), Image.Resampling.NEAREST)
    out = Image.new("L", (LABEL_W + grid.width, grid.height), 255)
    out.paste(grid, (LABEL_W, 0))
    draw = ImageDraw.Draw(out)
    for row, expression in enumerate(ROWS):
        draw.text((6, row * size * zoom + size * zoom // 2 - 6), expression, fill=0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "demo-grid.png")
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    demo_grid().save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
