"""Thumbnails of the review page, made once: each is a PNG named by what it shows (the image's
sha256, or a digest of a demo counterfactual's recipe), written atomically, so a file that
exists is complete and a second run, or one resumed after an interruption, makes only the
missing ones. Images no larger than the thumbnail side are re-encoded as they are (never
enlarged; the page scales them)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from fesaug.data.images import decode_image, encode_png
from fesaug.data.manifest import Manifest
from fesaug.review.data import ThumbJob, thumb_path
from fesaug.utils.files import atomic_write_bytes, remove_stale_temporaries


@dataclass(frozen=True)
class ThumbStats:
    """How many thumbnails a run made and how many it found already made."""

    made: int
    cached: int


def missing(out: Path, jobs: Sequence[ThumbJob], size: int) -> list[ThumbJob]:
    """The jobs whose thumbnail is not yet under ``out`` (one directory listing per folder,
    not one ``stat`` per file)."""
    present: set[str] = set()
    root = out / "thumbs" / str(size)
    if root.is_dir():
        for folder in os.scandir(root):
            if folder.is_dir():
                present.update(entry.name for entry in os.scandir(folder.path) if not entry.name.startswith("."))
    return [j for j in jobs if f"{j.key}.png" not in present]


def remove_stale(out: Path, size: int) -> None:
    """Remove the temporary files of thumbnail writes an interrupted run left (call it while
    holding the review folder's lock)."""
    root = out / "thumbs" / str(size)
    if root.is_dir():
        for folder in root.iterdir():
            if folder.is_dir():
                remove_stale_temporaries(folder)


def make_thumbnails(
    manifest: Manifest,
    out: Path,
    jobs: Sequence[ThumbJob],
    size: int,
    *,
    workers: int | None = None,
    progress: bool = False,
) -> ThumbStats:
    """Write the missing thumbnails of ``jobs`` under ``out`` (see the module docstring).

    ``workers`` threads decode and encode (zlib releases the GIL); default: the CPU count, at
    most 8. A bad image raises :class:`fesaug.data.images.BadImage` naming it."""
    todo = missing(out, jobs, size)
    workers = workers or min(8, os.cpu_count() or 1)

    def make(job: ThumbJob) -> None:
        img = _counterfactual(manifest, job) if job.target is not None else _row_image(manifest, job.row)
        if max(img.size) > size:
            img.thumbnail((size, size), Image.Resampling.LANCZOS)
        atomic_write_bytes(out / thumb_path(job.key, size), encode_png(img))

    with (
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fesaug-thumb") as pool,
        tqdm(total=len(todo), unit="thumb", desc="thumbnails", disable=None if progress else True) as bar,
    ):
        for _ in pool.map(make, todo):
            bar.update(1)
    return ThumbStats(made=len(todo), cached=len(jobs) - len(todo))


def _row_image(manifest: Manifest, row: int) -> Image.Image:
    return decode_image(manifest.image_bytes(row), where=manifest.image_location(row))


def _counterfactual(manifest: Manifest, job: ThumbJob) -> Image.Image:
    from fesaug.data.demo import counterfactual

    params = manifest.df["demo_params"].iat[job.row]
    return Image.fromarray(counterfactual(params, job.target))
