"""Data: the manifest format, image decoding, ingestion, datasets, export and the demo dataset."""

from fesaug.data.manifest import Manifest, read_manifest, write_manifest
from fesaug.utils.lazy import lazy_exports

__all__ = ["Manifest", "ManifestDataset", "read_manifest", "write_manifest"]
# ManifestDataset needs torch; importing it lazily keeps `fesaug ingest` and `audit` quick to start.
__getattr__, __dir__ = lazy_exports(__name__, {"ManifestDataset": "fesaug.data.datasets"})
