"""`fesaug ingest`: folder trees, FER2013 CSVs, subject ids and folds, storage, bad inputs."""

from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fesaug.cli.main import main
from fesaug.data import faces
from fesaug.data.images import sha256_bytes
from fesaug.data.manifest import read_manifest
from fesaug.utils.errors import FesaugError

from .conftest import run_cli

# --------------------------------------------------------------------------------------------
# helpers


def make_image(path: Path, size: tuple[int, int] = (16, 16), mode: str = "L") -> Path:
    """A small noise image, different for every file name."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = rng.integers(0, 256, size=(size[1], size[0]), dtype=np.uint8)
    img = Image.fromarray(arr)
    if mode == "I;16":
        img = Image.fromarray(arr.astype(np.uint16) * 257)
    elif mode != "L":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def make_tree(root: Path, files: dict[str, int]) -> Path:
    """``{"angry": 2, "happy/sub": 1}`` -> that many images in each folder."""
    for folder, n in files.items():
        for i in range(n):
            make_image(root / folder / f"{Path(folder).name}_{i}.png")
    return root


def ck_tree(root: Path, subjects: int = 6) -> Path:
    """CK+-style names: each subject has one 3-frame sequence in two classes."""
    classes = ["anger", "happy", "surprise"]
    for s in range(subjects):
        for q in range(2):
            cls = classes[(s + q) % 3]
            for frame in range(3):
                make_image(root / cls / f"S{s + 10:03d}_{q + 1:03d}_{frame + 10:08d}.png")
    return root


def cli(capsys, *args: str | Path) -> tuple[int, str, str]:
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def ok(capsys, *args: str | Path) -> str:
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    return out


def assert_refused(capsys, out_dir: Path, names: str, *args: str | Path) -> str:
    """A bad input: exit 1, one `Error:` line naming it, no traceback, nothing written."""
    code, _, err = cli(capsys, *args)
    assert code == 1, err
    assert err.startswith("Error:") and "Traceback" not in err
    assert names in err
    assert not out_dir.exists() or not any(out_dir.iterdir())
    return err


def write_csv(path: Path, rows: list[str], header: str = "emotion,pixels,Usage") -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def pixels(seed: int, n: int = 16) -> str:
    return " ".join(str(v) for v in np.random.default_rng(seed).integers(0, 256, n))


def bomb_png(path: Path, width: int = 10_000, height: int = 10_000) -> Path:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels."""
    make_image(path, (4, 4))
    data = bytearray(path.read_bytes())
    ihdr = bytearray(data[12:29])  # chunk type + 13 data bytes
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    path.write_bytes(bytes(data))
    return path


# --------------------------------------------------------------------------------------------
# formats


def test_folder_with_aliases_is_referenced_in_place(tmp_path, capsys):
    src = make_tree(tmp_path / "data", {"angry": 2, "Happiness": 3, "sad": 1, "surprised/nested/deeper": 2})
    (src / "README.txt").write_text("not an image")
    (src / ".DS_Store").write_bytes(b"\0")
    (src / "angry" / "Thumbs.db").write_bytes(b"\0")
    out = tmp_path / "out" / "m.parquet"
    summary = ok(capsys, "ingest", src, "--out", out)
    assert "8 rows" in summary and "3 non-image files ignored" in summary

    m = read_manifest(out)
    assert m.classes == ["anger", "happy", "sadness", "surprise"]
    assert m.df["label_name"].value_counts().to_dict() == {"happy": 3, "anger": 2, "surprise": 2, "sadness": 1}
    assert set(m.df["split"]) == {"train"}
    assert m.df["subject_id"].isna().all() and m.df["fold"].isna().all()
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.parquet"]  # nothing copied
    assert m.image_root.resolve() == src.resolve()
    for i in range(len(m)):
        row = m.df.iloc[i]
        file = src / row["source_file"]
        assert row["image"]["path"] == row["source_file"] and row["image"]["bytes"] is None
        assert row["sha256"] == sha256_bytes(file.read_bytes())
        assert m.open_image(i).tobytes() == Image.open(file).tobytes()
        assert (row["width"], row["height"]) == (16, 16)
    assert "surprised/nested/deeper/deeper_0.png" in set(m.df["source_file"])
    assert m.meta["format"] == "folder" and m.meta["provenance"]["tool"] == "fesaug ingest"


