"""Face cropping for ``fesaug ingest --detect-faces``: OpenCV's bundled Haar cascade.

The Haar cascade is old but ships inside ``opencv-python-headless`` (no model download, no GPU),
and FER datasets are frontal faces, which is what it was trained on.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image

from fesaug.data.images import BadImage
from fesaug.utils.errors import FesaugError

CASCADE_FILE = "haarcascade_frontalface_default.xml"
# Extra context around the detected box, as a fraction of its side: Haar boxes cut through the
# forehead and chin, which carry expression cues (brows, jaw drop).
DEFAULT_MARGIN = 0.15

Box = tuple[int, int, int, int]  # left, top, right, bottom (PIL crop order)


@functools.lru_cache(maxsize=1)
def _cascade():
    try:
        import cv2
    except ImportError as exc:
        raise FesaugError(
            f"--detect-faces needs OpenCV, which failed to import ({exc}); install 'opencv-python-headless>=4.8,<5'"
        ) from None
    if not hasattr(cv2, "CascadeClassifier") or not hasattr(cv2, "data"):
        raise FesaugError(
            f"--detect-faces needs OpenCV's Haar cascades, which OpenCV {cv2.__version__} no longer has; "
            "install 'opencv-python-headless>=4.8,<5'"
        )
    path = cv2.data.haarcascades + CASCADE_FILE
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise FesaugError(f"cannot load the face detector {path}; reinstall 'opencv-python-headless>=4.8,<5'")
    return cascade


def detect_face(img: Image.Image, *, where: str, margin: float = DEFAULT_MARGIN) -> Box:
    """The square crop box around the largest face in ``img`` (grayscale), grown by ``margin`` and
    kept inside the image; no face raises :class:`BadImage`."""
    cascade = _cascade()
    import cv2  # importable: _cascade() checked it

    gray = cv2.equalizeHist(np.asarray(img.convert("L")))
    faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(faces) == 0:
        raise BadImage(where, "no face found")
    x, y, w, h = (int(v) for v in max(faces, key=lambda f: int(f[2]) * int(f[3])))
    width, height = img.size
    side = min(round(max(w, h) * (1 + 2 * margin)), width, height)
    # Centre the grown square on the face, then slide it back inside the image.
    left = min(max(round(x + w / 2 - side / 2), 0), width - side)
    top = min(max(round(y + h / 2 - side / 2), 0), height - side)
    return left, top, left + side, top + side


def crop_face(img: Image.Image, *, where: str, margin: float = DEFAULT_MARGIN) -> Image.Image:
    """``img`` cropped to :func:`detect_face`'s box."""
    return img.crop(detect_face(img, where=where, margin=margin))
