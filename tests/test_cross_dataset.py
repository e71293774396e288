"""fesaug evaluate --test-manifest: train on all of one dataset (A), test on another (B).

One tiny cross-dataset evaluation is run once per module and reused: A is a 49-image demo set
without folds; B another demo set (other seed, 48 px instead of 32, subject ids renamed to be
distinct) that lacks A's contempt and adds a neutral class A does not know. Four conditions,
two downstream seeds, the synthesis report; a 1-epoch tiny FERSNet and 2-epoch classifiers.
These tests check the split, the bookkeeping and the statistics, not whether synthesis helps."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score

import fesaug
from fesaug.balance import BalanceConfig
from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.evaluate.cross_dataset import TEST_ID_PREFIX
from fesaug.evaluate.downstream import DownstreamConfig, make_classifier, predict_proba
from fesaug.evaluate.report import render_report
from fesaug.evaluate.run import EvaluateConfig, evaluate
from fesaug.evaluate.stats import verdict
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import file_sha256

from .conftest import cli_in_process as cli
from .conftest import copy_beside, kill_at, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS_A = {"anger": 8, "contempt": 4, "disgust": 6, "fear": 4, "happy": 10, "sadness": 5, "surprise": 12}
COUNTS_B = {"anger": 5, "contempt": 0, "disgust": 4, "fear": 4, "happy": 6, "sadness": 4, "surprise": 6, "neutral": 5}
SCORED = ["anger", "disgust", "fear", "happy", "sadness", "surprise"]  # A's classes B has images of
CONDITIONS = ("real", "oversample", "fes", "mixed")
SEEDS = 2


def _config(**changes) -> EvaluateConfig:
    return EvaluateConfig(
        conditions=CONDITIONS,
        downstream_seeds=SEEDS,
        downstream=DownstreamConfig(epochs=2, image_size=32, batch_size=16, device="cpu"),
        generator=tiny_config(epochs=1, device="cpu"),
        balance=BalanceConfig(min_confidence=0.0, batch_size=16),  # open gate: a 1-epoch generator's images count
        judges=(),
        **changes,
    )


def _rewritten(manifest: Path, path: Path, change) -> Path:
    """A copy of ``manifest`` beside it (same image root) with ``change`` applied to its rows."""
    m = read_manifest(manifest)
    meta = {k: v for k, v in m.meta.items() if k not in ("schema_version", "classes", "image_root")}
    return write_manifest(change(m.df.copy()), path, classes=m.classes, meta=meta)


def _renamed(df):
    return df.assign(subject_id="T" + df["subject_id"].astype(str))


@dataclasses.dataclass
class Pair:
    root: Path
    a: Path  # the training manifest (no folds)
    b: Path  # the test manifest (distinct subject ids)
    b_demo: Path  # B as made, with subject ids that collide with A's
    out: Path
    config: EvaluateConfig
    results: dict

    def record(self, name: str, out: Path | None = None) -> dict:
        return json.loads(((out or self.out) / "cross" / f"{name}.json").read_text())

    def copy(self, name: str) -> Path:
        return copy_beside(self.out, name)


@pytest.fixture(scope="module")
def pair(one_thread, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    root = tmp_path_factory.mktemp("cross")
    demo_a = make_demo_dataset(root / "a", counts=COUNTS_A, n_subjects=9, size=32, folds=3)
    a = _rewritten(demo_a, root / "a" / "no-folds.parquet", lambda df: df.assign(fold=None))  # A needs no folds
    b_demo = make_demo_dataset(root / "b", counts=COUNTS_B, n_subjects=6, size=48, folds=2, seed=1, neutral=True)
    b = _rewritten(b_demo, root / "b" / "renamed.parquet", _renamed)
    config = _config()
    result = evaluate(a, root / "out", config, test_manifest=b)
    return Pair(root, a, b, b_demo, root / "out", config, result.results)


def _split(out: Path):
    return read_manifest(out / "cross" / "split.parquet").df


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the split


def test_all_of_a_trains_and_validates_and_all_of_b_that_a_can_name_tests(pair: Pair) -> None:
    a, b = read_manifest(pair.a).df, read_manifest(pair.b).df
    split = _split(pair.out)
    train, val, test = (split[split["split"] == role] for role in ("train", "validation", "test"))
    # Every row of A trains or validates, by subject; B's rows are the test, prefixed, in A's label order.
    assert sorted(train["sample_id"].tolist() + val["sample_id"].tolist()) == sorted(a["sample_id"])
    assert set(train["subject_id"]).isdisjoint(val["subject_id"]) and len(set(val["subject_id"])) >= 1
    tested = b[b["label_name"].isin(SCORED)]
    assert sorted(test["sample_id"]) == sorted(TEST_ID_PREFIX + tested["sample_id"])
    classes = read_manifest(pair.a).classes
    assert (test["label"] == [classes.index(c) for c in test["label_name"]]).all()
    assert "neutral" not in set(test["label_name"]) and len(b) - len(tested) == COUNTS_B["neutral"]
    assert test["fold"].isna().all() and split["fold"].isna().all()

    # Both datasets' images are reachable from the split's one image root, at their own sizes.
    data = ManifestDataset(read_manifest(pair.out / "cross" / "split.parquet"), image_size=32)
    assert data.pixels.shape == (len(split), 1, 32, 32)
    assert {(int(w), int(h)) for w, h in zip(test["width"], test["height"])} == {(48, 48)}

    # FERSNet trained on A's training subjects, validated on A's, held out B's; balance drew from A's training rows.
    gen = fesaug.load_generator(pair.out / "cross" / "fersnet" / "checkpoints" / "last.pt")
    assert gen.holdout_fold is None
    assert set(gen.training_subjects) == set(train["subject_id"]) and set(gen.validation_subjects) == set(
        val["subject_id"]
    )
    assert set(gen.heldout_subjects) == set(test["subject_id"])
    balanced = read_manifest(pair.out / "cross" / "balanced" / "manifest.parquet").df
    syn = balanced[balanced["origin"] == "synthetic"]
    assert len(syn) and set(syn["parent_id"]) <= set(train["sample_id"])


def test_results_score_every_condition_on_b_over_seeds(pair: Pair) -> None:
    results = json.loads((pair.out / "results.json").read_text())
    assert results["conditions"] == pair.results["conditions"]
    assert set(results["conditions"]) == {*CONDITIONS, "synthetic-only"}
    for name in CONDITIONS:
        summary = results["conditions"][name]
        assert summary["seeds"] == [0, 1] and summary["macro_f1"]["n"] == SEEDS
        assert set(summary["recall"]) == set(SCORED)
        first = pair.record(name)
        second = json.loads((pair.out / "cross" / "seeds" / f"{name}-1.json").read_text())
        assert (first["seed"], second["seed"]) == (0, 1)
        assert summary["macro_f1"]["mean"] == pytest.approx(
            np.mean([first["test"]["macro_f1"], second["test"]["macro_f1"]])
        )
        assert results["per_seed"]["1"][name]["macro_f1"] == second["test"]["macro_f1"]
        assert first["n_test"] == len(read_manifest(pair.b).df.query("label_name in @SCORED"))
    assert results["conditions"]["synthetic-only"]["seeds"] == [0]
    # One test set: the comparisons pair seeds, and the verdict claims no significance.
    compared = results["comparisons"]["fes_vs_oversample"]
    assert compared["seeds"] == [0, 1] and compared["macro_f1"]["n_seeds"] == SEEDS
    assert compared["macro_f1"]["differences"] == pytest.approx(
        [
            results["per_seed"][s]["fes"]["macro_f1"] - results["per_seed"][s]["oversample"]["macro_f1"]
            for s in ("0", "1")
        ]
    )
    v = results["verdict"]
    assert v == verdict(results["comparisons"], 1, "seed")
    assert v["test"].startswith("no test: one train/test split")
    assert {a["outcome"] for a in v["against"].values()} <= {"higher", "lower", "equal"}
    assert any("one train/test split" in c for c in v["cautions"])
    assert results["synthesis"]["n_synthetic"] > 0 and "ground_truth" in results["synthesis"]  # A is a demo set


def test_protocol_names_both_datasets_and_the_classes(pair: Pair) -> None:
    proto = pair.results["protocol"]
    x = proto["cross_dataset"]
    assert proto["mode"] == "cross-dataset" and "folds" not in proto
    assert (
        x["scored_classes"] == SCORED and x["not_tested"] == ["contempt"] and x["excluded_from_test"] == {"neutral": 5}
    )
    assert x["train"]["n_images"] == sum(COUNTS_A.values()) and x["train"]["n_subjects"] == 9
    assert x["train"]["n_train_subjects"] + x["train"]["n_validation_subjects"] == 9
    assert x["test"]["path"] == str(pair.b) and x["test"]["kind"] == "manifest"
    assert (
        x["test"]["n_images"] == sum(COUNTS_B.values()) - COUNTS_B["neutral"] and x["test"]["n_without_subject_id"] == 0
    )
    settings = json.loads((pair.out / "evaluate.json").read_text())
    assert settings["manifest"] == str(pair.a) and settings["test_manifest"] == str(pair.b)
    assert settings["test_data"] == {"manifest_sha256": file_sha256(pair.b)}

    report = (pair.out / "report.md").read_text()
    assert f"- Training data: `{pair.a}`" in report and f"- Test data: `{pair.b}`" in report
    assert "cross-dataset, one train/test split" in report
    assert "trained but not tested (no test images): contempt" in report and "neutral (5 images)" in report
    assert "resized to 32×32 px" in report
    assert "## Paired comparison over downstream seeds" in report and "no test across folds exists" in report
    assert "| `fes` | 2 |" in report and "## Per seed: macro-F1 (%)" in report
    assert render_report(pair.results, read_manifest(pair.a).classes) == report
    assert (pair.out / "recall.png").read_bytes().startswith(b"\x89PNG")


def test_scores_cover_the_shared_classes_and_count_every_prediction(pair: Pair) -> None:
    saved = torch.load(pair.out / "cross" / "real.pt", map_location="cpu", weights_only=True)
    model = make_classifier(saved["model"], saved["num_classes"], saved["image_size"])
    model.load_state_dict(saved["state_dict"])
    split = read_manifest(pair.out / "cross" / "split.parquet")
    data = ManifestDataset(split, rows=np.flatnonzero((split.df["split"] == "test").to_numpy()), image_size=32)
    pred = predict_proba(model.eval(), data.pixels).argmax(1)
    scored = [split.classes.index(c) for c in SCORED]
    test = pair.record("real")["test"]
    # A prediction of contempt (trained, never in the test) is an error in accuracy and in its class's precision.
    assert test["accuracy"] == pytest.approx(accuracy_score(data.labels, pred))
    assert test["macro_f1"] == pytest.approx(
        f1_score(data.labels, pred, labels=scored, average="macro", zero_division=0)
    )
    assert list(test["recall"]) == SCORED and list(test["support"].values()) == [
        int((data.labels == k).sum()) for k in scored
    ]
    assert test["confusion"]["classes"] == split.classes


# ---------------------------------------------------------------------------- resumption and the settings guard


def test_a_second_run_recomputes_nothing_and_an_interrupted_one_resumes(pair: Pair) -> None:
    before = _mtimes(pair.out / "cross")
    again = evaluate(pair.a, pair.out, pair.config, test_manifest=pair.b)
    assert _mtimes(pair.out / "cross") == before
    assert again.results["conditions"] == pair.results["conditions"]

    out = pair.copy("interrupted")
    lost = ["cross/mixed.json", "cross/mixed.pt", "cross/seeds/fes-1.json"]
    for name in lost:
        (out / name).unlink()
    kept = {n: t for n, t in _mtimes(out).items() if n.startswith("cross/")}
    result = evaluate(pair.a, out, pair.config, test_manifest=pair.b)
    after = {n: t for n, t in _mtimes(out).items() if n.startswith("cross/")}
    assert set(after) == set(kept) | set(lost)
    assert {n: t for n, t in after.items() if n in kept} == kept  # FERSNet, the balanced set, the other models
    assert result.results["per_seed"] == pair.results["per_seed"]  # same seeds, same numbers


def test_another_test_set_in_the_same_folder_is_refused_unless_overwrite(pair: Pair) -> None:
    other = _rewritten(pair.b, pair.root / "b" / "fewer.parquet", lambda df: df.iloc[1:])
    before = _mtimes(pair.out)
    with pytest.raises(FesaugError, match="another manifest.*--overwrite"):
        evaluate(pair.a, pair.out, pair.config, test_manifest=other)
    assert _mtimes(pair.out) == before
    out = pair.copy("overwritten")
    config = dataclasses.replace(pair.config, conditions=("real",), synthesis=False, downstream_seeds=1)
    result = evaluate(pair.a, out, config, test_manifest=other, overwrite=True)
    assert set(result.results["conditions"]) == {"real"}
    assert not (out / "cross" / "fes.json").exists()
    assert pair.record("real", out)["n_test"] == pair.record("real")["n_test"] - 1


def test_cli_run_killed_mid_way_resumes_from_its_cache(pair: Pair, capsys: pytest.CaptureFixture) -> None:
    out = pair.root / "cli-killed"
    args = [
        "evaluate",
        "--manifest",
        pair.a,
        "--test-manifest",
        pair.b,
        "--out",
        out,
        "--conditions",
        "real,oversample",
        "--no-synthesis",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--device",
        "cpu",
        "--judges",
        "none",
    ]
    kill_at("write:oversample.json", *args)  # real is done, oversample trained but not recorded
    assert (out / "cross" / "real.json").exists() and not (out / "cross" / "oversample.json").exists()
    real = (out / "cross" / "real.json").stat().st_mtime_ns
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert (out / "cross" / "real.json").stat().st_mtime_ns == real
    assert "cross-dataset oversample" in err and "cross-dataset real" not in err
    lines = stdout.splitlines()
    assert lines[0].split() == ["condition", "seeds", "accuracy", "macro-F1", "minority", "recall"]
    assert not any(line.startswith("verdict: ") for line in lines)  # no fes: nothing to judge
    assert lines[-1].startswith("wrote ")


# ---------------------------------------------------------------------------- a folder as the test set


def test_a_folder_of_class_folders_is_ingested_and_tested_on(pair: Pair) -> None:
    out = pair.root / "folder"
    config = dataclasses.replace(pair.config, conditions=("real",), synthesis=False, downstream_seeds=1)
    folder = pair.root / "b" / "images"  # the demo's class folders: anger/, ..., neutral/
    result = evaluate(pair.a, out, config, test_manifest=folder)
    kept = read_manifest(out / "test-manifest.parquet")
    assert kept.image_root.resolve() == folder.resolve() and len(kept.df) == sum(COUNTS_B.values())
    test = result.results["protocol"]["cross_dataset"]["test"]
    assert test["kind"] == "folder" and test["manifest"] == str(out / "test-manifest.parquet")
    n = sum(COUNTS_B.values()) - COUNTS_B["neutral"]
    assert (
        test["n_images"] == n and test["n_without_subject_id"] == n == test["n_subjects"]
    )  # each image its own subject
    assert "folder_rows_sha256" in json.loads((out / "evaluate.json").read_text())["test_data"]
    assert pair.record("real", out)["n_test"] == n
    report = (out / "report.md").read_text()
    assert f"folder `{folder}`" in report and "could be checked by file only" in report
    cached = [name for name in _mtimes(out) if name.startswith("cross/") or name == "test-manifest.parquet"]
    before = {name: t for name, t in _mtimes(out).items() if name in cached}
    evaluate(pair.a, out, config, test_manifest=folder)  # ingested again: the same rows, nothing redone
    assert {name: t for name, t in _mtimes(out).items() if name in cached} == before


def test_a_folder_subject_pattern_finds_subjects_shared_with_the_training_data(pair: Pair, tmp_path: Path) -> None:
    # The demo sets name subjects D001, D002, ... in both: read from the file names, they collide.
    with pytest.raises(FesaugError, match=r"subject id\(s\) D001, D002, .* are in both"):
        evaluate(
            pair.a,
            tmp_path / "e",
            pair.config,
            test_manifest=pair.root / "b" / "images",
            test_subject_pattern=r"^(D\d{3})_",
        )
    assert not (tmp_path / "e").exists()


# ---------------------------------------------------------------------------- bad inputs, through the CLI


def _no_shared_class(pair: Pair) -> Path:
    m = read_manifest(pair.b)
    df = m.df[m.df["label_name"] == "neutral"].assign(label=0, label_name="neutral")
    return write_manifest(df, pair.root / "b" / "neutral-only.parquet", classes=["neutral"])


BAD = {
    "shared-subject": (lambda p: ["--test-manifest", p.b_demo], r"subject id\(s\) D00\d.* are in both .*distinct ids"),
    "identical-images": (
        lambda p: ["--test-manifest", _rewritten(p.a, p.root / "a" / "renamed.parquet", _renamed)],
        r"image\(s\) of .* are identical to images of",
    ),
    "no-shared-class": (
        lambda p: ["--test-manifest", _no_shared_class(p)],
        r"no class in common: .* has anger, contempt, disgust, fear, happy, sadness, surprise; .* has neutral",
    ),
    "synthetic-test-rows": (
        lambda p: ["--test-manifest", p.out / "cross" / "balanced" / "manifest.parquet"],
        r"synthetic row\(s\); the test data must be real",
    ),
    "folds": (lambda p: ["--test-manifest", p.b, "--folds", "0"], r"--folds .* drop --folds"),
    "pattern-without-folder": (
        lambda p: ["--test-manifest", p.b, "--test-subject-pattern", "^(T)"],
        r"--test-subject-pattern .* is a manifest",
    ),
    "pattern-without-test-set": (
        lambda p: ["--test-subject-pattern", "^(T)"],
        r"--test-subject-pattern .* --test-manifest",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_cli_bad_test_data_is_one_error_line(
    pair: Pair, capsys: pytest.CaptureFixture, tmp_path: Path, case: str
) -> None:
    extra, message = BAD[case]
    code, _out, err = cli(
        capsys, "evaluate", "--manifest", pair.a, "--out", tmp_path / "e", "--device", "cpu", *extra(pair)
    )
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), err
    assert "Traceback" not in err
    assert re.search(message, lines[0]), lines[0]
    assert not (tmp_path / "e").exists()


def test_folds_and_a_test_set_are_refused_before_reading_anything(pair: Pair, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="drop --folds"):
        evaluate(
            tmp_path / "missing.parquet", tmp_path / "e", pair.config, folds=[0], test_manifest=tmp_path / "nothing"
        )