def test_split_folders_and_colliding_stems(tmp_path, capsys):
    src = tmp_path / "fer"
    make_tree(src / "train", {"angry": 2, "happy": 2})
    make_tree(src / "PublicTest", {"angry": 1})
    make_tree(src / "test", {"anger": 1, "happy": 1})
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", src, "--out", out)
    df = read_manifest(out).df
    assert df.groupby("split").size().to_dict() == {"train": 4, "validation": 1, "test": 2}
    ids = df["sample_id"].tolist()
    assert len(set(ids)) == len(ids) and all(i.replace("-", "").replace("_", "").isalnum() for i in ids)
    assert "happy_1" in ids  # unique stems stay readable
    ok(capsys, "ingest", src, "--out", tmp_path / "again.parquet")
    assert read_manifest(tmp_path / "again.parquet").df["sample_id"].tolist() == ids


def test_ckplus_names_and_subject_independent_folds(tmp_path, capsys):
    src = ck_tree(tmp_path / "ck", subjects=8)
    runs = {}
    for name, seed in [("a", 0), ("b", 0), ("c", 5)]:
        out = tmp_path / f"{name}.parquet"
        summary = ok(capsys, "ingest", src, "--preset", "ckplus", "--folds", 4, "--fold-seed", seed, "--out", out)
        assert "8 subjects" in summary and "4 folds" in summary
        runs[name] = read_manifest(out)
    df = runs["a"].df
    assert df["subject_id"].iloc[0] == "S010" and set(df["fold"]) == {0, 1, 2, 3}
    assert (df.groupby("subject_id")["fold"].nunique() == 1).all()
    assert df["fold"].tolist() == runs["b"].df["fold"].tolist()
    assert runs["a"].meta["folds"] == 4 and runs["c"].meta["fold_seed"] == 5


def test_jaffe_flat_tree(tmp_path, capsys):
    src = tmp_path / "jaffe"
    names = [
        "KA.AN1.39.tiff",
        "KA.HA2.30.tiff",
        "KL.SU1.164.tiff",
        "KL.NE1.155.tiff",
        "YM.DI3.66.tiff",
        "YM.FE1.67.tiff",
        "NM.SA1.95.tiff",
    ]
    for n in names:
        make_image(src / n, (32, 32))
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", src, "--preset", "jaffe", "--out", out)
    df = read_manifest(out).df.set_index("source_file")
    assert df.loc["KA.AN1.39.tiff", "label_name"] == "anger" and df.loc["KA.AN1.39.tiff", "subject_id"] == "KA"
    assert dict(zip(df.index, df["label_name"])) == {
        "KA.AN1.39.tiff": "anger",
        "KA.HA2.30.tiff": "happy",
        "KL.SU1.164.tiff": "surprise",
        "KL.NE1.155.tiff": "neutral",
        "YM.DI3.66.tiff": "disgust",
        "YM.FE1.67.tiff": "fear",
        "NM.SA1.95.tiff": "sadness",
    }
    assert set(df["subject_id"]) == {"KA", "KL", "YM", "NM"}


@pytest.mark.parametrize("pattern", [r"^(\w+?)_", r"^(?P<subject>p\d+)_([a-z]+)_"])
def test_subject_pattern(tmp_path, capsys, pattern):
    src = tmp_path / "d"
    for s in ("p1", "p2", "p3"):
        for cls in ("happy", "sad"):
            make_image(src / cls / f"{s}_{cls}_0.png")
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", src, "--subject-pattern", pattern, "--folds", 3, "--out", out)
    df = read_manifest(out).df
    assert sorted(set(df["subject_id"])) == ["p1", "p2", "p3"]
    assert (df.groupby("subject_id")["fold"].nunique() == 1).all()


