"""Data: the manifest format, image decoding, ingestion, the demo dataset."""

from typing import Any

from .manifest import Manifest, read_manifest, write_manifest

__all__ = ["Manifest", "ManifestDataset", "read_manifest", "write_manifest"]


def __getattr__(name: str) -> Any:
    # ManifestDataset needs torch; importing it lazily keeps `fesaug ingest` and `audit` quick to start.
    if name == "ManifestDataset":
        from .datasets import ManifestDataset

        return ManifestDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
