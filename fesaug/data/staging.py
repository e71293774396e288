"""The folder of images ``fesaug ingest`` produces (resized, cropped, aligned faces, CSV rows),
staged beside the manifest and published with it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from fesaug.utils.files import atomic_write_bytes


class StagedImageFolder:
    """Produced images: written into a hidden folder beside the manifest, renamed into place by
    :meth:`publish` just before the manifest is written, and rolled back if that write fails, so
    no run leaves a half-written folder or a folder without its manifest."""

    def __init__(self, final: Path | None):
        self.final = final
        self.staging: Path | None = None
        self.backup: Path | None = None
        self.published = False

    def __enter__(self) -> StagedImageFolder:
        return self

    def write(self, rel: str, data: bytes) -> str:
        """Store ``data`` at ``rel`` inside the folder; returns its path relative to the manifest."""
        if self.staging is None:  # created on first use: a run that fails early leaves no trace
            self.final.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", suffix=".tmp", dir=self.final.parent))
        dest = self.staging / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(dest, data)
        return f"{self.final.name}/{rel}"

    def publish(self) -> None:
        if self.final is None:
            return
        if self.final.exists():  # an earlier run's folder; _check_outputs allowed it (--overwrite)
            self.backup = self.staging.with_suffix(".old")
            os.replace(self.final, self.backup)
        os.replace(self.staging, self.final)
        self.published = True

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.final is None:
            return
        if exc_type is not None and self.published:
            shutil.rmtree(self.final, ignore_errors=True)
            if self.backup is not None:
                os.replace(self.backup, self.final)
        elif self.backup is not None:
            shutil.rmtree(self.backup, ignore_errors=True)
        if self.staging is not None and self.staging.exists():
            shutil.rmtree(self.staging, ignore_errors=True)
