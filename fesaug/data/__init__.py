"""Data: the manifest format, image decoding, ingestion, the demo dataset."""

from .manifest import Manifest, read_manifest, write_manifest

__all__ = ["Manifest", "read_manifest", "write_manifest"]
