"""The truth ceiling (`fesaug evaluate --conditions truth,truth-half`): the exact counterfactuals
of the faces `fesaug balance` would make, and how much of the oversample → truth gap a synthetic
condition closes."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from fesaug.balance import BalanceConfig, balance
from fesaug.data.demo import counterfactual, make_demo_dataset
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.evaluate import EvaluateConfig, evaluate
from fesaug.evaluate.downstream import DownstreamConfig
from fesaug.evaluate.truth import exact_counterfactuals
from fesaug.synthesis.training import train
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 8, "contempt": 4, "disgust": 6, "fear": 4, "happy": 10, "sadness": 5, "surprise": 12}
CONDITIONS = ("real", "oversample", "fes", "truth", "truth-half")


@pytest.fixture(scope="module")
def demo(one_thread, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("truth") / "demo", counts=COUNTS, n_subjects=9, size=32, folds=3)


def _config(**changes) -> EvaluateConfig:
    return EvaluateConfig(
        conditions=CONDITIONS,
        synthesis=False,
        downstream=DownstreamConfig(epochs=2, image_size=32, batch_size=16, device="cpu"),
        generator=tiny_config(epochs=1, device="cpu"),
        balance=BalanceConfig(min_confidence=0.0, batch_size=16),
        judges=(),
        **changes,
    )


@pytest.fixture(scope="module")
def evaluated(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("truth-eval") / "out"
    return out, evaluate(demo, out, _config(), folds=[0, 1]).results


def test_the_exact_faces_are_the_counterfactuals_of_the_sources_balance_uses(demo: Path, tmp_path: Path) -> None:
    # An open gate keeps every first candidate, so the balanced set shows exactly the sources and
    # targets balance picks; the exact set must name the same ones, class by class.
    checkpoint = train(demo, tmp_path / "run", tiny_config(epochs=1, device="cpu", holdout_fold=0)).last_checkpoint
    config = BalanceConfig(target_per_class=40, min_confidence=0.0, batch_size=16, max_attempts=1)  # reuses sources
    balanced = read_manifest(balance(demo, checkpoint, tmp_path / "b", config, device="cpu").manifest)
    syn = balanced.df[balanced.df["origin"] == "synthetic"]
    m = read_manifest(demo)
    exact = exact_counterfactuals(m, config, [0])
    ids = m.df["sample_id"].to_numpy()
    assert sorted(zip(ids[exact.parents], exact.labels.tolist())) == sorted(zip(syn["parent_id"], syn["label"]))
    assert np.bincount(exact.labels, minlength=7).tolist() == np.bincount(syn["label"], minlength=7).tolist()
    assert len(exact.labels) > 0 and (exact.variants == 0).any() and (exact.variants == 1).any()
    for i in range(len(exact.labels)):
        row, target = m.df.iloc[int(exact.parents[i])], m.classes[int(exact.labels[i])]
        truth = torch.from_numpy(counterfactual(row, target))[None]
        if exact.variants[i] == 0:
            assert torch.equal(exact.pixels[i], truth)  # bit for bit
        elif exact.variants[i] == 1:
            assert torch.equal(exact.pixels[i], TF.horizontal_flip(truth))  # a reused source is mirrored


def test_truth_half_shows_half_of_each_source_s_own_intensity(demo: Path) -> None:
    m = read_manifest(demo)
    config = BalanceConfig(target_per_class=12)
    half = exact_counterfactuals(m, config, [0], scale=0.5)
    first = int(np.flatnonzero(half.variants == 0)[0])
    row, target = m.df.iloc[int(half.parents[first])], m.classes[int(half.labels[first])]
    own = json.loads(row["demo_params"])["intensity"]
    assert torch.equal(half.pixels[first][0], torch.from_numpy(counterfactual(row, target, intensity=own * 0.5)))
    assert not torch.equal(half.pixels[first][0], torch.from_numpy(counterfactual(row, target)))


def test_truth_trains_on_the_same_counts_and_the_report_says_how_much_of_the_gap_fes_closes(
    evaluated: tuple[Path, dict],
) -> None:
    out, results = evaluated
    for k in (0, 1):
        fes, truth = (json.loads((out / f"fold-{k}" / f"{n}.json").read_text()) for n in ("fes", "truth"))
        assert truth["train_counts"] == fes["train_counts"] and truth["n_synthetic"] > 0
        assert truth["truth_intensity"] == 1.0
        half = json.loads((out / f"fold-{k}" / "truth-half.json").read_text())
        assert half["truth_intensity"] == 0.5 and half["train_counts"] == fes["train_counts"]
    gap = results["gap_closed"]
    assert set(gap) == {"fes", "truth-half"}
    per = results["per_fold"]
    f1 = {c: np.mean([per[k][c]["macro_f1"] for k in ("0", "1")]) for c in ("fes", "oversample", "truth")}
    assert gap["fes"]["minus_oversample"] == pytest.approx(f1["fes"] - f1["oversample"])
    assert gap["fes"]["truth_minus_oversample"] == pytest.approx(f1["truth"] - f1["oversample"])
    if abs(f1["truth"] - f1["oversample"]) >= 0.005:
        expected = (f1["fes"] - f1["oversample"]) / (f1["truth"] - f1["oversample"])
        assert gap["fes"]["overall"] == pytest.approx(expected)
    assert {"truth_vs_oversample", "truth_vs_fes", "truth-half_vs_oversample"} <= set(results["comparisons"])
    report = (out / "report.md").read_text()
    assert "## Gap closed toward the truth ceiling (macro-F1)" in report and "| `fes` |" in report


def test_the_cli_prints_the_gap_closed(evaluated: tuple[Path, dict]) -> None:
    from cli.evaluate import format_summary

    lines = format_summary(evaluated[1]).splitlines()
    assert any(line.startswith("fes closes ") and "of the gap between oversample and truth" in line for line in lines)


def test_truth_without_demo_params_is_refused_before_any_work(demo: Path, tmp_path: Path) -> None:
    m = read_manifest(demo)
    plain = write_manifest(
        m.df.drop(columns=["demo_params"]), tmp_path / "plain.parquet", classes=m.classes, image_root=str(m.image_root)
    )
    with pytest.raises(FesaugError, match="no demo_params column: the truth conditions render exact counterfactuals"):
        evaluate(plain, tmp_path / "out", _config(), folds=[0])
    assert not (tmp_path / "out").exists()


def test_bad_truth_intensity_is_one_error_line(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli_in_process(
        capsys, "evaluate", "--manifest", demo, "--out", tmp_path / "o", "--truth-intensity", "3"
    )
    assert code == 2 and err.startswith("Error:") and "--truth-intensity" in err and len(err.splitlines()) == 1


def test_an_evaluation_recorded_before_the_truth_intensity_existed_resumes(
    evaluated: tuple[Path, dict], demo: Path, tmp_path: Path
) -> None:
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(evaluated[0], out)
    settings = json.loads((out / "evaluate.json").read_text())
    del settings["schema_version"]  # as versions before records carried one wrote it: no truth intensity
    del settings["config"]["truth_intensity"]
    (out / "evaluate.json").write_text(json.dumps(settings))
    again = evaluate(demo, out, _config(), folds=[0, 1]).results
    assert again["per_fold"] == evaluated[1]["per_fold"]  # nothing trained again
    other = dataclasses.replace(_config(), truth_intensity=0.8)
    with pytest.raises(FesaugError, match="other settings"):
        evaluate(demo, out, other, folds=[0, 1])
