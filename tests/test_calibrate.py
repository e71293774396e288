"""Per-class edit gains: given (`--class-intensity`) or calibrated on the judge (`--calibrate-intensity`)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from fesaug.balance import BalanceConfig
from fesaug.balance import run as balancing
from fesaug.balance.calibrate import GAINS
from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.synthesis.training import train
from fesaug.utils.errors import UsageError

from .conftest import cli_in_process, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 6, "contempt": 4, "disgust": 7, "fear": 4, "happy": 9, "sadness": 5, "surprise": 10}
OPEN = {"min_confidence": 0.0, "batch_size": 8}
balance = functools.partial(balancing.balance, device="cpu")


@pytest.fixture(scope="module")
def demo(one_thread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), counts=COUNTS, n_subjects=10, size=32, folds=4)


@pytest.fixture(scope="module")
def checkpoint(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = tiny_config(holdout_fold=0, epochs=1, val_fraction=0.3)
    return train(demo, tmp_path_factory.mktemp("run") / "run", config).last_checkpoint


@pytest.fixture(scope="module")
def judge(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fesaug.evaluate.downstream import DownstreamConfig, fit, save_classifier

    m = read_manifest(demo)
    data = ManifestDataset(m, rows=np.flatnonzero((m.df["fold"] != 0).to_numpy()), image_size=32)
    config = DownstreamConfig(epochs=3, image_size=32, batch_size=16, device="cpu")
    path = tmp_path_factory.mktemp("judge") / "judge.pt"
    save_classifier(fit(data.pixels, data.labels, config=config, num_classes=7).model, path, m.classes)
    return path


def test_given_gains_scale_their_classes_edits(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    config = BalanceConfig(class_intensity={"fear": 1.5, "contempt": 0.5}, **OPEN)
    m = read_manifest(balance(demo, checkpoint, tmp_path / "b", config).manifest)
    syn = m.df[m.df["origin"] == "synthetic"]
    by_class = syn.groupby("label_name")["intensity"].unique()
    assert list(by_class["fear"]) == [1.5] and list(by_class["contempt"]) == [0.5] and list(by_class["anger"]) == [1.0]
    assert m.meta["balance"]["class_intensity"] == {"contempt": 0.5, "fear": 1.5}
    assert "Edit gains per target class (given" in (tmp_path / "b" / "README.md").read_text()


def test_calibrated_gains_are_the_weakest_that_make_faces_as_recognisable_as_real_ones(
    demo: Path, checkpoint: Path, judge: Path, tmp_path: Path
) -> None:
    config = BalanceConfig(judge_checkpoint=str(judge), min_judge_confidence=0.0, calibrate_intensity=True, **OPEN)
    m = read_manifest(balance(demo, checkpoint, tmp_path / "b", config).manifest)
    record = m.meta["balance"]["intensity_calibration"]
    assert record["gains_tried"] == list(GAINS)
    chosen = m.meta["balance"]["class_intensity"]
    for c, r in record["classes"].items():
        if "recognised" not in r:
            continue
        rates = {float(g): v for g, v in r["recognised"].items()}
        reached = [g for g in GAINS if rates[g] >= r["real_recognised"]]
        assert r["gain"] == (reached[0] if reached else max(GAINS, key=lambda g: (rates[g], -g)))
        assert chosen[c] == r["gain"]
    syn = m.df[m.df["origin"] == "synthetic"]
    for c, g in chosen.items():
        assert (syn.loc[syn["label_name"] == c, "intensity"] == g).all()


def test_calibration_needs_the_judge(
    demo: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(UsageError, match="--calibrate-intensity reads the independent judge"):
        balance(demo, checkpoint, tmp_path / "b", BalanceConfig(calibrate_intensity=True))
    assert not (tmp_path / "b").exists()
    code, _, err = cli_in_process(
        capsys, "balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", tmp_path / "c",
        "--class-intensity", "fear=x",
    )  # fmt: skip
    assert code == 2 and "CLASS=GAIN" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="names 'joy', which"):
        balance(demo, checkpoint, tmp_path / "d", BalanceConfig(class_intensity={"joy": 1.2}))
    with pytest.raises(UsageError, match="gains must lie in"):
        BalanceConfig(class_intensity={"fear": 3})
