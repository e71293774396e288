"""Landmark-based face alignment for ``fesaug ingest --align``: level eyes at fixed positions.

FER pipelines align faces before training so that a classifier sees expressions, not head
tilts and framing. Here, as in most of them: dlib's frontal face detector finds the face, dlib's
5-point landmark model finds the two corners of each eye (and the base of the nose), and one
similarity transform (rotation, uniform scale, translation) puts the two eye centres at
:data:`LEFT_EYE` and :data:`RIGHT_EYE` of the output square. The crop is then a tight face like
CK+48's: those positions are where dlib finds the eyes on CK+48 itself.

The face box. dlib's detector finds all 981 CK+48 faces, also when they are turned by up to 30
degrees, where OpenCV's Haar cascade (``--detect-faces``) finds 6 of 99 at 20 degrees, so the
cascade is not used here. The detector was trained on faces with some context around them, and
tight, turned or blurred crops sometimes defeat it (15 % of the demo faces turned by up to 25
degrees, half of the low-resolution ``shifted`` demo faces): when it finds nothing in a roughly
square image (sides within :data:`TIGHT_CROP_ASPECT`), the whole image is taken as the face box,
as fesaug's identity judge does for its crops; the face is then re-framed the way the detector
frames faces (:data:`BOX_SHAPE`) and its landmarks found again, and it is kept only if all five
fall inside the image. Each row records which box was used (``align_box``) and the manifest
footer counts them. The landmark model always returns a face-shaped set of points, so that
fallback cannot tell a face from a square non-face with some contrast; a blank image, or a
non-square one without a detection, is "no face found".
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from fesaug.data.images import BadImage
from fesaug.utils.dlib_models import LANDMARKS_5, MIN_CONTRAST, MODEL_SHA256, face_detector, landmark_model, require

# Eye centres in the output, as fractions of its side (x right, y down; "left" is the eye on the
# image's left). Measured with this module's locate() on all 981 CK+48 images (every face found by
# the detector; bench/align_demo.py --ckplus): mean eye centres left (0.3169, 0.4137), right
# (0.6824, 0.4085), 0.3655 of the side apart, centred at x 0.4996. Made level (the 0.8 degree mean
# tilt is head roll, which alignment removes) and centred, they keep CK+48's scale and framing: an
# aligned face at --size 48 is a CK+48-like crop, and an aligned CK+48 image stays close to itself.
LEFT_EYE = (0.3172, 0.4111)
RIGHT_EYE = (0.6828, 0.4111)
# Below this eye distance (in the source image's pixels) a pixel of landmark error tilts the eye
# line by up to 6 degrees, and the crop would be upscaled from a face of a few dozen pixels.
# CK+48's faces (48x48) have their eyes 14.8 to 21 px apart (mean 17.6).
MIN_EYE_DISTANCE = 10.0
# dlib's detector scans an 80x80 window; small images are upscaled to this side first (CK+48:
# 48 -> 240), and searched again at twice that scale if nothing is found and the image is not large.
DETECT_MIN_SIDE = 240
UPSAMPLE_MAX_SIDE = 1024
# A tight face crop is about square; a wider or taller image without a detected face is not one.
TIGHT_CROP_ASPECT = 1.25
# dlib's five points as its detector frames a face: their mean positions in the detector's box, as
# fractions of its side, over the 981 CK+48 faces (bench/align_demo.py --ckplus). The landmark
# model was trained on such boxes; the whole image frames a face differently (a demo face includes
# hair and neck), so the fallback re-frames the face the detector's way from its first landmarks
# and runs the model again. On demo faces turned by up to 25 degrees this brings the mean error of
# the tilt from the whole-image box's 1.8 degrees to 1.0 after one pass and 0.9 after two (the
# detector's box: 0.7); bench/results/align_demo.md.
BOX_SHAPE = ((0.773, 0.263), (0.598, 0.268), (0.170, 0.271), (0.345, 0.272), (0.475, 0.569))
REFRAMES = 2

DETECTOR, WHOLE_IMAGE = "detector", "whole-image"  # the face box a row was aligned from
WHAT = "--align"  # who needs dlib, in the missing-extra error

__all__ = [
    "DETECTOR",
    "LEFT_EYE",
    "MIN_EYE_DISTANCE",
    "RIGHT_EYE",
    "WHOLE_IMAGE",
    "FaceAligner",
    "Landmarks",
    "warp_to_eyes",
]


@dataclass(frozen=True)
class Landmarks:
    """dlib's five points of one face, in the source image's pixel coordinates (pixel centres at
    integers): the image-right eye's outer and inner corner, the image-left eye's outer and inner
    corner, the base of the nose. ``box`` is :data:`DETECTOR` or :data:`WHOLE_IMAGE`."""

    points: np.ndarray  # (5, 2) float, x right, y down
    box: str

    @property
    def left_eye(self) -> np.ndarray:
        """Centre of the eye on the image's left (the subject's right eye)."""
        return self.points[2:4].mean(axis=0)

    @property
    def right_eye(self) -> np.ndarray:
        return self.points[0:2].mean(axis=0)

    @property
    def eye_distance(self) -> float:
        return float(np.linalg.norm(self.right_eye - self.left_eye))

    @property
    def angle(self) -> float:
        """Tilt of the eye line in degrees, counter-clockwise as displayed (PIL's ``rotate(15)``
        of a level face gives +15); alignment rotates by its negative."""
        dx, dy = self.right_eye - self.left_eye
        return math.degrees(math.atan2(-dy, dx))


class FaceAligner:
    """Finds faces and aligns them (see the module docstring); counts the boxes it used.

    Creating one loads dlib and checks the landmark model's sha256; without the ``judges`` extra
    that is one :class:`~fesaug.utils.errors.FesaugError` naming it. ``use_detector=False`` takes every
    image as a tight crop (the whole-image box, re-framed ``reframes`` times), which is how
    bench/align_demo.py measures that fallback on faces the detector would find.
    """

    def __init__(
        self, *, min_eye_distance: float = MIN_EYE_DISTANCE, use_detector: bool = True, reframes: int = REFRAMES
    ) -> None:
        self._dlib = require("dlib", WHAT)
        self._detector = face_detector(WHAT) if use_detector else None
        self._landmarks = landmark_model(WHAT)
        self.min_eye_distance = float(min_eye_distance)
        self.reframes = int(reframes)
        self.counts: Counter[str] = Counter()  # DETECTOR, WHOLE_IMAGE, and "failed"

    def locate(self, img: Image.Image, *, where: str) -> Landmarks:
        """The landmarks of the largest face in ``img``; no usable face raises :class:`BadImage`.
        dlib sees a colour image in colour (its detector and landmark model take RGB)."""
        gray = np.asarray(img.convert("L"))
        pixels = np.asarray(img) if img.mode == "RGB" else gray
        h, w = gray.shape
        if float(gray.std()) < MIN_CONTRAST:
            raise BadImage(where, "no face found (the image is blank)")
        import cv2  # a core dependency; imported here like the Haar detector's, for start-up time

        factor = max(1.0, DETECT_MIN_SIDE / min(h, w))
        work = (
            pixels
            if factor == 1.0
            else cv2.resize(pixels, (round(w * factor), round(h * factor)), interpolation=cv2.INTER_CUBIC)
        )
        boxes = list(self._detector(work, 0)) if self._detector is not None else []
        if not boxes and self._detector is not None and max(work.shape[:2]) <= UPSAMPLE_MAX_SIDE:
            boxes = list(self._detector(work, 1))
        if boxes:
            box, kind = max(boxes, key=lambda r: r.area()), DETECTOR
        elif max(h, w) <= TIGHT_CROP_ASPECT * min(h, w):
            box, kind = self._dlib.rectangle(0, 0, work.shape[1] - 1, work.shape[0] - 1), WHOLE_IMAGE
        else:
            raise BadImage(
                where, "no face found (dlib's face detector found none, and the image is not a square face crop)"
            )
        points = self._points(work, box)
        if kind == WHOLE_IMAGE:
            for _ in range(self.reframes):
                box = self._detector_box(points)
                if box is None:
                    break
                points = self._points(work, box)
        # Work-image pixel centres back to source pixel coordinates.
        scale = np.array([work.shape[1] / w, work.shape[0] / h])
        points = (points + 0.5) / scale - 0.5
        found = Landmarks(points, kind)
        must_be_inside = points if kind == WHOLE_IMAGE else np.stack([found.left_eye, found.right_eye])
        if not (
            (must_be_inside >= -0.5).all()
            and (must_be_inside[:, 0] <= w - 0.5).all()
            and (must_be_inside[:, 1] <= h - 0.5).all()
        ):
            raise BadImage(where, "no face found (its landmarks fall outside the image)")
        if found.eye_distance < self.min_eye_distance:
            raise BadImage(
                where,
                f"face too small to align (eyes {found.eye_distance:.1f} px apart, at least "
                f"{self.min_eye_distance:g} needed)",
            )
        return found

    def _points(self, work: np.ndarray, box: Any) -> np.ndarray:
        return np.array([(p.x, p.y) for p in self._landmarks(work, box).parts()], dtype=np.float64)

    def _detector_box(self, points: np.ndarray) -> Any:
        """The square box dlib's detector would put around a face with these landmarks
        (:data:`BOX_SHAPE`); None if they fit no such face (all five points nearly on one spot)."""
        import cv2

        matrix, _ = cv2.estimateAffinePartial2D(np.array(BOX_SHAPE, dtype=np.float32) - 0.5, points.astype(np.float32))
        if matrix is None:
            return None
        side = math.hypot(matrix[0, 0], matrix[1, 0])
        cx, cy = matrix[:, 2] + 0.5  # where the box's centre (0, 0 after the shift above) lands, pixel edges
        left, top = round(cx - side / 2), round(cy - side / 2)
        return self._dlib.rectangle(left, top, left + round(side) - 1, top + round(side) - 1)

    def align(self, img: Image.Image, *, where: str, size: int | None = None) -> tuple[Image.Image, Landmarks]:
        """``img``'s face, eyes level at :data:`LEFT_EYE`/:data:`RIGHT_EYE`, as a ``size`` x ``size``
        image (``RGB`` for an ``RGB`` image, else gray); ``size`` None keeps the face's own scale
        (the eye distance is unchanged)."""
        try:
            found = self.locate(img, where=where)
        except BadImage:
            self.counts["failed"] += 1
            raise
        side = size if size is not None else max(1, round(found.eye_distance / (RIGHT_EYE[0] - LEFT_EYE[0])))
        self.counts[found.box] += 1
        pixels = np.asarray(img) if img.mode == "RGB" else np.asarray(img.convert("L"))
        return Image.fromarray(warp_to_eyes(pixels, found, side)), found

    def settings(self, size: int | None) -> dict:
        """How faces were aligned and how many, for the manifest footer."""
        return {
            "method": "similarity transform (rotation, uniform scale, translation) putting the eye centres "
            "(means of dlib's 5-point eye corners) at fixed positions; OpenCV estimateAffinePartial2D, "
            "warpAffine (bicubic, border replicated; area-averaged first when shrinking)",
            "detector": "dlib frontal face detector (HOG), largest face; images upscaled to at least "
            "{DETECT_MIN_SIDE} px",
            "fallback": f"whole image as the face box when no face is detected in an image with sides within "
            f"{TIGHT_CROP_ASPECT}x of each other, re-framed {self.reframes} times as the detector frames "
            "faces (box_shape), kept when all landmarks fall inside the image",
            "box_shape": [list(p) for p in BOX_SHAPE],
            "landmarks": {"model": LANDMARKS_5, "sha256": MODEL_SHA256[LANDMARKS_5]},
            "dlib": getattr(self._dlib, "__version__", None),
            "eyes": {
                "left": list(LEFT_EYE),
                "right": list(RIGHT_EYE),
                "units": "fractions of the output side, x right, y down",
            },
            "size": size,
            "min_eye_distance": self.min_eye_distance,
            "counts": {
                DETECTOR: self.counts[DETECTOR],
                WHOLE_IMAGE: self.counts[WHOLE_IMAGE],
                "skipped": self.counts["failed"],
            },
        }


def warp_to_eyes(gray: np.ndarray, landmarks: Landmarks, size: int) -> np.ndarray:
    """``gray`` (``H x W`` uint8, or ``H x W x 3`` colour) warped so that the eye centres land on
    :data:`LEFT_EYE` and :data:`RIGHT_EYE` of a ``size`` x ``size`` output."""
    import cv2

    src = np.stack([landmarks.left_eye, landmarks.right_eye])
    # Fractions of the side to pixel-centre coordinates, the convention of dlib's points and of warpAffine.
    dst = np.array([LEFT_EYE, RIGHT_EYE]) * size - 0.5
    scale = size * (RIGHT_EYE[0] - LEFT_EYE[0]) / landmarks.eye_distance
    if scale < 1.0:
        # warpAffine samples, it does not average: shrinking a large photo straight to 48 px would alias.
        h, w = gray.shape[:2]
        small = cv2.resize(gray, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        src = (src + 0.5) * np.array([small.shape[1] / w, small.shape[0] / h]) - 0.5
        gray = small
    # Two point pairs fix a similarity exactly, so this is a direct solve, not a fit.
    matrix, _ = cv2.estimateAffinePartial2D(src.astype(np.float32), dst.astype(np.float32))
    return cv2.warpAffine(
        np.ascontiguousarray(gray), matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE
    )
