"""Quality metrics for synthetic face images, as reported by ``fesaug evaluate``.

Images are ``uint8`` arrays or tensors of shape N×C×S×S (C = 1 gray or 3 RGB, 0–255); features
are float arrays N×D (penultimate-layer embeddings of a classifier).

- :func:`frechet_distance`: the Fréchet distance between two Gaussians fitted to two feature sets,
  ``||mu_a - mu_b||² + Tr(Σa + Σb - 2 (Σa Σb)^{1/2})`` (Heusel et al., "GANs Trained by a Two
  Time-Scale Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017). The features come
  from our own expression classifier, not Inception-v3, so the numbers are not comparable with
  published Inception-based scores and are deliberately not given that name.
- :func:`precision_recall`: improved precision and recall (Kynkäänniemi et al., "Improved Precision
  and Recall Metric for Assessing Generative Models", NeurIPS 2019). Each set's manifold is the union
  of balls around its samples with radius the distance to the k-th nearest neighbour; precision is
  the share of fake samples inside the real manifold (fidelity), recall the share of real samples
  inside the fake manifold (coverage).
- :func:`psnr`: per-image peak signal-to-noise ratio in dB.
- :func:`ssim`: per-image mean structural similarity (Wang et al., "Image Quality Assessment: From
  Error Visibility to Structural Similarity", IEEE TIP 2004) with an 11×11 Gaussian window
  (sigma 1.5), K1 = 0.01, K2 = 0.03, over the 'valid' region; matches
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=255)``; colour images score the mean over their channels,
  as skimage's ``channel_axis`` does.
- :func:`nearest_other_subject` and :func:`memorisation`: whether synthetic images are near-copies
  of another subject's real face (the generator memorised a training image instead of translating
  the expression of its own subject).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import LinAlgWarning, sqrtm
from sklearn.metrics import pairwise_distances_chunked
from sklearn.neighbors import NearestNeighbors
from torch import Tensor

from fesaug.utils.errors import FesaugError

__all__ = ["frechet_distance", "memorisation", "nearest_other_subject", "precision_recall", "psnr", "ssim"]

_EPS = 1e-6
_WIN, _SIGMA, _K1, _K2 = 11, 1.5, 0.01, 0.03


def _features(x: np.ndarray, name: str, min_rows: int) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise FesaugError(f"{name}: expected a 2-D feature array N×D, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise FesaugError(f"{name}: expected real numeric features, got dtype {arr.dtype}")
    if arr.shape[0] < min_rows:
        raise FesaugError(f"{name}: needs at least {min_rows} rows, got {arr.shape[0]}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise FesaugError(f"{name}: features contain NaN or infinity")
    return arr


def _images(x: np.ndarray | Tensor, name: str, min_size: int = 1) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype != np.uint8:
        raise FesaugError(f"{name}: expected uint8 images (0-255), got dtype {arr.dtype}")
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] < 1:
        raise FesaugError(f"{name}: expected a non-empty N×1×S×S (gray) or N×3×S×S (RGB) batch, got shape {arr.shape}")
    if min(arr.shape[2:]) < min_size:
        raise FesaugError(f"{name}: images must be at least {min_size}×{min_size} px, got {arr.shape[2:]}")
    return arr


def _pair(a: np.ndarray | Tensor, b: np.ndarray | Tensor, min_size: int = 1) -> tuple[np.ndarray, np.ndarray]:
    a, b = _images(a, "a", min_size), _images(b, "b", min_size)
    if a.shape != b.shape:
        raise FesaugError(f"image batches differ in shape: {a.shape} vs {b.shape}")
    return a, b


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets ``a`` and ``b`` (N×D, N ≥ 2)."""
    a, b = _features(a, "a", 2), _features(b, "b", 2)
    if a.shape[1] != b.shape[1]:
        raise FesaugError(f"feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    mu = a.mean(axis=0) - b.mean(axis=0)
    # atleast_2d: np.cov returns a 0-d array for a single feature.
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():
        # Singular products are expected with fewer rows than dimensions; the finiteness check
        # below decides what to do, so scipy's warning would only be noise in every report.
        warnings.simplefilter("ignore", LinAlgWarning)
        covmean = sqrtm(cov_a @ cov_b)
    if not np.isfinite(covmean).all():
        # Singular products (fewer rows than dimensions) can make sqrtm blow up; a small ridge
        # makes them positive definite at a negligible cost in accuracy.
        ridge = _EPS * np.eye(cov_a.shape[0])
        covmean = sqrtm((cov_a + ridge) @ (cov_b + ridge))
    # Round-off gives the square root of a PSD product a tiny imaginary part; only the trace matters.
    covmean = np.real(covmean)
    value = float(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2.0 * np.trace(covmean))
    # Identical sets give -1e-12 or so, not 0; a distance cannot be negative.
    return max(value, 0.0)


def _kth_radii(x: np.ndarray, k: int) -> np.ndarray:
    # k + 1 neighbours because each point is its own nearest neighbour at distance 0.
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, k]


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    # Chunked so that the points × centres distance matrix never has to exist all at once.
    chunks = pairwise_distances_chunked(points, centres, reduce_func=lambda d, _: (d <= radii).any(axis=1))
    return np.concatenate(list(chunks))


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved (precision, recall) of ``fake`` against ``real`` features with k-NN manifolds."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise FesaugError(f"k must be a positive integer, got {k!r}")
    real, fake = _features(real, "real", k + 1), _features(fake, "fake", k + 1)
    if real.shape[1] != fake.shape[1]:
        raise FesaugError(f"feature sets differ in dimension: {real.shape[1]} vs {fake.shape[1]}")
    precision = _inside(fake, real, _kth_radii(real, k)).mean()
    recall = _inside(real, fake, _kth_radii(fake, k)).mean()
    return float(precision), float(recall)


