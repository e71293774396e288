"""Synthetic-image quality metrics: Fréchet distance, improved precision/recall, PSNR, SSIM and the
memorisation (near-copy of another subject) check."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from scipy.ndimage import gaussian_filter

from fesaug.evaluate.metrics import (
    frechet_distance,
    memorisation,
    nearest_other_subject,
    precision_recall,
    psnr,
    ssim,
)
from fesaug.utils.errors import FesaugError

pytestmark = pytest.mark.usefixtures("one_thread")


def images(seed: int, n: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 1, size, size), dtype=np.uint8)


# --- Fréchet distance ---------------------------------------------------------------------------


def test_frechet_identical_sets_is_zero():
    a = np.random.default_rng(0).normal(size=(200, 8))
    assert frechet_distance(a, a.copy()) == pytest.approx(0.0, abs=1e-6)


def test_frechet_matches_closed_form_for_1d_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(1.0, 2.0, size=(50_000, 1))
    b = rng.normal(-1.0, 0.5, size=(50_000, 1))
    # (mu_a - mu_b)² + (sigma_a - sigma_b)² = 4 + 2.25
    assert frechet_distance(a, b) == pytest.approx(6.25, rel=0.03)


def test_frechet_matches_closed_form_for_diagonal_covariances():
    rng = np.random.default_rng(2)
    mu_a, mu_b = np.array([0.0, 1.0, -2.0, 0.5]), np.array([1.0, 1.0, 0.0, 0.0])
    sd_a, sd_b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([3.0, 1.0, 0.5, 0.2])
    a = rng.normal(mu_a, sd_a, size=(50_000, 4))
    b = rng.normal(mu_b, sd_b, size=(50_000, 4))
    expected = np.sum((mu_a - mu_b) ** 2) + np.sum((sd_a - sd_b) ** 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.03)


def test_frechet_is_symmetric_and_grows_with_mean_shift():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(300, 6)), rng.normal(size=(300, 6)) * 1.5
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-6)
    distances = [frechet_distance(a, b + shift) for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(x < y for x, y in itertools.pairwise(distances))


def test_frechet_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(4)
    value = frechet_distance(rng.normal(size=(5, 20)), rng.normal(size=(5, 20)))
    assert math.isfinite(value) and value >= 0.0


def test_frechet_retries_with_ridge_when_sqrtm_fails(monkeypatch):
    # scipy rarely fails on real data, so make the first square root fail and check the retry.
    import fesaug.evaluate.metrics as sm

    seen = []

    def flaky_sqrtm(m):
        seen.append(m)
        return np.full_like(m, np.nan) if len(seen) == 1 else sqrtm(m)

    monkeypatch.setattr(sm, "sqrtm", flaky_sqrtm)
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(50, 3)), rng.normal(size=(50, 3)) + 1.0
    value = sm.frechet_distance(a, b)
    assert len(seen) == 2
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    ridge = 1e-6 * np.eye(3)
    np.testing.assert_allclose(seen[1], (ca + ridge) @ (cb + ridge))
    monkeypatch.undo()
    # The ridge shifts the result by O(eps·D) only.
    assert value == pytest.approx(frechet_distance(a, b), abs=1e-4)


# --- precision / recall -------------------------------------------------------------------------


def clusters(centres: np.ndarray, per: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + rng.normal(scale=0.1, size=(per, centres.shape[1])) for c in centres])


CENTRES = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0], [100.0, 100.0]])


def test_precision_recall_identical_sets():
    real = clusters(CENTRES, 50, seed=5)
    assert precision_recall(real, real.copy()) == (1.0, 1.0)


def test_precision_recall_disjoint_clusters():
    real = clusters(CENTRES[:2], 50, seed=6)
    fake = clusters(CENTRES[2:], 50, seed=7)
    assert precision_recall(real, fake, k=3) == (0.0, 0.0)


def test_precision_recall_fake_covering_half_the_modes():
    real = clusters(CENTRES, 200, seed=8)
    fake = clusters(CENTRES[:2], 200, seed=9)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.95
    assert recall == pytest.approx(0.5, abs=0.05)


# --- PSNR / SSIM --------------------------------------------------------------------------------


@pytest.mark.parametrize("d", [1, 5, 40])
def test_psnr_constant_difference(d):
    a = images(10, n=3)
    a = np.clip(a, 0, 200).astype(np.uint8)
    b = (a + d).astype(np.uint8)
    np.testing.assert_allclose(psnr(a, b), 20 * math.log10(255 / d))


def test_psnr_identical_is_inf_and_accepts_tensors():
    a = images(11, n=2)
    b = a.copy()
    b[1, 0, 0, 0] ^= 1
    values = psnr(torch.from_numpy(a), torch.from_numpy(b))
    assert values[0] == math.inf and math.isfinite(values[1])


def test_ssim_identical_is_one():
    a = images(12, n=3, size=24)
    np.testing.assert_allclose(ssim(a, a.copy()), 1.0)


def skimage_like_ssim(x: np.ndarray, y: np.ndarray) -> float:
    """skimage's algorithm re-stated with scipy: filter the whole image (reflect), crop the 5 px the
    window cannot cover, average."""
    x, y = x.astype(np.float64), y.astype(np.float64)

    def f(img: np.ndarray) -> np.ndarray:
        return gaussian_filter(img, sigma=1.5, truncate=3.5)

    mx, my = f(x), f(y)
    vx, vy, cxy = f(x * x) - mx * mx, f(y * y) - my * my, f(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s[5:-5, 5:-5].mean())


def test_ssim_matches_reference_implementation():
    a, b = images(13, n=3, size=20), images(14, n=3, size=20)
    b[0] = a[0] // 2 + b[0] // 2  # one correlated pair, so SSIM is not near 0 everywhere
    expected = [skimage_like_ssim(a[i, 0], b[i, 0]) for i in range(3)]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-9)


def test_ssim_matches_skimage():
    metrics = pytest.importorskip("skimage.metrics")
    a, b = images(15, n=2, size=32), images(16, n=2, size=32)
    b[1] = a[1] // 2 + b[1] // 2
    expected = [
        metrics.structural_similarity(
            a[i, 0], b[i, 0], gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
        )
        for i in range(2)
    ]
    np.testing.assert_allclose(ssim(a, b), expected, rtol=1e-6)


def test_ssim_offset_lowers_score_and_constant_images_give_the_luminance_term():
    a = np.clip(images(17, n=1, size=16), 0, 200).astype(np.uint8)
    assert ssim(a, (a + 30).astype(np.uint8))[0] < 0.999
    # Constant images have zero variance, so the contrast-structure term is C2/C2 = 1 and SSIM is
    # the luminance term (2·mx·my + C1) / (mx² + my² + C1).
    x, y = np.full((1, 1, 16, 16), 100, np.uint8), np.full((1, 1, 16, 16), 160, np.uint8)
    c1 = (0.01 * 255) ** 2
    np.testing.assert_allclose(ssim(x, y), (2 * 100 * 160 + c1) / (100**2 + 160**2 + c1), rtol=1e-12)


# --- nearest other subject / memorisation -------------------------------------------------------


def brute_force(queries, q_subj, refs, r_subj):
    dist, index = np.full(len(queries), np.inf), np.full(len(queries), -1)
    for i, q in enumerate(queries.astype(np.float64)):
        for j, r in enumerate(refs.astype(np.float64)):
            d = np.abs(q - r).mean()
            if r_subj[j] != q_subj[i] and d < dist[i]:
                dist[i], index[i] = d, j
    return dist, index


def test_nearest_other_subject_matches_brute_force_and_skips_own_subject():
    refs = images(20, n=9, size=12)
    r_subj = ["A", "A", "A", "B", "B", "C", "C", "C", "D"]
    queries = refs[[0, 3, 5, 8, 2]].copy()  # each query's exact twin is its own subject's
    queries[4] = images(21, n=1, size=12)[0]
    q_subj = ["A", "B", "C", "D", "E"]
    dist, index = nearest_other_subject(queries, q_subj, torch.from_numpy(refs), r_subj, chunk=2)
    expected_dist, expected_index = brute_force(queries, q_subj, refs, r_subj)
    np.testing.assert_allclose(dist, expected_dist, rtol=1e-6)
    np.testing.assert_array_equal(index, expected_index)
    assert all(r_subj[j] != q_subj[i] for i, j in enumerate(index))
    assert (dist > 0).all()  # the same-subject twins (distance 0) were masked


def test_nearest_other_subject_without_other_subject():
    refs = images(22, n=3, size=12)
    dist, index = nearest_other_subject(refs[:1], ["A"], refs, ["A", "A", "A"])
    assert dist[0] == math.inf and index[0] == -1


def test_memorisation_flags_a_copy_of_another_subject():
    real = images(30, n=12, size=16)
    real_subj = [f"S{i // 3}" for i in range(12)]  # 4 subjects, 3 images each
    synthetic = np.stack([real[7], images(31, n=1, size=16)[0]])  # real[7] belongs to S2
    report = memorisation(synthetic, ["S0", "S1"], real, real_subj)
    assert report["near_copies"] == 1 and report["share"] == 0.5
    assert report["nearest_index"][0] == 7
    assert report["threshold"] > 0 and report["distance_median"] > 0 and report["real_distance_median"] > 0
    json.dumps(report, allow_nan=False)  # plain Python types only


def test_memorisation_own_subject_copy_is_not_flagged():
    real = images(32, n=6, size=16)
    real_subj = ["A", "A", "A", "B", "B", "B"]
    report = memorisation(real[[0, 4]], ["A", "B"], real, real_subj)
    assert report["near_copies"] == 0


# --- bad input ----------------------------------------------------------------------------------

IMG = images(40, n=2, size=16)
FEAT = np.random.default_rng(41).normal(size=(10, 4))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: frechet_distance(FEAT[:1], FEAT), "at least 2 rows"),
        (lambda: frechet_distance(FEAT, FEAT[:, :3]), "dimension"),
        (lambda: frechet_distance(FEAT[:, 0], FEAT[:, 0]), "2-D"),
        (lambda: frechet_distance(np.full((3, 2), np.nan), FEAT[:, :2]), "NaN"),
        (lambda: precision_recall(FEAT[:3], FEAT, k=3), "at least 4 rows"),
        (lambda: precision_recall(FEAT, FEAT, k=0), "positive integer"),
        (lambda: psnr(IMG.astype(np.float32), IMG), "uint8"),
        (lambda: psnr(IMG[:, 0], IMG[:, 0]), "N×1×S×S"),
        (lambda: psnr(IMG, IMG[:1]), "differ in shape"),
        (lambda: ssim(IMG[..., :10, :10], IMG[..., :10, :10]), "at least 11"),
        (lambda: nearest_other_subject(IMG, ["A"], IMG, ["A", "B"]), "1 subject ids for 2 images"),
        (lambda: nearest_other_subject(IMG, ["A", "B"], IMG[..., :12, :12], ["A", "B"]), "image shape"),
        (lambda: memorisation(IMG, ["A", "B"], IMG, ["A", "A"]), "at least 2 subjects"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(FesaugError, match=match):
        call()


def test_colour_batches_score_over_their_channels() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (3, 3, 24, 24), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
    per_channel = np.mean([ssim(a[:, [c]], b[:, [c]]) for c in range(3)], axis=0)
    assert np.allclose(ssim(a, b), per_channel)
    mse = ((a.astype(float) - b) ** 2).mean(axis=(1, 2, 3))
    assert np.allclose(psnr(a, b), 10 * np.log10(255**2 / mse))
    assert np.allclose(ssim(a[:, :1], b[:, :1]), ssim(a[:, 0][:, None], b[:, 0][:, None]))
