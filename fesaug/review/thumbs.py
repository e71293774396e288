"""Thumbnails of the review page, made once: each is a PNG named by what it shows (the image's
sha256, or a digest of a demo counterfactual's recipe), written atomically, so a file that
exists is complete and a second run, or one resumed after an interruption, makes only the
missing ones. Images no larger than the thumbnail side keep their size (the page scales them):
a PNG that holds the image as the manifest reads it is copied byte for byte, other images are
decoded at the manifest's channels (gray or RGB) and written as PNGs, as fesaug reads them."""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from fesaug.data.images import decode_image, encode_png, stored_as_decoded
from fesaug.data.manifest import Manifest
from fesaug.review.data import ThumbJob, thumb_path
from fesaug.utils.files import atomic_write_bytes, remove_stale_temporaries

# Fewer counterfactuals than this are drawn in this process: starting workers would cost more.
PROCESS_MIN_JOBS = 64


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

    ``workers``: default the CPU count, at most 8. Image thumbnails are made by that many
    threads (decoding and zlib release the GIL); demo counterfactuals, drawn in Python, by that
    many processes when there are enough of them to pay for the start. A bad image raises
    :class:`fesaug.data.images.BadImage` naming it."""
    todo = missing(out, jobs, size)
    workers = workers or min(8, os.cpu_count() or 1)
    drawn = [j for j in todo if j.target is not None]
    read = [j for j in todo if j.target is None]
    with tqdm(total=len(todo), unit="thumb", desc="thumbnails", disable=None if progress else True) as bar:
        if drawn:
            params = manifest.df["demo_params"].tolist()
            tasks = [(params[j.row], j.target, size) for j in drawn]
            # Before any thread starts: forking a process with threads running is unsafe.
            if workers > 1 and len(drawn) >= PROCESS_MIN_JOBS:
                context = multiprocessing.get_context(
                    "fork" if "fork" in multiprocessing.get_all_start_methods() else None
                )
                with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
                    pngs = pool.map(_counterfactual_png, *zip(*tasks), chunksize=16)
                    for job, png in zip(drawn, pngs):
                        atomic_write_bytes(out / thumb_path(job.key, size), png)
                        bar.update(1)
            else:
                for job, task in zip(drawn, tasks):
                    atomic_write_bytes(out / thumb_path(job.key, size), _counterfactual_png(*task))
                    bar.update(1)

        widths, heights = manifest.df["width"].tolist(), manifest.df["height"].tolist()

        def make(job: ThumbJob) -> None:
            data = manifest.image_bytes(job.row)
            if not (stored_as_decoded(data, manifest.channels) and max(widths[job.row], heights[job.row]) <= size):
                # A small PNG is its own thumbnail; the rest are decoded and, when larger, shrunk.
                img = decode_image(data, where=manifest.image_location(job.row), channels=manifest.channels)
                data = encode_png(_fit(img, size))
            atomic_write_bytes(out / thumb_path(job.key, size), data)

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fesaug-thumb") as threads:
            for _ in threads.map(make, read):
                bar.update(1)
    return ThumbStats(made=len(todo), cached=len(jobs) - len(todo))


def _fit(img: Image.Image, size: int) -> Image.Image:
    if max(img.size) > size:
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return img


def _counterfactual_png(params: str, target: str, size: int) -> bytes:
    """The demo counterfactual of a row's ``demo_params`` showing ``target``, as a thumbnail PNG
    (a top-level function: process pools pickle it by name)."""
    from fesaug.data.demo import counterfactual

    return encode_png(_fit(Image.fromarray(counterfactual(params, target)), size))
