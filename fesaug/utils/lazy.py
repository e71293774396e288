"""Lazy package attributes (PEP 562), so ``fesaug --help`` and ``fesaug ingest`` start without
importing torch: a package names its public API and where each name lives, and the module that
defines a name is imported on first access."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``: ``exports`` maps each public name to the
    module (relative to ``package``, e.g. ``".run"``) that defines it."""

    def __getattr__(name: str) -> Any:
        if name in exports:
            # Looked up on every access, not cached here: the defining module stays the one place
            # that holds the name (so a test's monkeypatch of it is seen, and undone, everywhere).
            return getattr(importlib.import_module(exports[name], package), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__
