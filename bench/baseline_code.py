"""A module as an earlier commit had it, imported beside today's, so a benchmark can time "before"
and "after" in one process, one run apart by seconds rather than days.

On a shared machine the absolute speed moves by 2x between runs; only ratios measured side by side
mean anything. ``load_module_at("b0c1519", "fesaug/evaluate/downstream.py")`` reads the file from
git (``git show REF:PATH``) and imports it under its own name; it imports the rest of fesaug as
today's code has it, so it works as long as the helpers it uses still exist.
"""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path
from types import ModuleType

from record import REPO

# main before issue #36: the downstream training loop and FERSNet's training step as they were.
BEFORE_36 = "b0c1519"


def load_module_at(ref: str, path: str) -> ModuleType:
    """``path`` (relative to the repository root) at git commit ``ref``, imported as a fresh module."""
    try:
        source = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{ref}:{path}"], capture_output=True, text=True, check=True
        ).stdout
    except subprocess.CalledProcessError as exc:
        sys.exit(f"Error: cannot read {path} at {ref} ({exc.stderr.strip()}); pass a commit of this repository")
    name = f"baseline_{hashlib.sha1(f'{ref}:{path}'.encode()).hexdigest()[:10]}"
    if name in sys.modules:
        return sys.modules[name]
    file = Path(tempfile.mkdtemp(prefix="fesaug-baseline-")) / f"{name}.py"
    file.write_text(source)
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def commit_of(ref: str) -> str:
    """The full hash ``ref`` names, for the record."""
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
