"""`fesaug audit`: exact histogram numbers, every problem kind, and the command's output modes."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from fesaug.audit.report import audit, report_figure
from fesaug.data.images import sha256_bytes
from fesaug.data.manifest import write_manifest
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process as cli
from .conftest import png_bytes, run_cli

CLASSES = ["anger", "fear", "happy"]


def _rows(tmp_path: Path) -> list[dict]:
    """A clean manifest's rows. Three subjects, one per fold; anger 4 real, fear 1 real + 3
    synthetic, happy 2 real. Images alternate between embedded bytes and files beside it."""
    real = [  # sample_id, label, subject, fold, embedded
        ("r0", 0, "P0", 0, True),
        ("r1", 0, "P0", 0, False),
        ("r2", 2, "P0", 0, False),
        ("r3", 0, "P1", 1, True),
        ("r4", 1, "P1", 1, False),
        ("r5", 2, "P1", 1, True),
        ("r6", 0, "P2", 2, False),
    ]
    (tmp_path / "img").mkdir()
    rows = []
    for seed, (sid, label, subject, fold, embedded) in enumerate(real):
        data = png_bytes(seed, size=8)
        if not embedded:
            (tmp_path / "img" / f"{sid}.png").write_bytes(data)
        rows.append(
            {
                "sample_id": sid,
                "image": {"bytes": data if embedded else None, "path": f"img/{sid}.png"},
                "label": label,
                "subject_id": subject,
                "fold": fold,
                "split": "train",
                "origin": "real",
                "width": 8,
                "height": 8,
                "sha256": sha256_bytes(data),
            }
        )
    for k, parent in enumerate(["r0", "r3", "r6"]):
        p = next(r for r in rows if r["sample_id"] == parent)
        data = png_bytes(100 + k, size=8)
        rows.append(
            {
                "sample_id": f"s{k}",
                "image": {"bytes": data, "path": None},
                "label": 1,
                "subject_id": p["subject_id"],
                "fold": p["fold"],
                "split": "train",
                "origin": "synthetic",
                "parent_id": parent,
                "source_label": p["label"],
                "generator": "g1",
                "seed": k,
                "width": 8,
                "height": 8,
                "sha256": sha256_bytes(data),
            }
        )
    return rows


def _write(tmp_path: Path, rows: list[dict], meta: dict | None = None, classes: list[str] = CLASSES) -> Path:
    return write_manifest(pd.DataFrame(rows), tmp_path / "m.parquet", classes=classes, meta=meta, overwrite=True)


def _as_footer_version_1(path: Path) -> None:
    """Rewrite ``path``'s footer with ``schema_version`` 1, as manifests of older versions carry it."""
    table = pq.read_table(path)
    md = dict(table.schema.metadata)
    md[b"fesaug"] = json.dumps({**json.loads(md[b"fesaug"]), "schema_version": 1}, sort_keys=True).encode()
    pq.write_table(table.replace_schema_metadata(md), path)


def _set(rows: list[dict], sample_id: str, **changes: object) -> None:
    next(r for r in rows if r["sample_id"] == sample_id).update(changes)


@pytest.fixture
def clean(tmp_path: Path) -> Path:
    return _write(tmp_path, _rows(tmp_path))


# --- numbers -------------------------------------------------------------------------------------


def test_histogram_counts_are_exact(clean: Path) -> None:
    report = audit(clean)
    assert {name: (c.real, c.synthetic, c.total) for name, c in report.classes.items()} == {
        "anger": (4, 0, 4),
        "fear": (1, 3, 4),
        "happy": (2, 0, 2),
    }
    assert (report.total, report.real, report.synthetic) == (10, 7, 3)
    assert report.imbalance_ratio == 2.0
    assert report.subjects == 3
    assert report.problems == [] and report.images_checked


def test_breakdown_by_fold_and_target_shortfall(clean: Path) -> None:
    report = audit(clean, by="fold", target=5)
    assert [g.value for g in report.groups] == [0, 1, 2]
    assert {g.value: {n: (c.real, c.synthetic) for n, c in g.classes.items()} for g in report.groups} == {
        0: {"anger": (2, 0), "fear": (0, 1), "happy": (1, 0)},
        1: {"anger": (1, 0), "fear": (1, 1), "happy": (1, 0)},
        2: {"anger": (1, 0), "fear": (0, 1), "happy": (0, 0)},
    }
    assert report.shortfall == {"anger": 1, "fear": 1, "happy": 3}
    by_origin = audit(clean, by="origin", check_images=False)
    assert [(g.value, g.total) for g in by_origin.groups] == [("real", 7), ("synthetic", 3)]


