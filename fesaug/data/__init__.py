"""Data: the manifest format, image decoding, ingestion, datasets, export and the demo dataset."""

from typing import TYPE_CHECKING

from fesaug.data.manifest import Manifest, read_manifest, write_manifest
from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.data.datasets import ManifestDataset
    from fesaug.data.hf import to_hf_dataset
    from fesaug.data.samplers import WeightedDistributedSampler

__all__ = [
    "Manifest",
    "ManifestDataset",
    "WeightedDistributedSampler",
    "read_manifest",
    "to_hf_dataset",
    "write_manifest",
]
# ManifestDataset and the sampler need torch, to_hf_dataset the datasets package; importing them
# lazily keeps `fesaug ingest` and `audit` quick to start.
__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "ManifestDataset": "fesaug.data.datasets",
        "WeightedDistributedSampler": "fesaug.data.samplers",
        "to_hf_dataset": "fesaug.data.hf",
    },
)
