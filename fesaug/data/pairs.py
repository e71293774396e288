"""Same-subject pairs as supervision: a subject's real image of the target expression, moved onto
the source image first.

Two photos of one person differ in pose, scale and lighting as well as in expression, so an L1
loss between a synthesized face and the raw partner image mostly teaches the generator to
reproduce the pose and lighting difference (on the demo set, where the exact counterfactual is
known, the raw partner is 34.6 gray levels from it where the expression changes, against 38.6
for the source copied). :func:`align_pair` removes what is not expression: an affine
registration of the partner onto the source (OpenCV's ECC, which maximises the correlation of
the two images), then the source's lighting (a gain and an offset that may vary linearly across
the face, as a light from one side does) fitted on the pixels that differ least, where the
expression presumably did not change. :func:`keep_unchanged` then optionally keeps the source's
own pixels wherever the registered partner barely differs from it.

:func:`pair_flow` turns a registered pair into geometry: the dense displacement that moves the
source's own pixels onto the partner's expression (brows up, lip corners out), with a weight per
pixel for how well that displacement explains the partner there. A pixel L1 loss toward the
partner averages the expression away (a half-raised brow is a smaller error than a brow raised in
the wrong place); a displacement target says how far each feature moves.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from scipy import ndimage

# ECC stops after this many iterations or when the warp moves less than EPS.
ITERATIONS, EPS = 100, 1e-5
# Share of pixels, the least changed, on which the lighting is fitted.
UNCHANGED = 0.6


def align_pair(source: np.ndarray, partner: np.ndarray) -> np.ndarray:
    """``partner`` (``H×W`` uint8, the same subject with another expression) registered onto
    ``source`` by an affine warp, with its lighting matched; uint8 ``H×W``. Colour faces are
    ``C×H×W``: registered on their gray (luma), each channel then warped and relit on its own.

    When ECC does not converge (very different images) the partner is only relit.
    """
    s, t = source.astype(np.float32), partner.astype(np.float32)
    if s.ndim == 3:
        warp = _register(_luma(s), _luma(t))
        moved = [t[c] if warp is None else _warp(t[c], warp) for c in range(len(t))]
        return np.stack([np.clip(np.rint(_relight(m, r)), 0, 255).astype(np.uint8) for m, r in zip(moved, s)])
    warp = _register(s, t)
    moved = t if warp is None else _warp(t, warp)
    return np.clip(np.rint(_relight(moved, s)), 0, 255).astype(np.uint8)


def _luma(image: np.ndarray) -> np.ndarray:
    """A colour face ``C×H×W`` as its float32 gray (ITU-R 601 luma, as PIL's ``convert("L")``)."""
    return np.tensordot(np.array([0.299, 0.587, 0.114], dtype=np.float32), image.astype(np.float32), axes=1)


def _register(source: np.ndarray, partner: np.ndarray) -> np.ndarray | None:
    """The affine warp (ECC) that moves ``partner`` onto ``source`` (float32 ``H×W``), or None
    when ECC does not converge."""
    try:
        _, warp = cv2.findTransformECC(
            source,
            partner,
            np.eye(2, 3, dtype=np.float32),
            cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, ITERATIONS, EPS),
            None,
            5,
        )
    except cv2.error:
        return None
    return warp


def _warp(image: np.ndarray, warp: np.ndarray) -> np.ndarray:
    h, w = image.shape
    return cv2.warpAffine(
        image, warp, (w, h), flags=cv2.INTER_LINEAR + cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE
    )


