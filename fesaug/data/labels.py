"""One expression vocabulary for every dataset.

Datasets spell classes differently (``angry``/``anger``, ``happiness``/``happy``, JAFFE's ``AN``
codes, FER2013's integers). Everything is mapped onto the canonical names below, and class
indices are always positions in a manifest's own ``classes`` list, sorted like torchvision's
ImageFolder so that the same folder tree gives the same integers in both tools.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from fesaug.utils.errors import FesaugError

CANONICAL = ("anger", "contempt", "disgust", "fear", "happy", "neutral", "sadness", "surprise")

# The 7 classes of CK+ (with contempt, without neutral), the protocol FERSNet reports on.
CKPLUS_CLASSES = ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")

_ALIASES = {
    "anger": ("angry", "ang", "an", "mad"),
    "contempt": ("contemptuous", "con", "co"),
    "disgust": ("disgusted", "disgusting", "dis", "di"),
    "fear": ("afraid", "fearful", "scared", "fe"),
    "happy": ("happiness", "joy", "smile", "hap", "ha"),
    "neutral": ("neu", "ne", "calm"),
    "sadness": ("sad", "sa", "sorrow"),
    "surprise": ("surprised", "surp", "sur", "su"),
}
_LOOKUP = {name: name for name in CANONICAL}
_LOOKUP.update({alias: name for name, aliases in _ALIASES.items() for alias in aliases})

# FER2013's integer codes (Kaggle "Challenges in Representation Learning", 2013).
FER2013_CLASSES = ("anger", "disgust", "fear", "happy", "sadness", "surprise", "neutral")


def _key(name: str) -> str:
    return re.sub(r"[^a-z]", "", name.strip().lower())


def canonical_label(name: str) -> str | None:
    """The canonical name for ``name`` (case, digits and punctuation ignored), or None if unknown."""
    return _LOOKUP.get(_key(name))


def canonicalize(names: Iterable[str], *, where: str) -> dict[str, str]:
    """Map every raw class name to its canonical name; unknown names are one clear error."""
    names = list(names)
    mapping = {n: canonical_label(n) for n in names}
    unknown = sorted(n for n, c in mapping.items() if c is None)
    if unknown:
        raise FesaugError(
            f"unknown class name(s) {', '.join(map(repr, unknown))} in {where}; "
            f"known classes are {', '.join(CANONICAL)} (and common aliases such as angry, sad, surprised); "
            "rename the folders or drop them"
        )
    by_canonical: dict[str, list[str]] = {}
    for raw, canon in mapping.items():
        by_canonical.setdefault(canon, []).append(raw)
    clashes = {c: raws for c, raws in by_canonical.items() if len(raws) > 1}
    if clashes:
        c, raws = next(iter(sorted(clashes.items())))
        raise FesaugError(
            f"class names {', '.join(map(repr, sorted(raws)))} in {where} all mean {c!r}; merge those folders"
        )
    return mapping  # type: ignore[return-value]


def class_list(names: Iterable[str]) -> list[str]:
    """Canonical classes in the order used for integer labels (sorted, as torchvision's ImageFolder)."""
    return sorted(set(names))
