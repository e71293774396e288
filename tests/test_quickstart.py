"""`fesaug demo` (what `make demo` runs) end to end, and its care with existing folders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fesaug.data.manifest import read_manifest

from .conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_thread")


def test_demo_trains_balances_audits_and_draws(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    # One epoch and an open gate: this checks the pipeline, not the images (make demo trains longer).
    result = run_cli("demo", "--out", out, "--epochs", "1", "--min-confidence", "0")
    assert result.returncode == 0, result.stderr
    assert "every class reached its target" in result.stdout
    assert "audit of the balanced manifest: no problems" in result.stdout
    report = json.loads((out / "audit.json").read_text())
    assert report["problems"] == []
    balanced = read_manifest(out / "balanced" / "manifest.parquet")
    working = balanced.df[balanced.df["fold"] != 0]
    counts = working.groupby("label_name").size()
    assert counts.nunique() == 1 and counts.iloc[0] == counts.max()  # every class at the largest
    assert (balanced.df["origin"] == "synthetic").sum() > 0
    for name in (
        "histogram_before.png",
        "histogram_after.png",
        "synthesis.png",
        "summary.txt",
        "data/manifest.parquet",
        "run/checkpoints/last.pt",
        "balanced/README.md",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "summary.txt").read_text().strip() == result.stdout.strip()

    again = run_cli("demo", "--out", out)
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    result = run_cli("demo", "--out", tmp_path, "--overwrite")
    assert result.returncode == 1 and "refusing" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "user data"


def test_demo_stopped_before_its_dataset_existed_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` (--overwrite) after a kill -9 in the first seconds: half the demo images, no
    # manifest yet, stale lock and temporary files. That folder is the demo's own to replace.
    from fesaug import quickstart

    out = tmp_path / "demo"
    (out / "data" / "images" / "anger").mkdir(parents=True)
    (out / "data" / "images" / "anger" / "D001_001_01.png").write_bytes(b"half")
    (out / ".run.lock").write_text("")
    (out / ".summary.txt.abc123.tmp").write_text("")

    def stop(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt  # the replacement got as far as making the dataset again

    monkeypatch.setattr(quickstart, "make_demo_dataset", stop)
    with pytest.raises(KeyboardInterrupt):
        quickstart.run_demo(out, overwrite=True)
    assert not out.exists() or not any(out.iterdir())
