"""fesaug review: the page's data (every synthetic row once, its scores, its source and demo
counterfactual, relative paths), its thumbnail cache (made once, resumed after a kill), its
files and its errors. A tiny FERSNet trained for one epoch on a tiny demo set stands in for a
real generator (the page checks bookkeeping, not image quality). The browser test is in
test_review_browser.py."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fesaug.balance.config import BalanceConfig
from fesaug.balance.run import balance
from fesaug.data.demo import counterfactual, make_demo_dataset
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.review import data as page_data
from fesaug.review.page import write_review
from fesaug.review.summary import summary_html
from fesaug.synthesis.training import train

from .conftest import cli_in_process, kill_at, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 6, "contempt": 3, "disgust": 7, "fear": 4, "happy": 8, "sadness": 4, "surprise": 9}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), counts=COUNTS, n_subjects=8, size=32, folds=4)


@pytest.fixture(scope="module")
def checkpoint(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(demo, tmp_path_factory.mktemp("run") / "run", tiny_config(holdout_fold=0, epochs=1)).best_checkpoint


@pytest.fixture(scope="module")
def balanced(demo: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weighted run with intensities: the rows carry confidence, intensity and weight."""
    config = BalanceConfig(min_confidence=0.0, batch_size=8, intensity=(0.5, 1.5), synthetic_weight=0.5)
    return balance(demo, checkpoint, tmp_path_factory.mktemp("out") / "balanced", config, device="cpu").out_dir


@pytest.fixture(scope="module")
def page(balanced: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("review") / "review"
    write_review(balanced, out, thumb_size=96)
    return out


def _scripts(out: Path) -> dict:
    """The page's data as review.js sees it: meta and rows by kind, decoded from data/*.js."""
    html = (out / "index.html").read_text()
    rows: dict[str, list[dict]] = {"synthetic": [], "real": []}
    meta = None
    for src in re.findall(r'<script src="([^"]+)"', html):
        text = (out / src).read_text()
        if text.startswith("window.FESAUG_REVIEW = {meta: "):
            meta = json.loads(text[len("window.FESAUG_REVIEW = {meta: ") : -len(", chunks: []};\n")])
        elif text.startswith("FESAUG_REVIEW.chunks.push("):
            chunk = json.loads(text[len("FESAUG_REVIEW.chunks.push(") : -len(");\n")])
            rows[chunk["kind"]] += [dict(zip(chunk["columns"], r)) for r in chunk["rows"]]
    return {"meta": meta, **rows}


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(path.read_bytes())))


def test_every_synthetic_row_is_on_the_page_once_with_its_source_and_scores(balanced: Path, page: Path) -> None:
    m = read_manifest(balanced / "manifest.parquet")
    shown = _scripts(page)
    syn = m.df[m.df["origin"] == "synthetic"].set_index("sample_id")
    ids = [r["id"] for r in shown["synthetic"]]
    assert len(ids) == len(set(ids)) == len(syn) > 0
    assert set(ids) == set(syn.index)
    assert sorted(r["id"] for r in shown["real"]) == sorted(m.df.loc[m.df["origin"] == "real", "sample_id"])
    columns = [s["column"] for s in shown["meta"]["scores"]]
    assert columns == ["confidence", "intensity", "weight"]  # what this run recorded, known order
    for r in shown["synthetic"]:
        row = syn.loc[r["id"]]
        assert r["class"] == row["label_name"] and r["subject"] == row["subject_id"] and r["fold"] == row["fold"]
        assert r["parent"] == row["parent_id"] and r["source_class"] == m.classes[int(row["source_label"])]
        assert r["scores"] == pytest.approx([float(row[c]) for c in columns], abs=1e-6)
    # Grouped by class, in the manifest's order within a class.
    assert [r["class"] for r in shown["synthetic"]] == sorted(
        (r["class"] for r in shown["synthetic"]), key=m.classes.index
    )


