"""fesaug: balance facial-expression datasets by synthesis (FERSNet, Zhao et al., ICPR 2020)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .generator import load_generator

__all__ = ["__version__", "load_generator"]


def __getattr__(name: str) -> Any:
    # The package stays import-light (`fesaug --help` must not import torch); the
    # inference API is imported on first use.
    if name == "load_generator":
        from .generator import load_generator

        return load_generator
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
