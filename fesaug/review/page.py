"""``fesaug review``: write the review page of a balanced dataset into a folder::

    OUT/index.html          open it in a browser (from the file system; no server, no network)
    OUT/review-*.js, *.css  the page's script and style
    OUT/data/*.js           the rows, in chunks
    OUT/thumbs/<size>/...   thumbnails, made once and reused by later runs
    OUT/review.json         what the folder holds and how it was made

A folder is reused: a second run (after ``fesaug balance --reject``, or on another manifest)
makes only the thumbnails it lacks and replaces the page. A folder holding anything else is
refused, and the folder is locked while a run writes it.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from fesaug.review.data import load
from fesaug.review.html import asset_files, data_files, index_html, page_meta
from fesaug.review.thumbs import make_thumbnails, remove_stale
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import atomic_write_text, check_out_folder, remove_stale_temporaries
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance

SCHEMA_VERSION = 1
MARKER = "review.json"
OWN = ("index.html", MARKER, "data", "thumbs")  # and review-*.js / review-*.css


@dataclass
class ReviewResult:
    """What a run wrote and how long each step took (seconds)."""

    out_dir: Path
    index: Path
    synthetic: int
    real: int
    thumbnails_made: int
    thumbnails_cached: int
    seconds: dict[str, float] = field(default_factory=dict)


def write_review(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    thumb_size: int = 96,
    workers: int | None = None,
    progress: bool = False,
) -> ReviewResult:
    """Write the review page of ``source`` (a folder from ``fesaug balance`` or a manifest with
    synthetic rows) into ``out_dir``; see the module docstring. ``thumb_size``: the longest
    side of a thumbnail in pixels (smaller images are kept as they are)."""
    if not 16 <= thumb_size <= 512:
        raise UsageError(f"--thumb-size must be between 16 and 512 pixels, got {thumb_size}")
    out = Path(out_dir)
    check_out_folder(out, "for the review page")
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    with output_lock(out):
        _claim(out, source)
        data = load(source, thumb_size)
        seconds["page_data"] = time.perf_counter() - start
        t = time.perf_counter()
        stats = make_thumbnails(data.manifest, out, data.jobs, thumb_size, workers=workers, progress=progress)
        seconds["thumbnails"] = time.perf_counter() - t
        t = time.perf_counter()
        made = provenance("review", {"source": str(source), "thumb_size": thumb_size})
        assets = asset_files()
        files = {**data_files(data, page_meta(data)), **assets}
        for name, text in files.items():
            if not (out / name).exists():  # names carry their content's digest
                atomic_write_text(out / name, text)
        stylesheet = next(n for n in assets if n.endswith(".css"))
        scripts = [n for n in files if n.startswith("data/")] + [n for n in assets if n.endswith(".js")]
        atomic_write_text(out / "index.html", index_html(data, scripts, stylesheet, made))
        _remove_old_files(out, set(files))
        seconds["page_files"] = time.perf_counter() - t
        seconds["total"] = time.perf_counter() - start
        result = ReviewResult(
            out, out / "index.html", len(data.synthetic), len(data.real), stats.made, stats.cached, seconds
        )
        record = {
            "schema_version": SCHEMA_VERSION,
            "manifest": str(data.manifest.path),
            "manifest_sha256": data.manifest_sha256,
            "thumb_size": thumb_size,
            "synthetic": result.synthetic,
            "real": result.real,
            "thumbnails": len(data.jobs),
            "seconds": {k: round(v, 3) for k, v in seconds.items()},
            "provenance": made,
        }
        atomic_write_text(out / MARKER, json.dumps(record, indent=2) + "\n")
    return result


def _claim(out: Path, source: str | os.PathLike) -> None:
    """Make ``out`` a review folder, or check that it is one (then clear what an interrupted
    run left: we hold the lock)."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise FesaugError(
                f"{out} holds files fesaug review did not write; choose an empty or new --out for the review page"
            )
        for folder in (out, out / "data"):
            if folder.is_dir():
                remove_stale_temporaries(folder)
        for size in (out / "thumbs").glob("*"):
            if size.name.isdigit():
                remove_stale(out, int(size.name))
        return
    out.mkdir(parents=True, exist_ok=True)
    # Written first, so that a run interrupted before the page is finished leaves a folder the
    # next run recognises as its own.
    atomic_write_text(out / MARKER, json.dumps({"schema_version": SCHEMA_VERSION, "source": str(source)}) + "\n")


def _remove_old_files(out: Path, keep: set[str]) -> None:
    """Remove the data, script and style files of earlier pages (their names differ)."""
    old = [*out.glob("review-*.js"), *out.glob("review-*.css"), *(out / "data").glob("*.js")]
    for path in old:
        if path.relative_to(out).as_posix() not in keep:
            path.unlink(missing_ok=True)