def test_rows_without_fold_form_their_own_group(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    for r in rows:
        if r["subject_id"] == "P2":
            r["fold"] = None
    report = audit(_write(tmp_path, rows), by="fold")
    assert [(g.value, g.total) for g in report.groups] == [(0, 4), (1, 4), (None, 2)]
    assert report.problems == []


def test_empty_class_makes_the_ratio_undefined(tmp_path: Path) -> None:
    path = _write(tmp_path, _rows(tmp_path), classes=[*CLASSES, "surprise"])
    report = audit(path)
    assert report.classes["surprise"].total == 0
    assert report.imbalance_ratio is None
    [problem] = report.problems
    assert problem.kind == "empty_class" and problem.count == 1 and problem.details == {"classes": ["surprise"]}
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["imbalance_ratio"] is None


# --- problems ------------------------------------------------------------------------------------


def _delete_file(rows: list[dict], tmp: Path) -> None:
    (tmp / "img" / "r1.png").unlink()


def _corrupt_file(rows: list[dict], tmp: Path) -> None:
    (tmp / "img" / "r1.png").write_bytes(b"not an image at all")


def _change_file(rows: list[dict], tmp: Path) -> None:
    (tmp / "img" / "r1.png").write_bytes(png_bytes(999, size=8))


def _duplicate(rows: list[dict], tmp: Path) -> None:
    r0 = next(r for r in rows if r["sample_id"] == "r0")
    rows.append({**r0, "sample_id": "r0-copy"})


MUTATIONS: dict[str, tuple[Callable[[list[dict], Path], None], tuple[str, ...], list[str]]] = {
    # name: (change to the clean data, the problem kinds it causes (the main one first), its sample ids)
    "missing file": (_delete_file, ("missing_image",), ["r1"]),
    "corrupt file": (_corrupt_file, ("unreadable_image",), ["r1"]),
    "file changed after ingest": (_change_file, ("hash_mismatch",), ["r1"]),
    "duplicate image": (_duplicate, ("duplicate_image",), ["r0", "r0-copy"]),
    "subject in two folds": (
        lambda rows, _: _set(rows, "r2", fold=1),
        ("subject_in_multiple_folds",),
        ["r0", "r1", "r2", "s0"],
    ),
    "subject in two splits": (
        lambda rows, _: _set(rows, "r2", split="test"),
        ("subject_in_multiple_splits",),
        ["r0", "r1", "r2", "s0"],
    ),
    "parent not in manifest": (
        lambda rows, _: _set(rows, "s1", parent_id="gone"),
        ("synthetic_parent_missing",),
        ["s1"],
    ),
    "parent of another subject": (
        lambda rows, _: _set(rows, "s1", subject_id="P9"),
        ("synthetic_parent_mismatch",),
        ["s1"],
    ),
    # A synthetic row in another fold than its parent also puts that subject in two folds.
    "parent in another fold": (
        lambda rows, _: _set(rows, "s1", fold=0),
        ("synthetic_parent_mismatch", "subject_in_multiple_folds"),
        ["s1"],
    ),
    "no generator": (lambda rows, _: _set(rows, "s2", generator=None), ("synthetic_without_provenance",), ["s2"]),
    "no parent": (lambda rows, _: _set(rows, "s2", parent_id=None), ("synthetic_without_provenance",), ["s2"]),
    "synthetic test image": (
        lambda rows, _: _set(rows, "s2", split="test"),
        ("synthetic_in_test", "subject_in_multiple_splits"),
        ["s2"],
    ),
}


@pytest.mark.parametrize("name", MUTATIONS)
def test_each_problem_kind_is_detected(tmp_path: Path, name: str) -> None:
    mutate, kinds, sample_ids = MUTATIONS[name]
    rows = _rows(tmp_path)
    mutate(rows, tmp_path)
    problems = audit(_write(tmp_path, rows)).problems
    assert {p.kind for p in problems} == set(kinds)
    assert next(p for p in problems if p.kind == kinds[0]).sample_ids == sample_ids
    assert all(p.message and p.count >= 1 for p in problems)


def test_problem_details_name_the_culprits(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    _set(rows, "r2", fold=1)
    _duplicate(rows, tmp_path)
    problems = {p.kind: p for p in audit(_write(tmp_path, rows)).problems}
    assert problems["subject_in_multiple_folds"].to_dict()["subjects"] == ["P0"]
    assert problems["subject_in_multiple_folds"].count == 1
    assert "P0 in folds 0, 1" in problems["subject_in_multiple_folds"].message
    assert problems["duplicate_image"].to_dict()["groups"] == [["r0", "r0-copy"]]


@pytest.mark.parametrize(
    ("meta", "leaks"),
    [
        ({"generator_training": {"g1": {"folds": [0], "subjects": ["P0"]}}, "holdout_folds": [2]}, False),
        ({"generator_training": {"g1": {"folds": [0, 1, 2], "subjects": []}}, "holdout_folds": [2]}, True),
        ({"generator_training": {"g1": {"folds": [], "subjects": ["P0", "P2"]}}, "holdout_folds": [2]}, True),
        ({"generator_training": {"g1": {"subjects": ["P1"]}}}, True),  # P1 is in the test split below
        ({"generator_training": {"other": {"subjects": ["P1", "P2"]}}, "holdout_folds": [2]}, False),
    ],
)
def test_generator_trained_on_held_out_subjects(tmp_path: Path, meta: dict, leaks: bool) -> None:
    rows = _rows(tmp_path)
    for r in rows:
        if r["subject_id"] == "P1":
            r["split"] = "test"
    rows = [r for r in rows if r["sample_id"] != "s1"]  # no synthetic image of a test subject
    problems = audit(_write(tmp_path, rows, meta=meta)).problems
    kinds = [p.kind for p in problems]
    assert kinds == (["generator_saw_test_subjects"] if leaks else [])
    if leaks:
        assert problems[0].count == 2 and problems[0].sample_ids == ["s0", "s2"]
        assert problems[0].to_dict()["generators"] == ["g1"]


def test_malformed_generator_training_is_a_clear_error(tmp_path: Path) -> None:
    path = _write(tmp_path, _rows(tmp_path), meta={"generator_training": ["g1"]})
    with pytest.raises(FesaugError, match="generator_training"):
        audit(path)


def test_no_check_images_skips_reading_them(tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    path = _write(tmp_path, rows)
    _delete_file(rows, tmp_path)
    report = audit(path, check_images=False)
    assert report.problems == [] and not report.images_checked
    assert [p.kind for p in audit(path).problems] == ["missing_image"]


# --- the command ---------------------------------------------------------------------------------


def test_json_is_one_object_with_the_documented_keys(clean: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "audit", clean, "--format", "json", "--by", "split", "--target", "4")
    assert code == 0
    data = json.loads(out)
    assert {"manifest", "total", "subjects", "imbalance_ratio", "classes", "problems", "by", "target"} <= set(data)
    assert data["total"] == 10 and data["subjects"] == 3 and data["imbalance_ratio"] == 2.0
    assert data["classes"]["fear"] == {"real": 1, "synthetic": 3, "total": 4, "shortfall": 0}
    assert data["shortfall_total"] == 2 and data["target"] == 4
    assert data["by"] == {
        "column": "split",
        "groups": [
            {
                "value": "train",
                "total": 10,
                "classes": {
                    "anger": {"real": 4, "synthetic": 0, "total": 4},
                    "fear": {"real": 1, "synthetic": 3, "total": 4},
                    "happy": {"real": 2, "synthetic": 0, "total": 2},
                },
            }
        ],
    }
    assert data["problems"] == []


def test_table_lists_classes_then_summary_then_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = _rows(tmp_path)
    code, out, _ = cli(capsys, "audit", _write(tmp_path, rows), "--target", "5")
    assert code == 0
    lines = out.splitlines()
    assert lines[2].split() == ["class", "real", "synthetic", "total", "shortfall"]
    assert lines[3].split() == ["anger", "4", "0", "4", "1"]
    assert lines[7].split() == ["total", "7", "3", "10", "5"]
    assert "subjects:        3" in out and "imbalance ratio: 2.00 (anger 4 / happy 2)" in out
    assert lines[-1] == "no problems found"

    _set(rows, "s1", parent_id="gone")
    code, out, _ = cli(capsys, "audit", _write(tmp_path, rows))
    assert code == 0  # problems alone do not fail without --strict
    assert "problems:\n  synthetic_parent_missing (1): 1 synthetic row(s) name a parent_id" in out


def test_csv_is_the_histogram(clean: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, _ = cli(capsys, "audit", clean, "--format", "csv")
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [
        ["class", "real", "synthetic", "total"],
        ["anger", "4", "0", "4"],
        ["fear", "1", "3", "4"],
        ["happy", "2", "0", "2"],
    ]
    code, out, _ = cli(capsys, "audit", clean, "--format", "csv", "--by", "origin")
    table = list(csv.DictReader(io.StringIO(out)))
    assert len(table) == 6 and {r["origin"] for r in table} == {"real", "synthetic"}
    assert next(r for r in table if r["origin"] == "synthetic" and r["class"] == "fear")["synthetic"] == "3"


def test_plot_writes_a_png(clean: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plot = tmp_path / "out" / "hist.png"
    code, out, _ = cli(capsys, "audit", clean, "--plot", plot, "--target", "5", "--format", "json")
    assert code == 0 and json.loads(out)["total"] == 10  # stdout stays pure JSON
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > 100
    assert [p.name for p in plot.parent.iterdir()] == ["hist.png"]  # no temporary file left

    code, _, err = cli(capsys, "audit", clean, "--plot", tmp_path / "hist.jpg")
    assert code == 2 and ".png" in err


def test_strict_fails_only_when_there_are_problems(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    rows = _rows(tmp_path)
    path = _write(tmp_path, rows)
    assert cli(capsys, "audit", path, "--strict")[0] == 0
    _delete_file(rows, tmp_path)
    code, out, err = cli(capsys, "audit", path, "--strict", "--format", "json")
    assert code == 1
    assert [p["kind"] for p in json.loads(out)["problems"]] == ["missing_image"]  # the report is printed first
    assert err.strip().splitlines()[-1].startswith("Error: 1 kind(s) of problem found (missing_image)")
    assert cli(capsys, "audit", path, "--strict", "--no-check-images")[0] == 0


@pytest.mark.parametrize("name", ["holdout_folds", "excluded_folds"])  # excluded_folds: the footer of older versions
def test_a_balanced_manifest_counts_its_held_out_rows_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture, name: str
) -> None:
    # As `fesaug balance` writes it: the train split balanced outside fold 0; fold 0 and another
    # split are in the manifest unchanged and must not count as balanced rows.
    rows = _rows(tmp_path)
    _set(rows, "s0", parent_id="r3", subject_id="P1", fold=1, source_label=0)
    _set(rows, "r2", split="test", subject_id="P9")
    path = _write(tmp_path, rows, meta={"balance": {"splits": ["train"], name: [0]}})
    if name == "excluded_folds":  # older versions' name, in the version-1 footers they wrote
        _as_footer_version_1(path)

    code, out, _ = cli(capsys, "audit", path, "--target", "4")
    assert code == 0
    lines = out.splitlines()
    assert lines[2] == "balanced rows (split train outside fold 0); the 3 held-out rows are counted apart below:"
    assert [line.split() for line in lines[4:10]] == [
        ["class", "real", "synthetic", "total", "shortfall"],
        ["anger", "2", "0", "2", "2"],
        ["fear", "1", "3", "4", "0"],
        ["happy", "1", "0", "1", "3"],
        ["-" * len(lines[9])],
        ["total", "4", "3", "7", "5"],
    ]
    assert "imbalance ratio: 4.00 (fear 4 / happy 1)" in out
    held = out.split("held out from balancing (in the manifest unchanged):\n")[1].splitlines()
    assert held[0].split() == ["class", "fold", "0", "(train)", "test"]
    assert [line.split() for line in held[1:4]] == [["anger", "2", "0"], ["fear", "0", "0"], ["happy", "0", "1"]]

    code, out, _ = cli(capsys, "audit", path, "--format", "json")
    data = json.loads(out)
    assert data["total"] == 7 and data["balanced_rows"] == "split train outside fold 0"
    assert data["held_out"]["total"] == 3
    assert [(g["value"], g["total"]) for g in data["held_out"]["groups"]] == [("fold 0 (train)", 2), ("test", 1)]

    figure = report_figure(audit(path, target=4))
    ax = figure.axes[0]
    assert {t.get_text() for t in ax.get_legend().get_texts()} == {
        "real",
        "synthetic",
        "held out: fold 0 (train)",
        "held out: test",
        "target (4)",
    }
    stacked = [bar.get_y() + bar.get_height() for bar in ax.containers[1]]  # real + synthetic
    assert stacked == [2, 4, 1]
    assert "7 balanced images (split train outside fold 0)" in ax.get_title()


def test_truncated_parquet_is_one_error_line(clean: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(clean.read_bytes()[:200])
    result = run_cli("audit", broken)
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_plain_parquet_is_not_a_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"a": [1, 2]}).to_parquet(plain)
    code, out, err = cli(capsys, "audit", plain)
    assert code == 1 and out == "" and err.startswith("Error: ") and "not a fesaug manifest" in err


def test_a_colour_manifest_is_audited_and_says_so(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from fesaug.data.demo import make_demo_dataset

    colour = make_demo_dataset(tmp_path / "d", counts={"anger": 3, "happy": 6}, n_subjects=4, folds=2, color=True)
    code, out, _ = cli(capsys, "audit", colour)
    assert code == 0 and out.splitlines()[0] == f"manifest: {colour} (colour (RGB) images)"
    assert out.splitlines()[-1] == "no problems found"  # every RGB image decoded and matched its sha256
    code, out, _ = cli(capsys, "audit", colour, "--format", "json")
    data = json.loads(out)
    assert data["channels"] == 3 and data["images_checked"] and data["problems"] == []
    code, out, _ = cli(capsys, "audit", colour, "--plot", tmp_path / "h.png")
    assert code == 0 and (tmp_path / "h.png").is_file()
