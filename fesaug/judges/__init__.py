"""Judges: models trained *elsewhere* that score synthetic faces, so that no judgement of a
generator comes from a model trained on the same data (or with the generator itself).

* ``identity``: dlib's face-recognition ResNet on 5-point aligned faces (CC0; needs
  ``fesaug[judges]``). Column ``identity_distance``: the distance to the parent, under 0.6 the
  same person.
* ``fer2013``: mini-Xception trained on FER2013 (MIT), converted into fesaug (nothing to
  install). Column ``external_confidence``: the probability of the target.
* ``perceptual``: shift-tolerant LPIPS, AlexNet (BSD-2; needs ``fesaug[judges]``). Column
  ``perceptual_distance``: the distance to the parent.

Each is a :class:`Judge`: ``score(images, targets, parents)`` → one float per face, NaN where it
cannot judge (a class it does not know, a face it cannot align). :func:`judge_synthesis` scores a
set of synthetic faces per target class next to real-face yardsticks, for the synthesis report.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from fesaug.judges.base import Judge, as_gray_uint8, as_rgb_uint8
from fesaug.utils.dlib_models import EXTRA
from fesaug.utils.errors import FesaugError, UsageError

JUDGES = ("identity", "fer2013", "perceptual")
_PACKAGES = {
    "identity": ("dlib", "face_recognition_models"),
    "fer2013": ("safetensors",),
    "perceptual": ("stlpips_pytorch",),
}


def installed(name: str) -> bool:
    """Whether the packages judge ``name`` needs are importable (nothing is imported)."""
    return all(importlib.util.find_spec(p) is not None for p in _PACKAGES[name])


def resolve_judges(spec: str | Sequence[str] | None) -> tuple[str, ...]:
    """``None``/``"auto"``: every judge whose packages are installed; ``"none"``: no judge; else
    the names given (comma-separated or a sequence), each of which must be installed."""
    if spec is None or spec == "auto":
        return tuple(j for j in JUDGES if installed(j))
    names = [n.strip().lower() for n in (spec.split(",") if isinstance(spec, str) else spec) if n.strip()]
    if names == ["none"]:
        return ()
    unknown = [n for n in names if n not in JUDGES]
    if unknown:
        raise UsageError(f"unknown judge {unknown[0]!r}; choose from {', '.join(JUDGES)}, or auto / none")
    missing = [n for n in names if not installed(n)]
    if missing:
        raise FesaugError(
            f"the {missing[0]} judge needs {', '.join(_PACKAGES[missing[0]])}, which is not installed: "
            f"pip install 'fesaug[{EXTRA}]'"
        )
    return tuple(dict.fromkeys(names))


def load_judge(name: str, device: str = "cpu") -> Judge:
    """The judge called ``name`` (see the module docstring), ready to score."""
    resolve_judges([name])
    if name == "identity":
        from fesaug.judges.identity import IdentityJudge

        return IdentityJudge()
    if name == "fer2013":
        from fesaug.judges.expression import ExpressionJudge

        return ExpressionJudge(device)
    from fesaug.judges.perceptual import PerceptualJudge

    return PerceptualJudge(device=device)


from fesaug.judges.report import judge_synthesis  # noqa: E402 - report uses load_judge above

__all__ = [
    "EXTRA",
    "JUDGES",
    "Judge",
    "as_gray_uint8",
    "as_rgb_uint8",
    "installed",
    "judge_synthesis",
    "load_judge",
    "resolve_judges",
]
