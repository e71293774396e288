"""`fesaug ingest --align` (fesaug.data.align): known rotations found and undone, canonical eye
positions, the whole-image fallback, faces that cannot be aligned, the CLI, the manifest record,
and the dlib model loading shared with the identity judge."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fesaug.data.align import DETECTOR, LEFT_EYE, MIN_EYE_DISTANCE, RIGHT_EYE, WHOLE_IMAGE, FaceAligner
from fesaug.data.demo import Subject, render
from fesaug.data.images import BadImage
from fesaug.data.manifest import read_manifest
from fesaug.utils import dlib_models
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process

pytest.importorskip("dlib", reason="--align needs dlib (pip install 'fesaug[judges]', part of the dev extra)")
pytest.importorskip(
    "face_recognition_models", reason="--align needs dlib's landmark model (pip install 'fesaug[judges]')"
)


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


def face(index: int = 0, expression: str = "happy", size: int = 96) -> Image.Image:
    """A level demo face (the renderer draws the eyes level; no pose nuisance)."""
    return Image.fromarray(render(Subject.from_seed(index, 0), expression, 0.8, size=size))


def turned(img: Image.Image, angle: float) -> Image.Image:
    """``img`` rotated counter-clockwise by ``angle`` degrees, corners filled with its background."""
    return img.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=int(np.asarray(img)[0, 0]))


def diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean())


@pytest.mark.parametrize("angle", [15.0, -15.0, 25.0])
def test_a_known_rotation_is_measured_and_undone(aligner: FaceAligner, angle: float) -> None:
    level = face(2)
    base = aligner.locate(level, where="level")
    assert base.box == DETECTOR and abs(base.angle) < 1.5
    rotated = turned(level, angle)
    found = aligner.locate(rotated, where="rotated")
    assert found.angle - base.angle == pytest.approx(angle, abs=2.0)

    aligned_level, _ = aligner.align(level, where="level", size=64)
    aligned_rotated, _ = aligner.align(rotated, where="rotated", size=64)
    assert abs(aligner.locate(aligned_rotated, where="aligned").angle) < 2.0
    # Aligned, the turned face is nearly the level one; as given, it is far from it.
    inner = (12, 12, 52, 52)  # the face, away from the filled corners
    assert diff(aligned_rotated.crop(inner), aligned_level.crop(inner)) < 0.35 * diff(
        rotated.resize((64, 64)).crop(inner), level.resize((64, 64)).crop(inner)
    )


def test_eyes_land_on_the_canonical_positions(aligner: FaceAligner) -> None:
    for size in (48, 128):
        out, _ = aligner.align(turned(face(5, "surprise"), -10), where="f", size=size)
        assert out.size == (size, size) and out.mode == "L"
        again = aligner.locate(out, where="aligned")
        tolerance = 0.03 * size  # about a pixel at 48, the landmark model's own precision
        np.testing.assert_allclose(again.left_eye, np.array(LEFT_EYE) * size - 0.5, atol=tolerance)
        np.testing.assert_allclose(again.right_eye, np.array(RIGHT_EYE) * size - 0.5, atol=tolerance)


def test_without_a_size_the_face_keeps_its_scale(aligner: FaceAligner) -> None:
    img = face(1, size=128)
    out, found = aligner.align(img, where="f")
    assert out.width == out.height == round(found.eye_distance / (RIGHT_EYE[0] - LEFT_EYE[0]))
    assert aligner.locate(out, where="out").eye_distance == pytest.approx(found.eye_distance, rel=0.06)


def test_whole_image_is_the_box_only_for_a_square_crop(aligner: FaceAligner, monkeypatch: pytest.MonkeyPatch) -> None:
    # As if dlib's detector missed the face, as it does on some tight or blurred crops.
    monkeypatch.setattr(aligner, "_detector", lambda image, upsample: [])
    level = face(3)
    found = aligner.locate(turned(level, 15), where="crop")
    assert found.box == WHOLE_IMAGE
    assert found.angle - aligner.locate(level, where="level").angle == pytest.approx(15, abs=2.5)
    wide = Image.new("L", (192, 96), int(np.asarray(level)[0, 0]))
    wide.paste(level, (48, 0))
    with pytest.raises(BadImage, match="no face found") as refused:
        aligner.locate(wide, where="wide.png")
    assert "not a square face crop" in refused.value.reason


def test_faces_that_cannot_be_aligned_are_bad_images(aligner: FaceAligner) -> None:
    with pytest.raises(BadImage, match="blank"):
        aligner.locate(Image.new("L", (64, 64), 128), where="blank.png")
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 200), dtype=np.uint8))
    with pytest.raises(BadImage, match="no face found"):
        aligner.locate(noise, where="noise.png")
    small = face(0, size=24)  # eyes about 8 px apart
    with pytest.raises(BadImage, match="too small") as refused:
        aligner.locate(small, where="small.png")
    assert f"at least {MIN_EYE_DISTANCE:g}" in str(refused.value) and "small.png" in str(refused.value)


# ---------------------------------------------------------------------------- the CLI


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, dict[str, float]]:
    """Six demo faces of three classes, each turned by a known angle."""
    angles = {}
    for i, (cls, angle) in enumerate(
        [("happy", 12), ("happy", -8), ("anger", 20), ("anger", 0), ("surprise", -18), ("surprise", 5)]
    ):
        path = tmp_path / "src" / cls / f"P{i}_face.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        turned(face(i, cls, size=80), angle).save(path)
        angles[path.stem] = float(angle)
    return tmp_path / "src", angles


def test_cli_aligns_a_folder_and_records_how(
    tree: tuple[Path, dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src, angles = tree
    out = tmp_path / "m.parquet"
    code, stdout, err = cli_in_process(
        capsys, "ingest", src, "--align", "--size", 48, "--subject-pattern", r"^(P\d+)_", "--out", out
    )
    assert code == 0, err
    assert "6 faces aligned" in stdout and "0 skipped" in stdout
    m = read_manifest(out)
    df = m.df
    assert set(df["width"]) == set(df["height"]) == {48}
    assert set(df["align_box"]) <= {DETECTOR, WHOLE_IMAGE}
    for sample_id, angle in zip(df["sample_id"], df["align_angle"]):
        assert angle == pytest.approx(angles[sample_id], abs=2.5)
    assert df["align_eye_distance"].between(20, 30).all()  # 80 px demo faces
    for i in range(len(df)):
        assert m.open_image(i).size == (48, 48)
    meta = m.meta["alignment"]
    assert meta["landmarks"] == {
        "model": "shape_predictor_5_face_landmarks.dat",
        "sha256": dlib_models.MODEL_SHA256[dlib_models.LANDMARKS_5],
    }
    assert meta["eyes"]["left"] == list(LEFT_EYE) and meta["eyes"]["right"] == list(RIGHT_EYE)
    assert meta["size"] == 48 and meta["min_eye_distance"] == MIN_EYE_DISTANCE
    assert sum(meta["counts"][k] for k in (DETECTOR, WHOLE_IMAGE)) == 6 and meta["counts"]["skipped"] == 0
    assert m.meta["align"] is True and m.meta["provenance"]["config"]["align"] is True


def test_cli_no_face_is_one_error_line_then_skipped(
    tree: tuple[Path, dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    src, _ = tree
    Image.new("L", (64, 64), 90).save(src / "happy" / "wall.png")
    out = tmp_path / "out" / "m.parquet"
    code, _, err = cli_in_process(capsys, "ingest", src, "--align", "--out", out)
    assert code == 1 and err.startswith("Error:") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "wall.png" in err and "no face found" in err and "--skip-bad" in err
    assert not out.parent.exists() or not any(out.parent.iterdir())

    code, stdout, err = cli_in_process(capsys, "ingest", src, "--align", "--skip-bad", "-v", "--out", out)
    assert code == 0, err
    assert "1 skipped" in stdout and "skipped happy/wall.png: no face found" in stdout
    m = read_manifest(out)
    assert len(m) == 6 and m.meta["skipped"] == [
        {"file": "happy/wall.png", "reason": "no face found (the image is blank)"}
    ]
    assert m.meta["alignment"]["counts"]["skipped"] == 1 and m.meta["alignment"]["size"] is None
    assert (m.df["width"] == m.df["height"]).all()  # each face at its own scale, square


def test_cli_refuses_align_with_detect_faces(
    tree: tuple[Path, dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, _, err = cli_in_process(
        capsys, "ingest", tree[0], "--align", "--detect-faces", "--out", tmp_path / "m.parquet"
    )
    assert code == 2 and err.startswith("Error:") and "--align" in err and "--detect-faces" in err
    assert not (tmp_path / "m.parquet").exists()


def test_cli_without_the_extra_names_it(
    tree: tuple[Path, dict[str, float]], tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # what `import dlib` meets when dlib-bin is not installed
    code, _, err = cli_in_process(capsys, "ingest", tree[0], "--align", "--out", tmp_path / "m.parquet")
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("Error: --align needs the optional package 'dlib'") and "pip install 'fesaug[judges]'" in err
    assert not (tmp_path / "m.parquet").exists()


def test_a_damaged_model_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import face_recognition_models

    fake = tmp_path / dlib_models.LANDMARKS_5
    fake.write_bytes(b"not dlib's model")
    monkeypatch.setattr(face_recognition_models, "pose_predictor_five_point_model_location", lambda: str(fake))
    with pytest.raises(FesaugError, match="sha256 does not match") as refused:
        dlib_models.model_file(dlib_models.LANDMARKS_5, "--align")
    assert "pip install --force-reinstall 'fesaug[judges]'" in str(refused.value)
    fake.unlink()
    with pytest.raises(FesaugError, match="is missing"):
        dlib_models.model_file(dlib_models.LANDMARKS_5, "--align")


# ---------------------------------------------------------------------------- real data (in memory only)


@pytest.mark.ckplus
def test_a_turned_ckplus_face_is_levelled(aligner: FaceAligner, ckplus_dir: Path) -> None:
    real = Image.open(ckplus_dir / "happy" / "S010_006_00000015.png").convert("L")
    level_out, level = aligner.align(real, where="real", size=48)
    assert level.box == DETECTOR and abs(level.angle) < 5  # CK+ heads are nearly upright
    rotated = turned(real, 15)
    rotated_out, found = aligner.align(rotated, where="rotated", size=48)
    assert found.angle - level.angle == pytest.approx(15, abs=1.5)
    inner = (8, 8, 40, 40)
    assert diff(rotated_out.crop(inner), level_out.crop(inner)) < 0.5 * diff(rotated.crop(inner), real.crop(inner))


def test_a_colour_face_is_found_and_aligned_in_colour(aligner: FaceAligner) -> None:
    subject = Subject.from_seed(5, 0)
    colour = Image.fromarray(render(subject, "surprise", 0.8, size=96, channels=3))
    rotated = colour.rotate(-10, resample=Image.Resampling.BICUBIC, fillcolor=colour.getpixel((0, 0)))
    found = aligner.locate(rotated, where="colour")
    assert found.box in (DETECTOR, WHOLE_IMAGE) and found.angle == pytest.approx(-10, abs=2.5)
    out, _ = aligner.align(rotated, where="colour", size=64)
    assert out.mode == "RGB" and out.size == (64, 64)
    again = aligner.locate(out, where="aligned")
    np.testing.assert_allclose(again.left_eye, np.array(LEFT_EYE) * 64 - 0.5, atol=0.03 * 64)
    # The colour face's eyes are where its gray twin's are.
    gray = aligner.locate(turned(face(5, "surprise"), -10), where="gray")
    np.testing.assert_allclose(found.left_eye, gray.left_eye, atol=1.5)