def psnr(a: np.ndarray | Tensor, b: np.ndarray | Tensor, data_range: float = 255.0) -> np.ndarray:
    """Per-image PSNR in dB of two uint8 N×C×S×S batches (the mean squared error over every
    channel); ``inf`` where the images are identical."""
    a, b = _pair(a, b)
    mse = ((a.astype(np.float64) - b.astype(np.float64)) ** 2).mean(axis=(1, 2, 3))
    with np.errstate(divide="ignore"):
        return 10.0 * np.log10(data_range**2 / mse)


def _gaussian_window() -> Tensor:
    x = torch.arange(_WIN, dtype=torch.float64) - _WIN // 2
    g = torch.exp(-(x**2) / (2 * _SIGMA**2))
    g = g / g.sum()
    return torch.outer(g, g).view(1, 1, _WIN, _WIN)


def ssim(a: np.ndarray | Tensor, b: np.ndarray | Tensor, data_range: float = 255.0) -> np.ndarray:
    """Per-image mean SSIM of two uint8 N×C×S×S batches (images at least 11 px; colour: the mean
    over the channels)."""
    a, b = _pair(a, b, min_size=_WIN)
    # Each channel on its own, as one more image of the batch.
    x, y = (torch.from_numpy(v).double().flatten(0, 1)[:, None] for v in (a, b))
    n = x.shape[0]
    # One convolution for all five local moments; 'valid' only, since padded borders would bias
    # the statistics (and skimage crops them too).
    moments = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), _gaussian_window())
    mx, my, mxx, myy, mxy = moments.split(n)
    vx, vy, cxy = mxx - mx * mx, myy - my * my, mxy - mx * my
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(a.shape[0], a.shape[1], *s.shape[2:]).mean(dim=(1, 2, 3)).numpy()


def _subject_codes(subjects: Sequence[str], n: int, name: str, lookup: dict[str, int]) -> Tensor:
    if len(subjects) != n:
        raise FesaugError(f"{name}: {len(subjects)} subject ids for {n} images")
    return torch.tensor([lookup.setdefault(s, len(lookup)) for s in subjects], dtype=torch.long)


def nearest_other_subject(
    queries: np.ndarray | Tensor,
    query_subjects: Sequence[str],
    references: np.ndarray | Tensor,
    reference_subjects: Sequence[str],
    chunk: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """For each query image, the mean absolute pixel difference (0–255) to the nearest reference
    image of a different subject, and that reference's index (``inf`` and -1 if there is none)."""
    q, r = _images(queries, "queries"), _images(references, "references")
    if q.shape[1:] != r.shape[1:]:
        raise FesaugError(f"queries and references differ in image shape: {q.shape[1:]} vs {r.shape[1:]}")
    if chunk < 1:
        raise FesaugError(f"chunk must be at least 1, got {chunk}")
    lookup: dict[str, int] = {}
    q_codes = _subject_codes(query_subjects, len(q), "query_subjects", lookup)
    r_codes = _subject_codes(reference_subjects, len(r), "reference_subjects", lookup)
    pixels = int(np.prod(q.shape[1:]))
    refs = torch.from_numpy(r).reshape(len(r), -1).float()
    dist, index = np.empty(len(q)), np.empty(len(q), dtype=np.int64)
    for start in range(0, len(q), chunk):
        block = torch.from_numpy(q[start : start + chunk]).reshape(-1, pixels).float()
        d = torch.cdist(block, refs, p=1) / pixels
        d[q_codes[start : start + chunk, None] == r_codes[None, :]] = float("inf")
        best, arg = d.min(dim=1)
        dist[start : start + len(block)] = best.double().numpy()
        index[start : start + len(block)] = torch.where(torch.isinf(best), -1, arg).numpy()
    return dist, index


def memorisation(
    synthetic: np.ndarray | Tensor,
    synthetic_subjects: Sequence[str],
    real: np.ndarray | Tensor,
    real_subjects: Sequence[str],
) -> dict[str, Any]:
    """Count synthetic images that are near-copies of another subject's real face.

    The threshold is the smallest distance between two real images of different subjects: no real
    face is ever that close to another person's, so a synthetic image closer than that to another
    subject's real face has copied it rather than rendered its own subject.
    """
    if len(set(real_subjects)) < 2:
        raise FesaugError("memorisation needs real images of at least 2 subjects")
    real_dist, _ = nearest_other_subject(real, real_subjects, real, real_subjects)
    threshold = float(real_dist.min())
    dist, index = nearest_other_subject(synthetic, synthetic_subjects, real, real_subjects)
    near = int((dist < threshold).sum())
    return {
        "threshold": threshold,
        "near_copies": near,
        "share": near / len(dist),
        "distance_median": float(np.median(dist)),
        "real_distance_median": float(np.median(real_dist)),
        "nearest_index": [int(i) for i in index],
    }
