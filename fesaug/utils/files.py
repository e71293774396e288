"""Atomic file writes (a reader never sees a half-written output, and an interrupted run leaves
the previous file, or nothing, in place) and the output folders the commands write them into."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fesaug.utils.errors import FesaugError
from fesaug.utils.killpoints import kill_point


def check_out_folder(out: Path, what: str) -> None:
    """Refuse an ``--out`` that names a file: the commands write folders (``what``: of what)."""
    if out.exists() and not out.is_dir():
        raise FesaugError(f"--out {out} is a file; give a folder {what}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file lives in the destination folder so the final ``os.replace`` is atomic
    (same file system).
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FesaugError(f"{path} already exists; pass --overwrite to replace it or choose another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        kill_point(f"write:{path.name}")
        os.replace(tmp_path, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


def remove_stale_temporaries(folder: str | os.PathLike, name: str | None = None) -> list[Path]:
    """Remove what interrupted writes left in ``folder``: the temporary files of
    :func:`atomic_path` and the staging folders built beside an output (``.NAME.*.tmp``), and an
    earlier output set aside while it was being replaced (``.NAME.*.old``). ``name``: only those
    of the output ``NAME``; None: of every output in ``folder``. Returns what was removed.

    Only call it while holding the output's lock (:mod:`fesaug.utils.locking`): then no running write
    owns them, so they are stale."""
    folder = Path(folder)
    stem = "*" if name is None else glob.escape(name)
    removed = [p for pattern in (f".{stem}.*.tmp", f".{stem}.*.old") for p in folder.glob(pattern)]
    for p in removed:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, overwrite: bool = True) -> Path:
    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, *, overwrite: bool = True) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite=overwrite)


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's content, read in chunks (checkpoints and manifests can be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