def test_fer2013_csv(tmp_path, capsys):
    csv = write_csv(
        tmp_path / "fer.csv",
        [
            f"0,{pixels(1)},Training",
            f"3,{pixels(2)},Training",
            f"6,{pixels(3)},PublicTest",
            f"5,{pixels(4)},PrivateTest",
        ],
    )
    out = tmp_path / "m.parquet"
    summary = ok(capsys, "ingest", csv, "--format", "fer2013-csv", "--out", out)
    assert "4 rows" in summary
    m = read_manifest(out)
    assert m.df["label_name"].tolist() == ["anger", "happy", "neutral", "surprise"]
    assert m.df["split"].tolist() == ["train", "train", "validation", "test"]
    assert m.df["source_file"].tolist() == ["csv:2", "csv:3", "csv:4", "csv:5"]
    assert m.df["image"].iloc[0]["path"] == "m-images/anger/fer-000002.png"
    assert np.array_equal(np.asarray(m.open_image(0)).ravel(), np.array(pixels(1).split(), dtype=np.uint8))
    assert (m.df["width"] == 4).all() and m.meta["image_root"] == "."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer.csv", "m-images", "m.parquet"]  # no staging left


def test_csv_without_usage_is_train(tmp_path, capsys):
    csv = write_csv(tmp_path / "fer.csv", [f"1,{pixels(1)}"], header="emotion,pixels")
    ok(capsys, "ingest", csv, "--format", "fer2013-csv", "--embed", "--out", tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.df["split"].tolist() == ["train"] and m.classes == ["disgust"]


def test_embed_original_bytes(tmp_path, capsys):
    src = make_tree(tmp_path / "d", {"happy": 2, "fear": 1})
    out = tmp_path / "out" / "m.parquet"
    ok(capsys, "ingest", src, "--embed", "--out", out)
    m = read_manifest(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["m.parquet"]
    for i in range(len(m)):
        row = m.df.iloc[i]
        assert row["image"]["bytes"] == (src / row["source_file"]).read_bytes()
        assert row["sha256"] == sha256_bytes(row["image"]["bytes"])
    assert m.meta["storage"] == "embedded"


def test_odd_modes_are_converted_and_resized(tmp_path, capsys):
    src = tmp_path / "d"
    make_image(src / "happy" / "palette.png", (20, 10), mode="P")
    make_image(src / "happy" / "rgba.png", (20, 10), mode="RGBA")
    make_image(src / "sad" / "deep.png", (20, 10), mode="I;16")
    make_image(src / "sad" / "photo.jpg", (20, 10), mode="RGB")
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", src, "--size", 8, "--out", out)
    m = read_manifest(out)
    assert len(m) == 4 and (m.df["width"] == 8).all() and (m.df["height"] == 8).all()
    for i in range(len(m)):
        img = Image.open(m.image_root / m.df["image"].iloc[i]["path"])
        assert img.mode == "L" and img.size == (8, 8)
        assert m.df["sha256"].iloc[i] == sha256_bytes((m.image_root / m.df["image"].iloc[i]["path"]).read_bytes())


# --------------------------------------------------------------------------------------------
# bad inputs: refused with a clear error, or skipped and recorded with --skip-bad


def _corrupt(src: Path) -> Path:
    f = make_image(src / "happy" / "truncated.png", (64, 64))
    f.write_bytes(f.read_bytes()[:100])
    return f


def _zero(src: Path) -> Path:
    f = src / "happy" / "zero.png"
    f.write_bytes(b"")
    return f


def _not_image(src: Path) -> Path:
    f = src / "happy" / "notes.jpg"
    f.write_text("this is text")
    return f


def _too_large(src: Path) -> Path:
    return bomb_png(src / "happy" / "bomb.png")


def _symlink_outside(src: Path) -> Path:
    target = make_image(src.parent / "elsewhere" / "x.png")
    link = src / "happy" / "link.png"
    link.symlink_to(target)
    return link


def _symlink_folder_outside(src: Path) -> Path:
    make_tree(src.parent / "elsewhere", {"more": 1})
    link = src / "happy" / "more"
    link.symlink_to(src.parent / "elsewhere" / "more")
    return link


def _empty_class(src: Path) -> Path:
    (src / "fear").mkdir()
    return src / "fear"


def _unknown_class(src: Path) -> Path:
    make_tree(src, {"bored": 1})
    return src / "bored"


def _loose_image(src: Path) -> Path:
    return make_image(src / "stray.png")


BAD_FILES = {
    "corrupt": (_corrupt, "corrupt or truncated"),
    "zero-byte": (_zero, "zero-byte"),
    "not-an-image": (_not_image, "not an image"),
    "too-large": (_too_large, "too large"),
    "symlink-outside": (_symlink_outside, "outside the source folder"),
    "symlink-folder-outside": (_symlink_folder_outside, "outside the source folder"),
    "empty-class": (_empty_class, "empty class folder"),
    "unknown-class": (_unknown_class, "unknown class"),
    "loose-image": (_loose_image, "not in a class folder"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_file_refused_or_skipped(tmp_path, capsys, case):
    make_bad, reason = BAD_FILES[case]
    src = make_tree(tmp_path / "d", {"happy": 2, "sad": 1})
    bad = make_bad(src)
    out_dir = tmp_path / "out"
    out = out_dir / "m.parquet"
    err = assert_refused(capsys, out_dir, bad.name, "ingest", src, "--out", out)
    assert reason in err

    summary = ok(capsys, "ingest", src, "--out", out, "--skip-bad", "-v")
    assert "1 skipped" in summary and f"skipped {bad.relative_to(src).as_posix()}: " in summary
    m = read_manifest(out)
    assert len(m) == 3
    assert m.meta["skipped"] == [{"file": bad.relative_to(src).as_posix(), "reason": m.meta["skipped"][0]["reason"]}]
    assert reason in m.meta["skipped"][0]["reason"]


def test_unknown_classes_are_listed_together(tmp_path, capsys):
    src = make_tree(tmp_path / "d", {"happy": 1, "bored": 1, "sleepy": 1})
    err = assert_refused(
        capsys, tmp_path / "out", "'bored', 'sleepy'", "ingest", src, "--out", tmp_path / "out" / "m.parquet"
    )
    assert "known classes are" in err


def test_file_name_not_matching_preset(tmp_path, capsys):
    src = ck_tree(tmp_path / "ck", subjects=3)
    make_image(src / "happy" / "IMG_0001.png")
    out_dir = tmp_path / "out"
    err = assert_refused(
        capsys, out_dir, "IMG_0001.png", "ingest", src, "--preset", "ckplus", "--out", out_dir / "m.parquet"
    )
    assert "does not match the subject pattern" in err
    summary = ok(capsys, "ingest", src, "--preset", "ckplus", "--skip-bad", "--out", out_dir / "m.parquet")
    assert "18 rows" in summary and "1 skipped (-v lists them)" in summary


BAD_ROWS = {
    "pixel-count": ("0,1 2 3,Training", "do not make a square image"),
    "non-int": (f"0,{pixels(1, 15)} x,Training", "space-separated integers"),
    "pixel-range": (f"0,{pixels(1, 15)} 300,Training", "0-255"),
    "emotion-range": (f"7,{pixels(1)},Training", "outside 0-6"),
    "emotion-text": (f"happy,{pixels(1)},Training", "not an integer"),
    "missing-field": ("3", "missing 'pixels'"),
    "usage": (f"0,{pixels(1)},Holdout", "Usage 'Holdout'"),
}


@pytest.mark.parametrize("case", BAD_ROWS)
def test_malformed_csv_row(tmp_path, capsys, case):
    row, reason = BAD_ROWS[case]
    csv = write_csv(tmp_path / "fer.csv", [f"0,{pixels(5)},Training", row, f"4,{pixels(6)},PrivateTest"])
    out_dir = tmp_path / "out"
    err = assert_refused(
        capsys, out_dir, "fer.csv line 3", "ingest", csv, "--format", "fer2013-csv", "--out", out_dir / "m.parquet"
    )
    assert reason in err
    ok(capsys, "ingest", csv, "--format", "fer2013-csv", "--skip-bad", "--out", out_dir / "m.parquet")
    m = read_manifest(out_dir / "m.parquet")
    assert len(m) == 2 and m.meta["skipped"][0]["file"] == "csv:3" and reason in m.meta["skipped"][0]["reason"]


def test_csv_missing_column(tmp_path, capsys):
    csv = write_csv(tmp_path / "fer.csv", ["0,Training"], header="emotion,Usage")
    err = assert_refused(
        capsys,
        tmp_path / "out",
        "fer.csv",
        "ingest",
        csv,
        "--format",
        "fer2013-csv",
        "--skip-bad",
        "--out",
        tmp_path / "out" / "m.parquet",
    )
    assert "missing column(s) pixels" in err
    write_csv(csv, [], header="emotion,pixels")
    assert "no data rows" in assert_refused(
        capsys,
        tmp_path / "out",
        "fer.csv",
        "ingest",
        csv,
        "--format",
        "fer2013-csv",
        "--out",
        tmp_path / "out" / "m.parquet",
    )


def test_source_missing_or_empty(tmp_path, capsys):
    out = tmp_path / "out" / "m.parquet"
    err = assert_refused(capsys, tmp_path / "out", "nowhere", "ingest", tmp_path / "nowhere", "--out", out)
    assert "does not exist" in err
    (tmp_path / "empty").mkdir()
    err = assert_refused(capsys, tmp_path / "out", "empty", "ingest", tmp_path / "empty", "--out", out)
    assert "is empty" in err
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert "contains no images" in assert_refused(
        capsys, tmp_path / "out", "junk", "ingest", tmp_path / "junk", "--out", out
    )


def test_no_face_found(tmp_path, capsys):
    src = tmp_path / "d"
    (src / "happy").mkdir(parents=True)
    Image.new("L", (64, 64), 128).save(src / "happy" / "blank.png")
    err = assert_refused(
        capsys, tmp_path / "out", "blank.png", "ingest", src, "--detect-faces", "--out", tmp_path / "out" / "m.parquet"
    )
    assert "no face found" in err


def test_opencv_without_cascades_is_a_clear_error(monkeypatch):
    class FakeCv2:  # what OpenCV 5 looks like to this code: no CascadeClassifier
        __version__ = "5.0.0"

    monkeypatch.setitem(sys.modules, "cv2", FakeCv2)
    faces._cascade.cache_clear()
    try:
        with pytest.raises(FesaugError, match="<5"):
            faces.detect_face(Image.new("L", (32, 32)), where="x.png")
    finally:
        faces._cascade.cache_clear()


# --------------------------------------------------------------------------------------------
# flags and outputs


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "ckplus", "--subject-pattern", "(S.*)_"], "pass only one"),
        (["--subject-pattern", "(unclosed"], "not a valid regular expression"),
        (["--subject-pattern", "(a)(b)"], "exactly one"),
        (["--folds", "5"], "--preset"),
        (["--preset", "nope"], "nope"),
    ],
)
def test_usage_errors(tmp_path, capsys, args, message):
    src = make_tree(tmp_path / "d", {"happy": 1})
    code, _, err = cli(capsys, "ingest", src, "--out", tmp_path / "m.parquet", *args)
    assert code == 2 and err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and message in err
    assert not (tmp_path / "m.parquet").exists()


