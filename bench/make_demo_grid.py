"""Draw docs/demo-grid.png: one row per expression, the same few demo subjects in every row;
docs/demo-styles.png: dataset images of the standard and the shifted demo population side by side;
and docs/demo-colour.png: the same, rendered in colour (fesaug demo-data --color).

    .venv/bin/python bench/make_demo_grid.py [--out docs/demo-grid.png] [--styles-out docs/demo-styles.png]
        [--colour-out docs/demo-colour.png]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from fesaug.data.demo import STYLES, Subject, make_demo_dataset, render
from fesaug.data.labels import CKPLUS_CLASSES
from fesaug.data.manifest import read_manifest

ROWS = ("neutral", *CKPLUS_CLASSES)
LABEL_W = 70


def demo_grid(subjects: int = 6, size: int = 64, zoom: int = 2, seed: int = 0) -> Image.Image:
    """Apex expressions (intensity 1) without pose or lighting nuisances, labelled by row."""
    faces = [
        [render(Subject.from_seed(i, seed), expression, 1.0, size=size) for i in range(subjects)] for expression in ROWS
    ]
    grid = Image.fromarray(np.block(faces)).resize(
        (subjects * size * zoom, len(ROWS) * size * zoom), Image.Resampling.NEAREST
    )
    out = Image.new("L", (LABEL_W + grid.width, grid.height), 255)
    out.paste(grid, (LABEL_W, 0))
    draw = ImageDraw.Draw(out)
    for row, expression in enumerate(ROWS):
        draw.text((6, row * size * zoom + size * zoom // 2 - 6), expression, fill=0)
    return out


def styles_grid(per_class: int = 2, zoom: int = 2, seed: int = 0, color: bool = False) -> Image.Image:
    """One row per style: ``per_class`` images of each class as the dataset renders them (pose,
    lighting, noise and, for ``shifted``, low resolution included), classes in label order;
    ``color``: as ``fesaug demo-data --color`` renders them."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for style in STYLES:
            m = read_manifest(
                make_demo_dataset(
                    Path(tmp) / style,
                    counts=dict.fromkeys(CKPLUS_CLASSES, 3 * per_class),
                    n_subjects=12,
                    folds=2,
                    seed=seed,
                    style=style,
                    color=color,
                )
            )
            picks = [i for c in CKPLUS_CLASSES for i in m.df.index[m.df["label_name"] == c][::3][:per_class]]
            rows.append(np.concatenate([np.asarray(m.open_image(i)) for i in picks], axis=1))
    grid = Image.fromarray(np.concatenate(rows, axis=0))
    grid = grid.resize((grid.width * zoom, grid.height * zoom), Image.Resampling.NEAREST)
    out = Image.new(grid.mode, (LABEL_W + grid.width, grid.height), "white")
    out.paste(grid, (LABEL_W, 0))
    draw = ImageDraw.Draw(out)
    side = grid.height // len(STYLES)
    for row, style in enumerate(STYLES):
        draw.text((6, row * side + side // 2 - 6), style, fill="black")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    docs = Path(__file__).resolve().parents[1] / "docs"
    ap.add_argument("--out", type=Path, default=docs / "demo-grid.png")
    ap.add_argument("--styles-out", type=Path, default=docs / "demo-styles.png")
    ap.add_argument("--colour-out", type=Path, default=docs / "demo-colour.png")
    args = ap.parse_args()
    images = ((args.out, demo_grid()), (args.styles_out, styles_grid()), (args.colour_out, styles_grid(color=True)))
    for path, image in images:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
        print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
