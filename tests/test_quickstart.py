"""`fesaug demo` (what `make demo` runs) end to end, and its care with existing folders."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import run_cli


def test_demo_writes_dataset_pictures_and_audit(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "no problems found" in result.stdout and "imbalance ratio" in result.stdout
    report = json.loads((out / "audit.json").read_text())
    assert report["total"] == 981 and report["problems"] == []
    assert report["classes"]["contempt"]["real"] == 54 and report["target"] == 249
    for name in ("histogram.png", "samples.png", "data/manifest.parquet"):
        assert (out / name).stat().st_size > 0

    again = run_cli("demo", "--out", out)
    assert again.returncode == 1 and "--overwrite" in again.stderr
    assert run_cli("demo", "--out", out, "--overwrite").returncode == 0


def test_demo_never_deletes_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("user data")
    result = run_cli("demo", "--out", tmp_path, "--overwrite")
    assert result.returncode == 1 and "refusing" in result.stderr
    assert (tmp_path / "mine.txt").read_text() == "user data"