def test_overwrite_refused_then_replaced(tmp_path, capsys):
    csv = write_csv(tmp_path / "fer.csv", [f"0,{pixels(1)},Training", f"3,{pixels(2)},Training"])
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", csv, "--format", "fer2013-csv", "--out", out)
    before = out.read_bytes()
    code, _, err = cli(capsys, "ingest", csv, "--format", "fer2013-csv", "--out", out)
    assert code == 1 and "already exists" in err and "--overwrite" in err and out.read_bytes() == before

    write_csv(csv, [f"4,{pixels(3)},Training"])
    ok(capsys, "ingest", csv, "--format", "fer2013-csv", "--overwrite", "--out", out)
    assert read_manifest(out).df["label_name"].tolist() == ["sadness"]
    assert [
        p.relative_to(tmp_path / "m-images").as_posix() for p in sorted((tmp_path / "m-images").rglob("*.png"))
    ] == ["sadness/fer-000002.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fer.csv", "m-images", "m.parquet"]


def test_failed_run_keeps_previous_outputs(tmp_path, capsys):
    src = ck_tree(tmp_path / "ck", subjects=3)
    out = tmp_path / "out" / "m.parquet"
    ok(capsys, "ingest", src, "--preset", "ckplus", "--size", 8, "--out", out)
    before = {p: p.read_bytes() for p in sorted(out.parent.rglob("*")) if p.is_file()}
    # Images are produced before the fold assignment fails (3 subjects, 5 folds).
    code, _, err = cli(
        capsys, "ingest", src, "--preset", "ckplus", "--size", 16, "--folds", 5, "--overwrite", "--out", out
    )
    assert code == 1 and "3 subject" in err
    assert {p: p.read_bytes() for p in sorted(out.parent.rglob("*")) if p.is_file()} == before


