"""Hugging Face datasets in and out: `fesaug ingest --format hf` (saved datasets and folders
load_dataset reads; class names mapped to fesaug's; splits, subjects, folds; bad input) and
fesaug.to_hf_dataset (Image and ClassLabel features, provenance columns, images that open from
any working directory); a round trip keeps every image and label."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fesaug
from fesaug.data.demo import make_demo_dataset
from fesaug.data.ingest import ingest
from fesaug.data.manifest import read_manifest
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process

datasets = pytest.importorskip("datasets")  # the hf extra; the dev extra installs it


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    counts = {"anger": 3, "happy": 4, "surprise": 5}
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), counts=counts, n_subjects=4, size=24, folds=2)


def _encoded(seed: int, fmt: str) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    """A DatasetDict as users publish them: colour JPEG and PNG bytes, a ClassLabel in its own
    spelling, subjects in a column, train and test splits."""
    features = datasets.Features(
        {
            "img": datasets.Image(),
            "emotion": datasets.ClassLabel(names=["angry", "happiness", "sad"]),
            "person": datasets.Value("string"),
        }
    )
    rows = {
        "img": [{"bytes": _encoded(i, "JPEG" if i % 2 else "PNG"), "path": None} for i in range(12)],
        "emotion": [i % 3 for i in range(12)],
        "person": [f"p{i % 4}" for i in range(12)],
    }
    full = datasets.Dataset.from_dict(rows, features=features)
    splits = datasets.DatasetDict({"train": full.select(range(9)), "test": full.select(range(9, 12))})
    splits.save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


def test_ingest_a_saved_dataset_dict(saved: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "m.parquet"
    code, stdout, err = cli_in_process(
        capsys, "ingest", saved, "--format", "hf", "--image-column", "img", "--label-column", "emotion",
        "--subject-column", "person", "--folds", "2", "--out", out,
    )  # fmt: skip
    assert code == 0, err
    assert "12 rows, 4 subjects, 3 classes (anger 4, happy 4, sadness 4), 2 folds" in stdout
    m = read_manifest(out)
    assert m.classes == ["anger", "happy", "sadness"]
    assert m.df["split"].tolist() == ["train"] * 9 + ["test"] * 3
    assert m.df["subject_id"].tolist() == [f"p{i % 4}" for i in range(12)]
    assert m.df.groupby("subject_id")["fold"].nunique().max() == 1  # subject-independent folds
    assert m.df["label_name"].tolist() == [["anger", "happy", "sadness"][i % 3] for i in range(12)]
    # Images kept as they came, in their own format (fesaug decodes them to gray when it reads them).
    for i in range(12):
        path = m.image_root / m.df["image"].iat[i]["path"]
        assert path.suffix == (".jpg" if i % 2 else ".png") and path.read_bytes() == _encoded(
            i, "JPEG" if i % 2 else "PNG"
        )
    assert m.meta["columns"] == {"image": "img", "label": "emotion", "subject": "person", "split": None}


def test_ingest_a_folder_load_dataset_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")  # load_dataset converts into it
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    rows = {
        "image": [{"bytes": _encoded(i, "PNG"), "path": None} for i in range(6)],
        "label": ["fear", "surprised"] * 3,
    }
    (tmp_path / "data").mkdir()
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "data" / "train.parquet"))
    result = ingest(tmp_path / "data", tmp_path / "m.parquet", format="hf", embed=True)
    assert result.class_counts == {"fear": 3, "surprise": 3} and result.storage == "embedded"
    m = read_manifest(result.manifest)
    assert m.df["image"].iat[0]["bytes"] == _encoded(0, "PNG")


def test_round_trip_keeps_images_and_labels_from_any_working_directory(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    original = read_manifest(demo)
    ds = fesaug.to_hf_dataset(demo)
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == original.classes
    for column in ("sample_id", "subject_id", "fold", "split", "origin", "parent_id", "generator", "sha256"):
        assert column in ds.column_names
    assert ds["subject_id"] == original.df["subject_id"].tolist() and ds["fold"] == original.df["fold"].tolist()
    assert '"fesaug"' in ds.info.description and str(demo) in ds.info.description
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # images referenced by path still open
    decoded = [np.asarray(original.open_image(i)) for i in range(len(original))]
    assert all(np.array_equal(np.asarray(ds[i]["image"].convert("L")), decoded[i]) for i in range(len(ds)))
    ds.save_to_disk(str(tmp_path / "saved"))
    code, _, err = cli_in_process(
        capsys, "ingest", tmp_path / "saved", "--format", "hf", "--subject-column", "subject_id",
        "--split-column", "split", "--out", tmp_path / "back.parquet",
    )  # fmt: skip
    assert code == 0, err
    back = read_manifest(tmp_path / "back.parquet")
    assert back.classes == original.classes
    assert back.df["sample_id"].tolist() == original.df["sample_id"].tolist()
    assert back.df["label_name"].tolist() == original.df["label_name"].tolist()
    assert back.df["subject_id"].tolist() == original.df["subject_id"].tolist()
    assert all(np.array_equal(np.asarray(back.open_image(i)), decoded[i]) for i in range(len(back)))
    again = fesaug.to_hf_dataset(back, embed_images=True)
    assert again["label"] == ds["label"] and again[0]["image"].size == (24, 24)


@pytest.mark.parametrize(
    "options, message",
    [
        (["--label-column", "mood"], "has no column 'mood'; its columns are img, emotion, person"),
        (["--image-column", "person"], "column 'person' holds Value('string'), not images"),
        (["--label-column", "person"], "unknown class name(s) 'p0', 'p1', 'p2', 'p3'"),
        (["--split-column", "person"], "split 'p0' in column 'person' is not train, validation or test"),
        (["--folds", "2"], "--folds needs subject ids so that no subject is in two folds; pass --subject-column"),
        (["--preset", "ckplus"], "--format hf reads subject ids from a column; pass --subject-column"),
    ],
)
def test_bad_hf_input_is_one_error_line(saved: Path, tmp_path: Path, capsys, options: list, message: str) -> None:
    base = ["--image-column", "img", "--label-column", "emotion"]
    code, _, err = cli_in_process(
        capsys, "ingest", saved, "--format", "hf", *base, *options, "--out", tmp_path / "m.parquet"
    )
    assert code in (1, 2) and err.startswith("Error: ") and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "m.parquet").exists()


def test_integer_labels_without_names_and_column_flags_without_hf_are_refused(tmp_path: Path, capsys) -> None:
    rows = {"image": [{"bytes": _encoded(i, "PNG"), "path": None} for i in range(4)], "label": [0, 1, 0, 1]}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "ints"))
    with pytest.raises(FesaugError, match=r"holds Value\('int64'\), which names no classes; give it class names"):
        ingest(tmp_path / "ints", tmp_path / "m.parquet", format="hf")
    code, _, err = cli_in_process(capsys, "ingest", tmp_path, "--label-column", "x", "--out", tmp_path / "m.parquet")
    assert code == 2 and "--label-column names a column of a Hugging Face dataset; it needs --format hf" in err


def test_unknown_classes_are_skipped_with_skip_bad(tmp_path: Path) -> None:
    rows = {"image": [{"bytes": _encoded(i, "PNG"), "path": None} for i in range(4)], "label": ["happy", "bored"] * 2}
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("string")})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "d"))
    result = ingest(tmp_path / "d", tmp_path / "m.parquet", format="hf", skip_bad=True)
    assert result.class_counts == {"happy": 2}
    assert result.skipped == [{"file": f"hf:train/{i}", "reason": "unknown class name 'bored'"} for i in (1, 3)]


def test_a_missing_hf_extra_names_the_extra(demo: Path, saved: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # what `import datasets` meets when it is not installed
    with pytest.raises(FesaugError, match=r"needs the Hugging Face 'datasets' package.*pip install 'fesaug\[hf\]'"):
        fesaug.to_hf_dataset(demo)
    code, _, err = cli_in_process(capsys, "ingest", saved, "--format", "hf", "--out", tmp_path / "m.parquet")
    assert code == 1 and "pip install 'fesaug[hf]'" in err and len(err.strip().splitlines()) == 1


def test_a_colour_manifest_opens_in_colour(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    colour = make_demo_dataset(tmp_path / "d", counts={"anger": 3, "happy": 3}, n_subjects=3, folds=2, color=True)
    ds = fesaug.to_hf_dataset(colour)
    assert ds.features["image"] == datasets.Image(mode="RGB") and ds[0]["image"].mode == "RGB"
    m = read_manifest(colour)
    assert np.array_equal(np.asarray(ds[0]["image"]), np.asarray(m.open_image(0)))
    loaded = datasets.load_dataset("parquet", data_files=str(colour), split="train", cache_dir=str(tmp_path / "hf"))
    assert loaded.features["image"].mode == "RGB"
