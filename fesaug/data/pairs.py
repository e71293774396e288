"""Same-subject pairs as supervision: a subject's real image of the target expression, moved onto
the source image first.

Two photos of one person differ in pose, scale and lighting as well as in expression, so an L1
loss between a synthesized face and the raw partner image mostly teaches the generator to
reproduce the pose and lighting difference (on the demo set, where the exact counterfactual is
known, the raw partner is 34.6 gray levels from it where the expression changes, against 38.6
for the source copied). :func:`align_pair` removes what is not expression: an affine
registration of the partner onto the source (OpenCV's ECC, which maximises the correlation of
the two images), then a gain and offset fitted on the pixels that differ least, where the
expression presumably did not change.
"""

from __future__ import annotations

import cv2
import numpy as np

# ECC stops after this many iterations or when the warp moves less than EPS.
ITERATIONS, EPS = 100, 1e-5
# Share of pixels, the least changed, on which the brightness and contrast are fitted.
UNCHANGED = 0.6


def align_pair(source: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """``partner`` (``H×W`` uint8, the same subject with another expression) registered onto
    ``source`` by an affine warp, with its brightness and contrast matched; uint8 ``H×W``.

    When ECC does not converge (very different images) the partner is only brightness-matched.
    """
    s, t = source.astype(np.float32), partner.astype(np.float32)
    h, w = s.shape
    warp = np.eye(2, 3, dtype=np.float32)
    try:
        _, warp = cv2.findTransformECC(s, t, warp, cv2.MOTION_AFFINE,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ITERATIONS, EPS), None, 5)
        moved = cv2.warpAffine(t, warp, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP,
                               borderMode=cv2.BORDER_REPLICATE)
    except cv2.error:
        moved = t
    diff = np.abs(moved - s)
    keep = diff <= np.quantile(diff, UNCHANGED)
    gain, offset = np.polyfit(moved[keep], s[keep], 1) if keep.sum() > 2 and np.ptp(moved[keep]) > 0 else (1.0, 0.0)
    return np.clip(np.rint(gain * moved + offset), 0, 255).astype(np.uint8)