def test_paths_are_relative_and_thumbnails_show_the_images(balanced: Path, page: Path) -> None:
    m = read_manifest(balanced / "manifest.parquet")
    position = {sid: i for i, sid in enumerate(m.df["sample_id"])}
    shown = _scripts(page)
    html = (page / "index.html").read_text()
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert not ref.startswith(("/", "http:", "https:", "file:", "//")) and ".." not in ref
        assert (page / ref).is_file(), ref
    for r in shown["synthetic"] + shown["real"]:
        for key in ("img", "parent_img", "cf_img"):
            if r.get(key) is not None:
                assert not Path(r[key]).is_absolute() and ".." not in r[key] and (page / r[key]).is_file()
    # The 32-pixel images fit a 96-pixel thumbnail: kept pixel for pixel.
    first = shown["synthetic"][0]
    assert (_png(page / first["img"]) == np.asarray(m.open_image(position[first["id"]]))).all()
    assert (_png(page / first["parent_img"]) == np.asarray(m.open_image(position[first["parent"]]))).all()


def test_demo_rows_get_their_exact_counterfactual(balanced: Path, page: Path) -> None:
    m = read_manifest(balanced / "manifest.parquet")
    parents = m.df.set_index("sample_id")
    shown = _scripts(page)
    assert shown["meta"]["counterfactuals"].startswith("the exact face")
    for r in shown["synthetic"][:3]:
        expected = counterfactual(parents.loc[r["parent"]], r["class"])
        assert (_png(page / r["cf_img"]) == expected).all()


def test_summary_numbers_come_from_the_footer_and_the_rows(balanced: Path) -> None:
    m = read_manifest(balanced / "manifest.parquet")
    data = page_data.page_data(m, "x", 96)
    run = m.meta["balance"]
    for s in data.summary:
        assert s.synthetic == int(((m.df["origin"] == "synthetic") & (m.df["label_name"] == s.name)).sum())
        assert s.target == run["targets"][s.name] and s.attempts == run["attempts"][s.name]
        assert s.acceptance == (run["acceptance"][s.name] if run["attempts"][s.name] else None)
        edges, counts = s.histograms["confidence"]
        assert sum(counts) == s.synthetic and edges[0] == 0.0 and edges[-1] == 1.0
    # The summary is static HTML, readable without JavaScript.
    html = summary_html(data)
    for s in data.summary:
        row = html.split(f'data-class="{s.name}">{s.name}</button></td>')[1].split("</tr>")[0]
        cells = re.findall(r"<td[^>]*>([^<]*)</td>", row)
        assert cells[:3] == [str(s.real), str(s.synthetic), str(s.target)]
        assert cells[4] == ("–" if s.acceptance is None else f"{s.acceptance:.0%}")


def test_other_score_columns_are_shown_and_an_empty_one_is_not(balanced: Path, tmp_path: Path) -> None:
    m = read_manifest(balanced / "manifest.parquet")
    df = m.df.copy()
    syn = (df["origin"] == "synthetic").to_numpy()
    df["target_mass"] = np.where(syn, 0.9, np.nan)  # a soft-label mass: a known score
    df["sharpness"] = np.where(syn, np.linspace(0, 3, len(df)), np.nan)  # unknown: shown by its name
    df["align_angle"] = np.nan
    df.loc[~syn, "external_confidence"] = 0.3  # only on real rows: not a score of synthetic faces
    path = write_manifest(df, tmp_path / "m.parquet", classes=m.classes, meta=m.meta, image_root=str(m.image_root))
    scores = page_data.score_columns(read_manifest(path))
    assert [(s.column, s.label) for s in scores] == [
        ("confidence", "gate confidence"),
        ("target_mass", "target mass"),
        ("intensity", "intensity"),
        ("weight", "weight"),
        ("sharpness", "sharpness"),
    ]
    data = page_data.page_data(read_manifest(path), "x", 96)
    edges, _ = data.summary[0].histograms["sharpness"]
    assert edges[0] == pytest.approx(df.loc[syn, "sharpness"].min()) and edges[-1] == pytest.approx(3.0)