def test_console_script_default_out(tmp_path):
    src = make_tree(tmp_path / "my-data", {"happy": 1, "sad": 1})
    done = run_cli("ingest", src, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert read_manifest(tmp_path / "manifests" / "my-data.parquet").df["label_name"].tolist() == ["happy", "sadness"]
    (src / "sad" / "sad_0.png").write_bytes(b"")
    done = run_cli("ingest", src, "--out", tmp_path / "x.parquet", cwd=tmp_path)
    assert (
        done.returncode == 1
        and done.stderr.startswith("Error:")
        and "sad_0.png" in done.stderr
        and "Traceback" not in done.stderr
    )


# --------------------------------------------------------------------------------------------
# real data (research-only: read in place, derived images only in tmp_path; `ckplus_dir` skips when absent)


@pytest.mark.ckplus
def test_ckplus48_real(tmp_path, capsys, ckplus_dir):
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", ckplus_dir, "--preset", "ckplus", "--folds", 10, "--out", out)
    m = read_manifest(out)
    df = m.df
    assert len(df) == 981 and df["subject_id"].nunique() == 118
    assert df["label_name"].value_counts().to_dict() == {
        "anger": 135,
        "contempt": 54,
        "disgust": 177,
        "fear": 75,
        "happy": 207,
        "sadness": 84,
        "surprise": 249,
    }
    assert sorted(set(df["fold"])) == list(range(10))
    assert (df.groupby("subject_id")["fold"].nunique() == 1).all()
    assert (df.groupby(df["source_file"].str.split("/").str[1].str[:8])["fold"].nunique() == 1).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.parquet"]
    assert m.open_image(0).size == (48, 48)


@pytest.mark.ckplus
def test_detect_faces_finds_pasted_ckplus_face(tmp_path, capsys, ckplus_dir):
    face = (
        Image.open(ckplus_dir / "anger" / "S010_004_00000017.png")
        .convert("L")
        .resize((160, 160), Image.Resampling.BICUBIC)
    )
    canvas = Image.new("L", (480, 400), 128)
    canvas.paste(face, (200, 120))
    box = faces.detect_face(canvas, where="canvas")
    left, top, right, bottom = box
    assert right - left == bottom - top  # square
    overlap = max(0, min(right, 360) - max(left, 200)) * max(0, min(bottom, 280) - max(top, 120))
    assert overlap >= 0.8 * 160 * 160

    src = tmp_path / "d"
    (src / "anger").mkdir(parents=True)
    canvas.save(src / "anger" / "S010_004_00000017.png")
    out = tmp_path / "m.parquet"
    ok(capsys, "ingest", src, "--detect-faces", "--size", 48, "--preset", "ckplus", "--out", out)
    m = read_manifest(out)
    assert (int(m.df["width"].iloc[0]), int(m.df["height"].iloc[0])) == (48, 48)
    assert m.meta["detect_faces"] is True and m.meta["size"] == 48


# --------------------------------------------------------------------------------------------
# colour


def colour_image(path: Path, mode: str = "RGB", size: tuple[int, int] = (16, 16), **save: object) -> Path:
    """A small colour noise image (red-heavy, so it has colour in every mode), saved as ``mode``."""
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    arr[..., 0] = np.maximum(arr[..., 0], 200)
    img = Image.fromarray(arr)
    if mode == "RGBA":
        img = img.convert("RGBA")
        img.putalpha(200)
    elif mode == "P":
        img = img.quantize(colors=16)
    elif mode != "RGB":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **save)
    return path


