"""fesaug: balance facial-expression datasets by synthesis (FERSNet, Zhao et al., ICPR 2020).

The pipeline's stages are subpackages: :mod:`fesaug.data` (manifests, ingest, datasets, export,
the demo set), :mod:`fesaug.models`, :mod:`fesaug.synthesis` (FERSNet training and the trained
generator), :mod:`fesaug.multitask` (emotion + AU), :mod:`fesaug.balance`, :mod:`fesaug.evaluate`,
:mod:`fesaug.judges` and :mod:`fesaug.audit`; :mod:`fesaug.utils` holds the shared plumbing. The
names below are the ones a user's code needs most, importable from the top.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fesaug.utils.lazy import lazy_exports

# Static twins of the lazy names, for type checkers and the API reference (griffe reads source,
# not the runtime); never executed.
if TYPE_CHECKING:
    from fesaug.balance.config import BalanceConfig
    from fesaug.balance.sampler import FESampler
    from fesaug.data.datasets import ManifestDataset
    from fesaug.data.hf import to_hf_dataset
    from fesaug.data.manifest import read_manifest
    from fesaug.data.samplers import WeightedDistributedSampler
    from fesaug.evaluate.retune import refit_last_layer
    from fesaug.synthesis.generator import Generator, load_generator
    from fesaug.utils.errors import FesaugError

__version__ = "0.1.0"

# The package stays import-light (`fesaug --help` must not import torch): each name is imported
# from its stage on first use.
_EXPORTS = {
    "load_generator": "fesaug.synthesis.generator",
    "Generator": "fesaug.synthesis.generator",
    "BalanceConfig": "fesaug.balance.config",
    "FESampler": "fesaug.balance.sampler",
    "ManifestDataset": "fesaug.data.datasets",
    "WeightedDistributedSampler": "fesaug.data.samplers",
    "to_hf_dataset": "fesaug.data.hf",
    "read_manifest": "fesaug.data.manifest",
    "refit_last_layer": "fesaug.evaluate.retune",
    "FesaugError": "fesaug.utils.errors",
}
# Spelled out (not built from _EXPORTS) so that linters and griffe, which read the source, see it.
__all__ = [
    "BalanceConfig",
    "FESampler",
    "FesaugError",
    "Generator",
    "ManifestDataset",
    "WeightedDistributedSampler",
    "__version__",
    "load_generator",
    "read_manifest",
    "refit_last_layer",
    "to_hf_dataset",
]
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
