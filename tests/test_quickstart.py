"""`fesaug demo` (what `make demo` runs) end to end, and its care with existing folders."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from fesaug import load_generator
from fesaug.data.manifest import read_manifest
from fesaug.quickstart import DEMO_RECIPE
from fesaug.synthesis.config import load_config

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
    # The demo's own recipe is what the run recorded and what balanced with it.
    recorded = load_config(out / "run" / "config.yaml")
    assert recorded.loss.paired == DEMO_RECIPE["loss"]["paired"] and recorded.model == DEMO_RECIPE["model"]
    decoder = load_generator(out / "run" / "checkpoints" / "last.pt").model.decoder
    assert decoder.flow_threshold == DEMO_RECIPE["model"]["flow_threshold"]
    assert decoder.mask_threshold == DEMO_RECIPE["model"]["mask_threshold"]

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


def test_the_synthesis_picture_shows_what_changed_and_only_the_classes_that_received_faces(tmp_path: Path) -> None:
    from dataclasses import replace

    import numpy as np
    from PIL import Image

    from fesaug.data.demo import make_demo_dataset
    from fesaug.quickstart import synthesis_grid
    from fesaug.utils.plots import change_map

    same = Image.new("L", (8, 8), 90)
    assert not change_map(same, same).any()
    brighter = Image.new("RGB", (16, 16), (100, 130, 160))
    assert np.allclose(change_map(Image.new("RGB", (8, 8), (90, 90, 90)), brighter), (10 + 40 + 70) / 3)

    m = read_manifest(
        make_demo_dataset(tmp_path / "d", counts=dict.fromkeys(("anger", "fear", "happy"), 6), n_subjects=6, size=32)
    )
    df = m.df.copy()
    twins = df[df["label_name"] == "fear"].head(2).assign(origin="synthetic", parent_id=lambda d: d["sample_id"])
    twins["sample_id"] = twins["sample_id"] + "-syn"
    with_fear = replace(m, df=pd.concat([df, twins], ignore_index=True))
    one_row = synthesis_grid(with_fear, tmp_path / "one.png", pairs=2)
    with Image.open(one_row) as picture:
        wide, high = picture.size
    assert wide > high  # one class received faces: one row of source, synthetic and change panels