def colour_tree(root: Path) -> Path:
    """Two classes of RGB, RGBA, palette and CMYK (JPEG) images, and one gray image."""
    for cls in ("anger", "happy"):
        colour_image(root / cls / "rgb.png")
        colour_image(root / cls / "rgba.png", "RGBA")
        colour_image(root / cls / "palette.png", "P")
        colour_image(root / cls / "cmyk.jpg", "CMYK")
        make_image(root / cls / "gray.png")
    return root


def test_colour_images_make_a_colour_manifest(tmp_path: Path, capsys) -> None:
    src = colour_tree(tmp_path / "src")
    out = ok(capsys, "ingest", src, "--out", tmp_path / "m.parquet")
    assert "colour (RGB) images referenced in place" in out
    m = read_manifest(tmp_path / "m.parquet")
    assert m.channels == 3 and m.meta["color"] == "auto" and len(m) == 10
    for i in range(len(m)):
        img = m.open_image(i)
        assert img.mode == "RGB" and img.size == (16, 16)
    # The gray file reads as three equal channels; a colour one keeps its colour.
    gray = np.asarray(m.open_image(int(np.flatnonzero(m.df["source_file"] == "anger/gray.png")[0])))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    rgb = np.asarray(m.open_image(int(np.flatnonzero(m.df["source_file"] == "anger/rgb.png")[0])), dtype=int)
    assert rgb[..., 0].mean() > rgb[..., 2].mean() + 50
    from fesaug.data.datasets import ManifestDataset

    assert tuple(ManifestDataset(m).pixels.shape) == (10, 3, 16, 16)