def test_thumbnails_are_made_once_and_a_killed_run_resumes(balanced: Path, tmp_path: Path) -> None:
    out = tmp_path / "review"
    kill_at("write:index.html", "review", balanced, "--out", out)
    thumbs = sorted(p for p in (out / "thumbs").rglob("*.png"))
    assert thumbs and not (out / "index.html").exists()
    (thumbs[0].parent / f".{thumbs[0].name}.abc.tmp").write_bytes(b"half")  # as a kill mid-write leaves
    thumbs[1].unlink()
    again = write_review(balanced, out)
    assert (again.thumbnails_made, again.thumbnails_cached) == (1, len(thumbs) - 1)
    assert not list((out / "thumbs").rglob(".*.tmp"))
    assert write_review(balanced, out).thumbnails_made == 0
    record = json.loads((out / "review.json").read_text())
    assert record["synthetic"] == again.synthetic and record["provenance"]["tool"] == "review"


def test_a_new_page_replaces_the_old_files(balanced: Path, page: Path, tmp_path: Path) -> None:
    out = tmp_path / "review"
    write_review(balanced, out)
    (out / "data" / "synthetic-000-0123456789.js").write_text("old")  # as an earlier page left it
    write_review(balanced, out)
    html = (out / "index.html").read_text()
    assert {f"data/{p.name}" for p in (out / "data").iterdir()} == set(re.findall(r'src="(data/[^"]+)"', html))


def test_cli_writes_the_page_and_bad_input_is_one_error_line(
    balanced: Path, demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = cli_in_process(capsys, "review", balanced / "manifest.parquet", "--out", tmp_path / "r")
    assert code == 0 and "synthetic" in out and (tmp_path / "r" / "index.html").is_file()
    assert "file://" in out
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    cases = [
        ((demo, "--out", tmp_path / "a"), "has no synthetic rows to review"),
        ((tmp_path / "nowhere", "--out", tmp_path / "b"), "does not exist"),
        ((tmp_path, "--out", tmp_path / "c"), "holds no manifest.parquet"),
        ((balanced, "--out", foreign), "holds files fesaug review did not write"),
        ((balanced, "--out", tmp_path / "d", "--thumb-size", "4"), "--thumb-size"),
    ]
    for args, message in cases:
        code, _, err = cli_in_process(capsys, "review", *args)
        assert code != 0, args
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], err
    assert (foreign / "notes.txt").read_text() == "mine" and sorted(foreign.iterdir()) == [foreign / "notes.txt"]


def test_rows_without_a_parent_in_the_manifest_still_show(balanced: Path, tmp_path: Path) -> None:
    m = read_manifest(balanced / "manifest.parquet")
    first = m.df.index[m.df["origin"] == "synthetic"][0]
    parent = m.df.at[first, "parent_id"]
    df = m.df[m.df["sample_id"] != parent].reset_index(drop=True)
    path = write_manifest(df, tmp_path / "m.parquet", classes=m.classes, meta=m.meta, image_root=str(m.image_root))
    data = page_data.page_data(read_manifest(path), "x", 96)
    orphans = [r for r in data.synthetic if r["parent"] == parent]
    assert orphans and all(r["parent_img"] is None and r["cf_img"] is None for r in orphans)
    assert pd.notna(m.df.at[first, "parent_id"])


def test_counterfactuals_drawn_by_worker_processes_are_the_same(
    balanced: Path, page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fesaug.review import thumbs

    monkeypatch.setattr(thumbs, "PROCESS_MIN_JOBS", 1)  # this small set too: in two processes
    out = tmp_path / "review"
    write_review(balanced, out, workers=2)
    drawn = [r["cf_img"] for r in _scripts(page)["synthetic"]]
    assert drawn and all((out / p).read_bytes() == (page / p).read_bytes() for p in drawn)
