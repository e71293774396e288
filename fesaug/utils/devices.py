"""The device a command or a loaded model runs on: one rule for every one of them."""

from __future__ import annotations

import torch

from fesaug.utils.errors import FesaugError


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``None`` or ``"auto"``: CUDA when torch sees a CUDA device, else the CPU. A CUDA device
    torch does not see is refused here, with the fix, rather than by torch at the first tensor
    moved; any other name (``"cpu"``, ``"cuda:1"``) is taken as torch spells it."""
    if name is None or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(name).startswith("cuda") and not torch.cuda.is_available():
        raise FesaugError(f"device is {name} but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)