def test_grayscale_and_color_force_the_channels(tmp_path: Path, capsys) -> None:
    src = colour_tree(tmp_path / "src")
    out = ok(capsys, "ingest", src, "--out", tmp_path / "g.parquet", "--grayscale", "--size", "8")
    assert "gray images in" in out
    m = read_manifest(tmp_path / "g.parquet")
    assert m.channels == 1 and {m.open_image(i).mode for i in range(len(m))} == {"L"}
    # Produced images are stored as read: gray PNGs, identical to the gray decode of the source resized.
    stored = Image.open(m.image_root / m.df["image"].iat[0]["path"])
    assert stored.mode == "L" and stored.size == (8, 8)
    gray_src = make_tree(tmp_path / "gray", {"anger": 2, "happy": 2})
    ok(capsys, "ingest", gray_src, "--out", tmp_path / "c.parquet", "--color")
    forced = read_manifest(tmp_path / "c.parquet")
    assert forced.channels == 3 and forced.open_image(0).mode == "RGB"
    ok(capsys, "ingest", gray_src, "--out", tmp_path / "a.parquet")
    assert read_manifest(tmp_path / "a.parquet").channels == 1  # gray images: a gray manifest


def test_a_colour_csv_or_resize_keeps_colour_pngs(tmp_path: Path, capsys) -> None:
    src = colour_tree(tmp_path / "src")
    ok(capsys, "ingest", src, "--out", tmp_path / "m.parquet", "--size", "12")
    m = read_manifest(tmp_path / "m.parquet")
    modes = {Image.open(m.image_root / p).mode for p in (img["path"] for img in m.df["image"])}
    assert modes == {"RGB", "L"}  # colour images as RGB PNGs, the gray one as a gray PNG
    assert m.channels == 3 and set(m.df["width"]) == {12}


def test_exif_rotated_photo_is_ingested_upright(tmp_path: Path, capsys) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways; shown rotated 90 degrees clockwise
    for cls in ("anger", "happy"):
        colour_image(tmp_path / "src" / cls / "phone.jpg", size=(24, 16), exif=exif)
    ok(capsys, "ingest", tmp_path / "src", "--out", tmp_path / "m.parquet")
    m = read_manifest(tmp_path / "m.parquet")
    assert m.df["width"].tolist() == [16, 16] and m.df["height"].tolist() == [24, 24]
    assert m.open_image(0).size == (16, 24)