def _relight(image: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``image`` with the lighting of ``reference``: a gain that varies linearly across the image
    plus an offset that does (``(a + c·x + d·y)·image + b + e·x + f·y``), fitted by least squares
    on the pixels that then differ least, twice (the first fit decides which those are)."""
    h, w = image.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    xx, yy = xx / max(w - 1, 1) - 0.5, yy / max(h - 1, 1) - 0.5
    t = image.ravel()
    basis = np.stack([t, t * xx.ravel(), t * yy.ravel(), np.ones_like(t), xx.ravel(), yy.ravel()], axis=1)
    target = reference.ravel()
    keep = np.ones_like(t, dtype=bool)
    fitted = t
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(basis[keep], target[keep], rcond=None)
        fitted = basis @ coef
        residual = np.abs(fitted - target)
        keep = residual <= np.quantile(residual, UNCHANGED)
    return fitted.reshape(h, w)


def keep_unchanged(source: np.ndarray, aligned: np.ndarray, threshold: float, grow: int = 1) -> np.ndarray:
    """The paired target with the source's own pixels wherever the aligned partner differs from
    it by less than ``threshold`` gray levels (regions grown by ``grow`` pixels, so a moved edge
    keeps its rim): the expression comes from the partner, everything else, sensor noise
    included, stays the source's. Without it the partner's noise and leftover misalignment are
    targets too, and their best L1 answer is a smoothed copy of the face. Colour faces
    (``C×H×W``) keep a pixel's channels together: it changed when any channel did."""
    changed = np.abs(aligned.astype(np.int16) - source.astype(np.int16)) > threshold
    if changed.ndim == 3:
        changed = changed.any(axis=0)
    if grow:
        changed = ndimage.binary_dilation(changed, structure=np.ones((3, 3), dtype=bool), iterations=grow)
    return np.where(changed, aligned, source).astype(np.uint8)


# Farneback's settings for faces of 48-128 px: a 3-level pyramid, 9 px windows, smooth flow.
FARNEBACK = {
    "pyr_scale": 0.5, "levels": 3, "winsize": 9, "iterations": 5, "poly_n": 5, "poly_sigma": 1.1, "flags": 0,
}  # fmt: skip


def pair_flow(source: np.ndarray, aligned: np.ndarray, threshold: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """The backward displacement ``(H, W, 2)`` (x, y, in pixels) with which warping ``source`` gives
    the registered partner ``aligned`` (output pixel p reads the source at p + flow(p), as
    :func:`fesaug.models.fersnet.warp` reads it), and a weight ``(H, W)`` in [0, 1]: 1 where the
    expression changes the face (the two differ by more than ``threshold`` gray levels) and the
    warped source matches the partner, falling to 0 where a warp cannot make the change (an opening
    mouth shows teeth the source does not have) or where nothing changes. Colour faces
    (``C×H×W``) move as their gray does."""
    if source.ndim == 3:
        source, aligned = (np.clip(np.rint(_luma(x)), 0, 255).astype(np.uint8) for x in (source, aligned))
    flow = cv2.calcOpticalFlowFarneback(aligned, source, None, **FARNEBACK)  # aligned(p) ~ source(p + flow(p))
    h, w = source.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    moved = cv2.remap(
        source.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )  # fmt: skip
    target, src = aligned.astype(np.float32), source.astype(np.float32)
    changed = np.abs(target - src) > threshold
    changed = ndimage.binary_dilation(changed, structure=np.ones((3, 3), dtype=bool), iterations=1)
    explained = np.clip(1.0 - np.abs(moved - target) / max(threshold, 1e-6), 0.0, 1.0)
    return flow.astype(np.float32), (changed * explained).astype(np.float32)


def pair_flow_tensors(
    source: torch.Tensor, target: torch.Tensor, threshold: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`pair_flow` of ``uint8`` ``C×S×S`` tensors (gray or colour): the displacement as
    ``2×S×S`` (x, y), the weight as ``S×S``, both float32 tensors."""
    gray = source.shape[0] == 1
    flow, weight = pair_flow(
        source[0].numpy() if gray else source.numpy(), target[0].numpy() if gray else target.numpy(), threshold
    )
    return torch.from_numpy(flow).permute(2, 0, 1).contiguous(), torch.from_numpy(weight)
