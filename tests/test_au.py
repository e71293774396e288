"""Action units: FACS ids, the emotion -> AU table, AU label side files and ``ingest --au-labels``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fesaug.data.au import EMOTION_AU_PROTOTYPES, au_consistency, parse_au_id, read_au_labels
from fesaug.data.demo import AU_PROTOTYPES
from fesaug.data.labels import CANONICAL, CKPLUS_CLASSES
from fesaug.data.manifest import read_manifest
from fesaug.utils.errors import FesaugError

from .test_ingest import assert_refused, make_image, ok


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --------------------------------------------------------------------------------------------
# ids and the prototype table


@pytest.mark.parametrize("value", [12, "12", "AU12", "au12", "AU 12", " Au12 "])
def test_parse_au_id_forms(value):
    assert parse_au_id(value) == 12


@pytest.mark.parametrize("value", [0, -3, "0", "AU0", "AU-1", "AU12A", "twelve", "", 1.0, True, None])
def test_parse_au_id_rejects(value):
    with pytest.raises(FesaugError, match="not an action unit id") as info:
        parse_au_id(value)
    assert repr(value) in str(info.value)


def test_prototype_table_covers_every_ckplus_class():
    assert set(EMOTION_AU_PROTOTYPES) == set(CANONICAL) and set(CKPLUS_CLASSES) < set(EMOTION_AU_PROTOTYPES)
    assert EMOTION_AU_PROTOTYPES["neutral"] == ()
    assert EMOTION_AU_PROTOTYPES["happy"] == (6, 12) and EMOTION_AU_PROTOTYPES["contempt"] == (12, 14)
    for emotion, aus in EMOTION_AU_PROTOTYPES.items():
        assert list(aus) == sorted(set(aus)) and all(parse_au_id(a) == a for a in aus), emotion
        if emotion != "neutral":
            assert aus, emotion
    # The demo renders the same prototypes, plus optional AUs; disgust lacks AU16 there (see au.py).
    for emotion, aus in EMOTION_AU_PROTOTYPES.items():
        missing = set(aus) - set(AU_PROTOTYPES[emotion])
        assert missing == ({16} if emotion == "disgust" else set()), emotion


def test_au_consistency_reads_the_prototype_table() -> None:
    probs = torch.tensor([[0.9, 0.1, 0.7], [0.2, 0.8, 0.1]])
    au_ids = [6, 4, 12]  # happy = AU6 + AU12; anger's AU4 is the only one of 4+5+7+23 known here
    assert torch.allclose(au_consistency(probs, au_ids, "happy"), torch.tensor([0.8, 0.15]))
    assert torch.allclose(au_consistency(probs, au_ids, "anger"), torch.tensor([0.1, 0.8]))
    assert au_consistency(probs, au_ids, "neutral") is None


# --------------------------------------------------------------------------------------------
# side files


def test_csv_au_columns_occurrence_intensity_and_letters(tmp_path):
    # Columns that only resemble an AU by their first letters or digits are not labels.
    f = write(
        tmp_path / "l.csv",
        "file,AU12,au 1,emotion,AU4,author,2nd_rater\n"
        "a.png,1,0,happy,,x,y\n"
        "b.png,0.6,C,sad,0.1,x,y\n"
        "c.png,e,0,anger,1.0,x,y\n",
    )
    labels = read_au_labels(f)
    assert labels.au_ids == (1, 4, 12)
    assert labels.occurrence == {"a.png": [0, 0, 1], "b.png": [1, 0, 1], "c.png": [0, 1, 1]}
    assert labels.intensity["a.png"] is None  # occurrences only
    assert labels.intensity["b.png"] == [0.6, 0.1, 0.6] and labels.intensity["c.png"] == [0.0, 1.0, 1.0]
    assert labels.has_intensity and labels.where["b.png"] == "l.csv line 3"


def test_csv_facs_code_column(tmp_path):
    f = write(tmp_path / "l.csv", "File,aus\nx/a.png,1+2+5B+26\nb.png,R12A+R14A\nc.png,\n")
    labels = read_au_labels(f)
    assert labels.au_ids == (1, 2, 5, 12, 14, 26)
    assert labels.occurrence == {"x/a.png": [1, 1, 1, 0, 0, 1], "b.png": [0, 0, 0, 1, 1, 0], "c.png": [0] * 6}
    # Listed AUs without a letter have unknown intensity; unlisted ones have none.
    assert labels.intensity == {
        "x/a.png": [None, None, 0.4, 0.0, 0.0, None],
        "b.png": [0, 0, 0, 0.2, 0.2, 0],
        "c.png": None,
    }


def test_json_lists_and_objects(tmp_path):
    f = write(tmp_path / "l.json", json.dumps({"a.png": [1, 2, 26], "b.png": "6+12", "c.png": []}))
    labels = read_au_labels(f)
    assert labels.au_ids == (1, 2, 6, 12, 26) and not labels.has_intensity
    assert labels.occurrence == {"a.png": [1, 1, 0, 0, 1], "b.png": [0, 0, 1, 1, 0], "c.png": [0] * 5}

    f = write(tmp_path / "m.json", json.dumps({"a.png": {"AU1": 1, "AU12": 0.6}, "b.png": {"au12": "B", "AU1": 0}}))
    labels = read_au_labels(f)
    assert labels.au_ids == (1, 12)
    assert labels.occurrence == {"a.png": [1, 1], "b.png": [0, 1]}
    assert labels.intensity == {"a.png": [None, 0.6], "b.png": [0.0, 0.4]}


BAD_SIDE_FILES = {
    "no-file-column": ("l.csv", "name,AU1\na.png,1\n", "line 1: no 'file' column"),
    "bad-au-column": ("l.csv", "file,AU0\na.png,1\n", "'AU0' is not an action unit id"),
    "openface-column": ("l.csv", "file,AU12_r\na.png,1\n", "column 'AU12_r' starts like an AU but is not one"),
    "no-au-column": ("l.csv", "file,AUx\na.png,1\n", "no AU columns"),
    "out-of-range": ("l.csv", "file,AU1\na.png,1\nb.png,3\n", "l.csv line 3: AU1 value '3' is out of range"),
    "nan": ("l.csv", "file,AU1\na.png,nan\n", "out of range"),
    "bad-code": ("l.csv", "file,aus\na.png,1+X\n", "l.csv line 2: 'X' is not an action unit"),
    "duplicate": (
        "l.csv",
        "file,aus\na.png,1\nb.png,2\n./a.png,4\n",
        "l.csv line 4: 'a.png' already has AU labels (l.csv line 2)",
    ),
    "json-duplicate": ("l.json", '{"a.png": [1], "a.png": [2]}', "'a.png' already has AU labels"),
    "json-bad-id": ("l.json", '{"a.png": {"AU0": 1}}', "entry 'a.png': 'AU0' is not an action unit id"),
    "json-range": ("l.json", '{"a.png": {"AU1": 1.5}}', "AU1 value 1.5 is out of range"),
    "json-shape": ("l.json", "[1, 2]", "expected an object"),
    "json-syntax": ("l.json", '{"a.png": [1,}', "line 1: not valid JSON"),
    "format": ("l.txt", "a.png 1", "give a .csv or .json"),
    "empty": ("l.json", "{}", "has no entries"),
}


@pytest.mark.parametrize("case", BAD_SIDE_FILES)
def test_bad_side_file(tmp_path, case):
    name, text, message = BAD_SIDE_FILES[case]
    with pytest.raises(FesaugError) as info:
        read_au_labels(write(tmp_path / name, text))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unreadable_side_file(tmp_path):
    with pytest.raises(FesaugError, match="cannot read --au-labels .*missing.csv"):
        read_au_labels(tmp_path / "missing.csv")
    (tmp_path / "bin.csv").write_bytes(b"file,AU1\n\xff\xfe,1\n")
    with pytest.raises(FesaugError, match="not UTF-8"):
        read_au_labels(tmp_path / "bin.csv")


# --------------------------------------------------------------------------------------------
# ingest --au-labels


@pytest.fixture
def src(tmp_path) -> Path:
    root = tmp_path / "data"
    for rel in (
        "happy/S005_001_01.png",
        "happy/S006_001_01.png",
        "surprise/S005_002_01.png",
        "anger/x/S007_001_01.png",
    ):
        make_image(root / rel)
    return root


def test_ingest_with_au_labels(tmp_path, capsys, src):
    labels = write(
        tmp_path / "aus.csv",
        "file,aus\n"
        "happy/S005_001_01.png,6+12C\n"  # path relative to SRC
        "S005/002/S005_002_01.png,1+2+5B+26\n"  # CK+'s own tree: unique file name
        "S007_001_01.png,4+5+7+23\n",
    )  # bare file name
    out = tmp_path / "out" / "m.parquet"
    summary = ok(capsys, "ingest", src, "--au-labels", labels, "--out", out)
    assert "4 rows (3 with AU labels)" in summary

    m = read_manifest(out)
    assert m.meta["au_ids"] == [1, 2, 4, 5, 6, 7, 12, 23, 26]
    rows = m.df.set_index("source_file")
    occ = {f: (list(v) if v is not None else None) for f, v in rows["au_occurrence"].items()}
    assert occ == {
        "happy/S005_001_01.png": [0, 0, 0, 0, 1, 0, 1, 0, 0],
        "happy/S006_001_01.png": None,  # no entry: the AU task skips this row
        "surprise/S005_002_01.png": [1, 1, 0, 1, 0, 0, 0, 0, 1],
        "anger/x/S007_001_01.png": [0, 0, 1, 1, 0, 1, 0, 1, 0],
    }
    intensity = rows["au_intensity"]
    assert intensity["happy/S006_001_01.png"] is None and intensity["anger/x/S007_001_01.png"] is None
    happy = list(intensity["happy/S005_001_01.png"])
    assert happy[6] == pytest.approx(0.6) and happy[:4] == [0, 0, 0, 0] and happy[4] != happy[4]  # AU6: unknown (NaN)


def test_ingest_occurrence_only_writes_no_intensity_column(tmp_path, capsys, src):
    labels = write(tmp_path / "aus.json", json.dumps({"S006_001_01.png": [6, 12]}))
    out = tmp_path / "m.parquet"
    assert "(1 with AU labels)" in ok(capsys, "ingest", src, "--au-labels", labels, "--out", out)
    m = read_manifest(out)
    assert "au_intensity" not in m.df.columns and m.meta["au_ids"] == [6, 12]
    assert m.df["au_occurrence"].notna().sum() == 1


def test_ingest_without_au_labels_has_no_au_columns(tmp_path, capsys, src):
    out = tmp_path / "m.parquet"
    assert "AU labels" not in ok(capsys, "ingest", src, "--out", out)
    m = read_manifest(out)
    assert "au_occurrence" not in m.df.columns and "au_ids" not in m.meta


BAD_INGEST = {
    "unknown-file": (
        "file,AU1\nhappy/S005_001_01.png,1\nnope.png,1\n",
        "aus.csv line 3: 'nope.png' matches no ingested image",
    ),
    "ambiguous-name": ("file,AU1\nS005_001_01.png,1\n", None),  # made ambiguous below
    "bad-au-id": ("file,AU1,AU4_c\nhappy/S005_001_01.png,1,0\n", "column 'AU4_c' starts like an AU but is not one"),
    "out-of-range": ("file,AU1\nhappy/S005_001_01.png,2\n", "aus.csv line 2: AU1 value '2' is out of range"),
    "duplicate": (
        "file,AU1\nhappy/S005_001_01.png,1\nhappy/S005_001_01.png,0\n",
        "line 3: 'happy/S005_001_01.png' already has AU labels",
    ),
    "same-image-twice": ("file,AU1\nhappy/S006_001_01.png,1\nS006_001_01.png,0\n", "both label happy/S006_001_01.png"),
}


@pytest.mark.parametrize("case", BAD_INGEST)
def test_ingest_bad_au_labels_refused(tmp_path, capsys, src, case):
    text, message = BAD_INGEST[case]
    if message is None:
        make_image(src / "surprise" / "S005_001_01.png")
        message = "'S005_001_01.png' matches 2 images (happy/S005_001_01.png, surprise/S005_001_01.png)"
    labels = write(tmp_path / "aus.csv", text)
    out_dir = tmp_path / "out"
    err = assert_refused(capsys, out_dir, message, "ingest", src, "--au-labels", labels, "--out", out_dir / "m.parquet")
    assert err.count("Error:") == 1 and err.count("\n") == 1


def test_unmatched_entries_listed_then_skipped(tmp_path, capsys, src):
    rows = "".join(f"gone{i}.png,1\n" for i in range(5))
    labels = write(tmp_path / "aus.csv", f"file,AU1\nhappy/S005_001_01.png,1\n{rows}")
    out_dir = tmp_path / "out"
    err = assert_refused(
        capsys,
        out_dir,
        "5 entries without an image",
        "ingest",
        src,
        "--au-labels",
        labels,
        "--out",
        out_dir / "m.parquet",
    )
    assert "'gone2.png'" in err and "'gone3.png'" not in err and "and 2 more" in err and "--skip-bad" in err

    summary = ok(capsys, "ingest", src, "--au-labels", labels, "--skip-bad", "-v", "--out", out_dir / "m.parquet")
    assert "(1 with AU labels)" in summary and "5 skipped" in summary
    assert "skipped aus.csv line 4: 'gone1.png' matches no ingested image" in summary
    skipped = read_manifest(out_dir / "m.parquet").meta["skipped"]
    assert [r["file"] for r in skipped] == [f"aus.csv line {i}" for i in range(3, 8)]


def test_labels_of_an_image_skipped_by_the_scan_are_not_a_second_problem(tmp_path, capsys, src):
    make_image(src / "happy" / "IMG_1.png")  # refused by the subject pattern
    labels = write(tmp_path / "aus.csv", "file,AU1\nhappy/S005_001_01.png,1\nIMG_1.png,1\n")
    summary = ok(
        capsys,
        "ingest",
        src,
        "--subject-pattern",
        r"^(S\d+)_",
        "--au-labels",
        labels,
        "--skip-bad",
        "-v",
        "--out",
        tmp_path / "m.parquet",
    )
    assert "1 skipped" in summary and "skipped happy/IMG_1.png" in summary and "(1 with AU labels)" in summary


def test_au_labels_with_fer2013_csv_is_a_usage_error(tmp_path, capsys):
    from .test_ingest import cli, pixels, write_csv

    csv = write_csv(tmp_path / "fer.csv", [f"0,{pixels(1)},Training"])
    labels = write(tmp_path / "aus.json", '{"a.png": [1]}')
    code, _, err = cli(
        capsys, "ingest", csv, "--format", "fer2013-csv", "--au-labels", labels, "--out", tmp_path / "m.parquet"
    )
    assert code == 2 and err.startswith("Error:") and "FER2013" in err and not (tmp_path / "m.parquet").exists()
