"""fesaug evaluate: the subject-independent fold protocol, every condition end to end, the
metrics against scikit-learn/scipy, resumption, the settings guard, the CLI and the report.

One tiny evaluation (a 49-image demo set in 3 folds, folds 0 and 1, all four conditions and the
synthesis report; a 1-epoch tiny FERSNet, 2-epoch downstream classifiers, the quality gate open)
is run once per module and reused; tests that change an evaluation work on copies of it. These
tests check the bookkeeping and the statistics, not whether synthesis helps."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score

import fesaug
from fesaug.audit.report import audit
from fesaug.balance import BalanceConfig
from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.data.splits import split_subjects
from fesaug.evaluate import fold as fold_module
from fesaug.evaluate import run as evaluation
from fesaug.evaluate.downstream import (
    DownstreamConfig,
    classification_report,
    make_classifier,
    predict_proba,
)
from fesaug.evaluate.report import render_report
from fesaug.evaluate.run import EvaluateConfig, evaluate
from fesaug.evaluate.stats import paired_comparison, verdict
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import file_sha256
from fesaug.utils.locking import OutputLocked

from .conftest import cli_in_process as cli
from .conftest import copy_beside, holding, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 8, "contempt": 4, "disgust": 6, "fear": 4, "happy": 10, "sadness": 5, "surprise": 12}
CLASSES = list(COUNTS)
FOLDS = [0, 1]
ALL = ("real", "oversample", "fes", "fersnet")
NAMES = {*ALL, "synthetic-only"}  # every record aggregate() summarises
PNG = b"\x89PNG\r\n\x1a\n"


def _config(**downstream) -> EvaluateConfig:
    return EvaluateConfig(
        conditions=ALL,
        downstream=DownstreamConfig(**{"epochs": 2, "image_size": 32, "batch_size": 16, "device": "cpu", **downstream}),
        generator=tiny_config(epochs=1, device="cpu"),
        balance=BalanceConfig(min_confidence=0.0, batch_size=16),  # open gate: a 1-epoch generator's images count
        judges=(),  # the judges' scores are tested once, below, on a copy
    )


@dataclasses.dataclass
class Run:
    root: Path
    manifest: Path
    out: Path
    config: EvaluateConfig
    results: dict

    def fold(self, k: int) -> Path:
        return self.out / f"fold-{k}"

    def record(self, k: int, name: str, out: Path | None = None) -> dict:
        return json.loads(((out or self.out) / f"fold-{k}" / f"{name}.json").read_text())

    def copy(self, name: str) -> Path:
        return copy_beside(self.out, name)


@pytest.fixture(scope="module")
def run(one_thread, tmp_path_factory: pytest.TempPathFactory) -> Run:
    root = tmp_path_factory.mktemp("evaluation")
    manifest = make_demo_dataset(root / "demo", counts=COUNTS, n_subjects=9, size=32, folds=3)
    config = _config()
    result = evaluate(manifest, root / "out", config, folds=FOLDS)
    assert result.out_dir == root / "out" and result.report == root / "out" / "report.md"
    return Run(root, manifest, root / "out", config, result.results)


def _split(run: Run, k: int, out: Path | None = None) -> pd.DataFrame:
    return read_manifest((out or run.out) / f"fold-{k}" / "split.parquet").df


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _fold_mtimes(out: Path) -> dict[str, int]:
    return {name: t for name, t in _mtimes(out).items() if name.startswith("fold-")}


# ---------------------------------------------------------------------------- the folds


@pytest.mark.parametrize("k", FOLDS)
def test_each_fold_keeps_subjects_in_one_role_and_every_model_sees_the_same_split(run: Run, k: int) -> None:
    m = read_manifest(run.manifest)
    split = _split(run, k)
    roles = {role: set(split.loc[split["split"] == role, "subject_id"]) for role in ("train", "validation", "test")}
    assert all(roles.values()), roles
    assert not roles["train"] & roles["validation"]
    assert not roles["train"] & roles["test"]
    assert not roles["validation"] & roles["test"]
    assert set(split["split"]) == {"train", "validation", "test"}
    assert sorted(split["sample_id"]) == sorted(
        m.df["sample_id"]
    )  # the demo has no test split of its own: every row has a role

    # The test rows are exactly fold k of the input; no row of fold k trains or validates.
    test = split[split["split"] == "test"]
    assert sorted(test["sample_id"]) == sorted(m.df.loc[m.df["fold"] == k, "sample_id"])
    assert (split.loc[split["split"] != "test", "fold"] != k).all()

    # FERSNet of this fold held fold k out and validated on the split's validation subjects.
    gen = fesaug.load_generator(run.fold(k) / "fersnet" / "checkpoints" / "last.pt")
    assert gen.holdout_fold == k
    assert sorted(gen.validation_subjects) == sorted(roles["validation"])
    assert set(gen.training_subjects) == roles["train"]
    assert set(gen.heldout_subjects) == roles["test"]

    # Synthetic images are made from training subjects only, never from validation or test faces.
    balanced = read_manifest(run.fold(k) / "balanced" / "manifest.parquet")
    syn = balanced.df[balanced.df["origin"] == "synthetic"]
    assert len(syn) > 0
    role_of = dict(zip(split["sample_id"], split["split"]))
    subject_of = dict(zip(split["sample_id"], split["subject_id"]))
    assert {role_of[p] for p in syn["parent_id"]} == {"train"}
    assert {subject_of[p] for p in syn["parent_id"]} <= roles["train"]
    assert syn["subject_id"].tolist() == [subject_of[p] for p in syn["parent_id"]]
    assert set(syn["split"]) == {"train"}
    assert audit(balanced).problems == []


def test_unknown_fold_is_refused_before_anything_is_written(run: Run) -> None:
    out = run.root / "never"
    with pytest.raises(UsageError, match=r"--folds: .* has no fold 7 \(folds: 0, 1, 2\)"):
        evaluate(run.manifest, out, run.config, folds=[7])
    assert not out.exists()


# ---------------------------------------------------------------------------- the conditions


def test_results_have_every_condition_for_every_fold(run: Run) -> None:
    results = json.loads((run.out / "results.json").read_text())
    assert results["conditions"] == run.results["conditions"]
    assert set(results["conditions"]) == NAMES
    for name, summary in results["conditions"].items():
        assert summary["folds"] == FOLDS, name
        assert summary["accuracy"]["n"] == summary["macro_f1"]["n"] == len(FOLDS)
    assert set(results["per_fold"]) == {"0", "1"}
    for k in FOLDS:
        assert set(results["per_fold"][str(k)]) == NAMES
        for name in NAMES:
            record = run.record(k, name)
            assert record["condition"] == name and record["fold"] == k
            assert record["n_test"] == int((_split(run, k)["split"] == "test").sum())
            assert results["per_fold"][str(k)][name]["macro_f1"] == record["test"]["macro_f1"]
        for name in NAMES - {"fersnet"}:  # the downstream classifiers are saved next to their records
            assert (run.fold(k) / f"{name}.pt").is_file()
    assert results["synthesis"]["folds"] == FOLDS
    assert set(results["comparisons"]) == {"fes_vs_real", "fes_vs_oversample"}


@pytest.mark.parametrize("k", FOLDS)
def test_training_sets_of_the_conditions(run: Run, k: int) -> None:
    split = _split(run, k)
    train = split[split["split"] == "train"]
    real_counts = {c: int((train["label"] == i).sum()) for i, c in enumerate(CLASSES)}
    real, over, fes = (run.record(k, name) for name in ("real", "oversample", "fes"))

    assert real["train_counts"] == real_counts
    assert real["n_train"] == len(train)
    assert real["n_val"] == over["n_val"] == fes["n_val"] == int((split["split"] == "validation").sum())

    # fes trains on the real images plus the synthetic ones of the balanced manifest ...
    balanced = read_manifest(run.fold(k) / "balanced" / "manifest.parquet").df
    syn = balanced[balanced["origin"] == "synthetic"]
    assert fes["train_counts"] == {c: real_counts[c] + int((syn["label"] == i).sum()) for i, c in enumerate(CLASSES)}
    # ... which, with the gate open, reach the default target: every class at the largest.
    assert set(fes["train_counts"].values()) == {max(real_counts.values())}
    # oversample repeats real images up to exactly fes's per-class counts.
    assert over["train_counts"] == fes["train_counts"]
    assert over["n_train"] == fes["n_train"] == sum(fes["train_counts"].values()) > real["n_train"]

    # synthetic-only (classification accuracy score) trains on the synthetic images alone.
    only = run.record(k, "synthetic-only")
    assert only["n_train"] == len(syn)
    assert only["train_counts"] == {c: int((syn["label"] == i).sum()) for i, c in enumerate(CLASSES)}

    # The fersnet condition scores FERSNet's validation-selected checkpoint.
    gen = fesaug.load_generator(run.fold(k) / "fersnet" / "checkpoints" / "best.pt")
    assert run.record(k, "fersnet")["checkpoint_sha256"] == gen.checkpoint_sha256

    synthesis = run.record(k, "synthesis")
    assert synthesis["n_synthetic"] == len(syn)
    assert sum(e["n"] for e in synthesis["per_class"].values()) == len(syn)
    cas = synthesis["classification_accuracy_score"]
    assert cas["accuracy"] == only["test"]["accuracy"] and cas["macro_f1"] == only["test"]["macro_f1"]
    assert cas["real_accuracy"] == real["test"]["accuracy"] and cas["real_macro_f1"] == real["test"]["macro_f1"]
    assert set(synthesis["ground_truth"]) == {"synthetic", "copy_input"}


# ---------------------------------------------------------------------------- the metrics


@pytest.mark.parametrize("name", ["real", "fes"])
def test_test_scores_match_scikit_learn_on_the_saved_classifier(run: Run, name: str) -> None:
    k = 1
    saved = torch.load(run.fold(k) / f"{name}.pt", map_location="cpu", weights_only=True)
    model = make_classifier(saved["model"], saved["num_classes"], saved["image_size"])
    model.load_state_dict(saved["state_dict"])
    m = read_manifest(run.manifest)
    test_rows = np.flatnonzero((m.df["fold"] == k).to_numpy())
    data = ManifestDataset(m, rows=test_rows, image_size=32)
    pred = predict_proba(model.eval(), data.pixels).argmax(1)
    y, labels = data.labels, list(range(len(CLASSES)))

    test = run.record(k, name)["test"]
    assert test == classification_report(y, pred, CLASSES)
    assert test["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert test["macro_f1"] == pytest.approx(f1_score(y, pred, labels=labels, average="macro", zero_division=0))
    assert list(test["recall"].values()) == pytest.approx(
        recall_score(y, pred, labels=labels, average=None, zero_division=0)
    )
    assert test["confusion"]["matrix"] == confusion_matrix(y, pred, labels=labels).tolist()
    assert list(test["support"].values()) == np.bincount(y, minlength=len(CLASSES)).tolist()


def test_aggregate_is_numpy_over_the_fold_records(run: Run) -> None:
    results = run.results
    minority = results["protocol"]["minority_classes"]
    counts = list(COUNTS.values())
    assert minority == [c for c, n in COUNTS.items() if n < np.median(counts)]

    def check(stat: dict, values: list[float]) -> None:
        assert stat["n"] == len(values)
        assert stat["mean"] == pytest.approx(np.mean(values))
        assert stat["std"] == pytest.approx(np.std(values, ddof=1))

    for name in NAMES:
        tests = [run.record(k, name)["test"] for k in FOLDS]
        summary = results["conditions"][name]
        check(summary["accuracy"], [t["accuracy"] for t in tests])
        check(summary["macro_f1"], [t["macro_f1"] for t in tests])
        check(summary["minority_recall"], [np.mean([t["recall"][c] for c in minority]) for t in tests])
        for c in CLASSES:
            check(summary["recall"][c], [t["recall"][c] for t in tests])
    for base in ("real", "oversample"):
        comparison = results["comparisons"][f"fes_vs_{base}"]
        assert comparison["folds"] == FOLDS
        for metric in ("accuracy", "macro_f1"):
            expected = paired_comparison(
                [run.record(k, "fes")["test"][metric] for k in FOLDS],
                [run.record(k, base)["test"][metric] for k in FOLDS],
            )
            assert comparison[metric] == expected
    cas = results["synthesis"]["classification_accuracy_score"]
    check(cas["accuracy"], [run.record(k, "synthesis")["classification_accuracy_score"]["accuracy"] for k in FOLDS])
    assert results["synthesis"]["n_synthetic"] == sum(run.record(k, "synthesis")["n_synthetic"] for k in FOLDS)


def test_synthetic_recognised_share_comes_with_the_real_test_faces_share(run: Run) -> None:
    # The yardstick: the same real classifier on real test faces of the synthesized classes,
    # weighted like the synthetic set (classes absent from a test fold do not count).
    synthesis, weighted = run.results["synthesis"], []
    for k in FOLDS:
        test, syn = run.record(k, "real")["test"], run.record(k, "synthesis")["per_class"]
        used = [c for c in CLASSES if syn[c]["n"] and test["support"][c]]
        weighted.append(sum(test["recall"][c] * syn[c]["n"] for c in used) / sum(syn[c]["n"] for c in used))
    assert synthesis["real_test_recognised"]["mean"] == pytest.approx(np.mean(weighted))
    for c in CLASSES:
        values = [
            run.record(k, "real")["test"]["recall"][c]
            for k in FOLDS
            if run.record(k, "synthesis")["per_class"][c]["n"] and run.record(k, "real")["test"]["support"][c]
        ]
        assert synthesis["per_class"][c]["real_test_recognised"]["n"] == len(values)
        if values:
            assert synthesis["per_class"][c]["real_test_recognised"]["mean"] == pytest.approx(np.mean(values))
    report = (run.out / "report.md").read_text()
    assert "classifier recognises" in report and "real test faces recognised %" in report


# ---------------------------------------------------------------------------- resumption


def test_a_second_run_recomputes_nothing(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _fold_mtimes(run.out)
    settings = (run.out / "evaluate.json").read_text()
    decoded = []
    real_dataset = evaluation.ManifestDataset
    for module in (evaluation, fold_module):  # the pixels of every fold, and the other sizes of one
        monkeypatch.setattr(module, "ManifestDataset", lambda *a, **k: decoded.append(1) or real_dataset(*a, **k))
    again = evaluate(run.manifest, run.out, run.config, folds=FOLDS)
    assert not decoded  # nothing to train or score: no image is even decoded
    assert _fold_mtimes(run.out) == before  # every fold-k/*.json, *.pt, checkpoint, image and manifest
    assert (run.out / "evaluate.json").read_text() == settings
    assert again.results["conditions"] == run.results["conditions"]
    assert again.results["comparisons"] == run.results["comparisons"]
    assert json.loads((run.out / "results.json").read_text())["conditions"] == run.results["conditions"]


def test_an_interrupted_run_resumes_at_the_missing_pieces(run: Run) -> None:
    out = run.copy("interrupted")
    lost = ["fold-1/oversample.json", "fold-1/oversample.pt", "fold-1/synthesis.json"]
    for name in lost:
        (out / name).unlink()
    kept = _fold_mtimes(out)
    result = evaluate(run.manifest, out, run.config, folds=FOLDS)

    after = _fold_mtimes(out)
    assert set(after) == set(kept) | set(lost)  # nothing else was created ...
    assert {n: t for n, t in after.items() if n in kept} == kept  # ... or rewritten
    original, redone = run.record(1, "oversample"), run.record(1, "oversample", out)
    for key in ("test", "train_counts", "n_train", "best_epoch", "history"):
        assert redone[key] == original[key], key  # same seed, same numbers
    a = torch.load(run.fold(1) / "oversample.pt", weights_only=True)["state_dict"]
    b = torch.load(out / "fold-1" / "oversample.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert run.record(1, "synthesis", out) == run.record(1, "synthesis")
    assert result.results["conditions"] == run.results["conditions"]


def test_folds_run_separately_into_one_folder_are_aggregated_together(run: Run) -> None:
    # As if fold 0 had been run alone (fesaug evaluate --folds 0) and fold 1 is run now.
    out = run.copy("fold-by-fold")
    shutil.rmtree(out / "fold-1")
    before = _fold_mtimes(out)
    result = evaluate(run.manifest, out, run.config, folds=[1])
    assert {n: t for n, t in _fold_mtimes(out).items() if not n.startswith("fold-1")} == before
    for name, summary in result.results["conditions"].items():
        assert summary["folds"] == FOLDS, name
    assert set(result.results["per_fold"]) == {"0", "1"}
    assert result.results["comparisons"]["fes_vs_real"]["macro_f1"]["n_folds"] == 2
    assert result.results["synthesis"]["folds"] == FOLDS
    # The same numbers as the run over both folds at once: the folds are independent.
    assert result.results["per_fold"] == run.results["per_fold"]
    assert result.results["conditions"] == run.results["conditions"]
    assert json.loads((out / "results.json").read_text())["conditions"] == result.results["conditions"]


def test_a_fold_another_process_computes_is_locked_for_it_and_the_rest_stays_usable(run: Run) -> None:
    # bench/evaluate_parallel.py runs one process per fold into one --out.
    out = run.copy("parallel")
    with holding(out / "fold-1", "evaluate", "--out", out, "--folds", "1"):
        result = evaluate(run.manifest, out, run.config, folds=[0])  # beside it: fold 0, the settings, the summary
        assert result.results["per_fold"] == run.results["per_fold"]
        with pytest.raises(OutputLocked, match=rf"^{re.escape(str(out / 'fold-1'))} is in use by another fesaug run"):
            evaluate(run.manifest, out, run.config, folds=FOLDS)
        with pytest.raises(OutputLocked, match="fold-1 is in use"):  # --overwrite would delete it under that run
            evaluate(run.manifest, out, _config(epochs=1), folds=[0], overwrite=True)
        assert (out / "evaluate.json").read_text() == (run.out / "evaluate.json").read_text()
        assert (out / "fold-1" / "real.json").exists()
    # A run that finds another one reading or writing the summary waits for it, a few seconds at most.
    with holding(out, "evaluate", "--out", out, "--folds", "1") as sibling:
        threading.Timer(1.0, sibling.stdin.close).start()
        assert evaluate(run.manifest, out, run.config, folds=[0]).results["per_fold"] == run.results["per_fold"]


def test_a_finished_fold_is_free_for_other_runs_while_this_one_goes_on(run: Run, monkeypatch) -> None:
    # So a second evaluation can reuse a finished fold's generator (--generators-from) before the first ends.
    from fesaug.evaluate import run as run_module
    from fesaug.utils.locking import output_lock

    out = run.copy("released")
    seen = []
    run_fold = run_module.run_fold

    def run_fold_then_look(fold) -> None:
        run_fold(fold)
        if fold.k == FOLDS[-1]:
            with output_lock(out / f"fold-{FOLDS[0]}"):
                seen.append("the finished fold is free")
            with pytest.raises(OutputLocked), output_lock(out / f"fold-{FOLDS[-1]}"):
                pass

    monkeypatch.setattr(run_module, "run_fold", run_fold_then_look)
    evaluate(run.manifest, out, run.config, folds=FOLDS)
    assert seen == ["the finished fold is free"]


def test_a_fold_whose_training_subjects_lack_a_class_still_evaluates(run: Run) -> None:
    # Fold 2's training subjects have no 'fear' image: balance synthesizes fear from other
    # classes (what FES is for); oversample has nothing to repeat, says so, and goes on.
    m = read_manifest(run.manifest)
    split = split_subjects(m, 2, run.config.val_fraction, run.config.seed)
    assert CLASSES.index("fear") not in set(m.df["label"].iloc[split.train_rows])  # the premise
    out = run.copy("fold-2")
    result = evaluate(run.manifest, out, run.config, folds=[2])
    assert result.results["conditions"]["oversample"]["folds"] == [0, 1, 2]
    fes, over = run.record(2, "fes", out), run.record(2, "oversample", out)
    assert over["train_counts"]["fear"] == 0 < fes["train_counts"]["fear"]
    assert over["not_oversampled"] == ["fear"]


# ---------------------------------------------------------------------------- the settings guard


def test_other_settings_are_refused_unless_overwrite(run: Run) -> None:
    settings = (run.out / "evaluate.json").read_text()
    before = _mtimes(run.out)
    with pytest.raises(FesaugError, match=r"\(config.downstream.epochs: 2 -> 1, recorded -> now\).*--overwrite"):
        evaluate(run.manifest, run.out, _config(epochs=1), folds=FOLDS)
    assert _mtimes(run.out) == before and (run.out / "evaluate.json").read_text() == settings

    out = run.copy("overwritten")
    (out / "notes.txt").write_text("mine")
    result = evaluate(run.manifest, out, _config(epochs=1), folds=[0], overwrite=True)
    assert not (out / "fold-1").exists()  # the old evaluation is gone ...
    assert (out / "notes.txt").read_text() == "mine"  # ... the user's files are not
    assert json.loads((out / "evaluate.json").read_text())["config"]["downstream"]["epochs"] == 1
    assert len(run.record(0, "real", out)["history"]) == 1
    assert all(s["folds"] == [0] for s in result.results["conditions"].values())


def test_an_evaluation_recorded_by_version_1_before_the_downstream_precision_resumes(run: Run) -> None:
    out = run.copy("version-1")
    settings = json.loads((out / "evaluate.json").read_text())
    settings["schema_version"] = 1
    del settings["config"]["downstream"]["precision"]  # every version-1 evaluation trained in float32
    del settings["config"]["retune_head"]  # and re-tuned no last layer
    del settings["config"]["generator"]["loss"]["flow_target"]  # nor had the flow-target loss
    (out / "evaluate.json").write_text(json.dumps(settings))
    before = _fold_mtimes(out)
    evaluate(run.manifest, out, run.config, folds=FOLDS)
    assert _fold_mtimes(out) == before
    bf16 = dataclasses.replace(run.config, downstream=dataclasses.replace(run.config.downstream, precision="bfloat16"))
    with pytest.raises(FesaugError, match="precision"):
        evaluate(run.manifest, out, bf16, folds=FOLDS)


def test_settings_that_only_choose_pieces_or_the_device_do_not_count(run: Run) -> None:
    config = dataclasses.replace(
        run.config,
        conditions=("real",),
        synthesis=False,
        downstream=dataclasses.replace(run.config.downstream, device="auto"),
    )
    before = _fold_mtimes(run.out)
    result = evaluate(run.manifest, run.out, config, folds=FOLDS)  # resumes: nothing to do
    assert _fold_mtimes(run.out) == before
    assert set(result.results["conditions"]) == NAMES  # the report covers every record present


def test_an_evaluation_recorded_before_a_config_key_existed_resumes(run: Run) -> None:
    out = run.copy("older-version")
    settings = json.loads((out / "evaluate.json").read_text())
    assert settings.pop("schema_version") == 4  # as versions before schema versions wrote it
    del (
        settings["config"]["generator"]["loss"]["mask_smoothness"],
        settings["config"]["generator"]["expression_classifier"],
        settings["config"]["downstream"]["precision"],
        settings["config"]["retune_head"],
        settings["config"]["generator"]["loss"]["flow_target"],
    )
    # The balance settings' old name for the held-out folds, as BalanceConfig.exclude_folds wrote it.
    settings["config"]["balance"]["exclude_folds"] = settings["config"]["balance"].pop("holdout_folds")
    (out / "evaluate.json").write_text(json.dumps(settings))
    before = _fold_mtimes(out)
    evaluate(run.manifest, out, run.config, folds=FOLDS)  # the missing keys meant their defaults
    assert _fold_mtimes(out) == before
    settings["config"]["generator"]["loss"]["mask_smoothness"] = 2.0  # a recorded non-default still counts
    (out / "evaluate.json").write_text(json.dumps(settings))
    with pytest.raises(FesaugError, match="other settings"):
        evaluate(run.manifest, out, run.config, folds=FOLDS)


@pytest.mark.parametrize("theirs", ["results.json", "fold-0/real.json"])
def test_a_folder_with_outputs_evaluate_did_not_record_is_refused(run: Run, tmp_path: Path, theirs: str) -> None:
    (tmp_path / theirs).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / theirs).write_text("{}")
    with pytest.raises(FesaugError, match="did not record .* choose a new --out"):
        evaluate(run.manifest, tmp_path, run.config, folds=FOLDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == [theirs.split("/")[0]]  # nothing written
    with pytest.raises(FesaugError, match="did not record"):
        evaluate(run.manifest, tmp_path, run.config, folds=FOLDS, overwrite=True)  # not ours to delete either
    assert (tmp_path / theirs).read_text() == "{}"


def test_out_that_is_a_file_is_refused(run: Run, tmp_path: Path) -> None:
    (tmp_path / "out").write_text("x")
    with pytest.raises(FesaugError, match="is a file"):
        evaluate(run.manifest, tmp_path / "out", run.config, folds=FOLDS)


# ---------------------------------------------------------------------------- reusing generators


def test_generators_from_another_evaluation_are_copied_and_the_rest_is_computed_with_this_runs_settings(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = run.root / "other-downstream"

    def no_training(*args, **kwargs):
        raise AssertionError("FERSNet trained again")

    monkeypatch.setattr(fold_module, "train", no_training)
    result = evaluate(run.manifest, out, _config(epochs=1), folds=[0], generators_from=run.out)
    theirs, ours = run.fold(0) / "fersnet", out / "fold-0" / "fersnet"
    assert file_sha256(ours / "checkpoints" / "last.pt") == file_sha256(theirs / "checkpoints" / "last.pt")
    assert len(run.record(0, "fes", out)["history"]) == 1  # this run's downstream recipe, not the source's 2 epochs
    # The same generator and balance settings make the same synthetic faces.
    synthetic = [
        read_manifest(f / "balanced" / "manifest.parquet").df.query("origin != 'real'")
        for f in (run.fold(0), out / "fold-0")
    ]
    assert len(synthetic[0]) > 0 and synthetic[0]["sha256"].tolist() == synthetic[1]["sha256"].tolist()
    assert json.loads((out / "evaluate.json").read_text())["generators_from"] == str(run.out)
    assert result.results["conditions"]["fes"]["folds"] == [0]


def test_generators_from_refuses_other_generator_settings_other_data_and_unfinished_folds(
    run: Run, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    other = dataclasses.replace(run.config, generator=tiny_config(epochs=2, device="cpu"))
    with pytest.raises(FesaugError, match=r"other settings \(generator.epochs: 1 -> 2\)"):
        evaluate(run.manifest, out, other, folds=[0], generators_from=run.out)
    with pytest.raises(FesaugError, match="fold 2 has no finished generator"):
        evaluate(run.manifest, out, run.config, folds=[2], generators_from=run.out)
    with pytest.raises(FesaugError, match="no evaluate.json"):
        evaluate(run.manifest, out, run.config, folds=[0], generators_from=tmp_path)
    m = read_manifest(run.manifest)
    fewer = write_manifest(m.df.iloc[1:], tmp_path / "fewer.parquet", classes=m.classes, image_root=str(m.image_root))
    with pytest.raises(FesaugError, match="evaluated another manifest"):
        evaluate(fewer, out, run.config, folds=[0], generators_from=run.out)
    assert not out.exists()  # every check before anything is written


# ---------------------------------------------------------------------------- the CLI


def test_cli_bad_folds_is_a_usage_error(run: Run, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _out, err = cli(capsys, "evaluate", "--manifest", run.manifest, "--out", tmp_path / "e", "--folds", "x")
    assert code == 2
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and "--folds" in err
    assert not (tmp_path / "e").exists()


def test_cli_unknown_condition_is_one_error_line(run: Run, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    code, _out, err = cli(
        capsys,
        "evaluate",
        "--manifest",
        run.manifest,
        "--out",
        tmp_path / "e",
        "--conditions",
        "real,bogus",
        "--device",
        "cpu",
    )
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    assert "bogus" in lines[0] and "--conditions" in lines[0]
    assert "Traceback" not in err and not (tmp_path / "e").exists()


@pytest.mark.parametrize("folds", [None, 0], ids=["no-folds", "one-fold"])
def test_cli_manifest_without_folds_names_the_fix(
    run: Run, capsys: pytest.CaptureFixture, tmp_path: Path, folds
) -> None:
    m = read_manifest(run.manifest)
    df = m.df.copy()
    df["fold"] = folds
    path = write_manifest(df, tmp_path / "nofolds.parquet", classes=m.classes, image_root=str(m.image_root))
    code, _out, err = cli(capsys, "evaluate", "--manifest", path, "--out", tmp_path / "e", "--device", "cpu")
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), err
    assert "--folds" in lines[0] and f"{0 if folds is None else 1} fold(s)" in lines[0]
    assert not (tmp_path / "e").exists()


def test_cli_generators_from_a_folder_evaluate_did_not_write_is_one_error_line(
    run: Run, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    code, _out, err = cli(
        capsys,
        "evaluate",
        "--manifest",
        run.manifest,
        "--out",
        tmp_path / "e",
        "--folds",
        "0",
        "--generators-from",
        tmp_path,
        "--device",
        "cpu",
    )
    assert code == 1
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: --generators-from") and "evaluate.json" in lines[0], err
    assert not (tmp_path / "e").exists()


def test_cli_downstream_defaults_are_the_librarys() -> None:
    from fesaug.cli.evaluate import evaluate_command

    defaults = {p.name: p.default for p in evaluate_command.params}
    assert defaults["epochs"] == DownstreamConfig().epochs
    assert defaults["label_smoothing"] == DownstreamConfig().label_smoothing


def test_cli_evaluate_synthesis_help(capsys: pytest.CaptureFixture) -> None:
    code, out, _err = cli(capsys, "evaluate-synthesis", "--help")
    assert code == 0
    assert "Shares its fold caches with `fesaug evaluate`" in out and "--generator-epochs" in out
    assert "--conditions" not in out  # evaluate-synthesis always runs real + the synthesis report


def test_cli_evaluate_synthesis_runs_and_resumes(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    # The CLI has no generator --batch-size, so the cpu preset's batch of 32 needs >= 32 training images.
    manifest = make_demo_dataset(
        tmp_path / "demo",
        size=32,
        folds=3,
        n_subjects=9,
        counts={"anger": 10, "contempt": 6, "disgust": 8, "fear": 6, "happy": 12, "sadness": 6, "surprise": 14},
    )
    args = [
        "evaluate-synthesis",
        "--manifest",
        manifest,
        "--out",
        tmp_path / "e",
        "--folds",
        "0",
        "--epochs",
        "1",
        "--image-size",
        "32",
        "--generator-epochs",
        "1",
        "--min-confidence",
        "0",
        "--device",
        "cpu",
    ]
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "synthetic-only" in out and "recognised as their target" in out and "wrote" in out
    assert "its real test faces of those classes" in out
    assert "identity distance to the parent (dlib)" in out and "FER2013 judge" in out  # --judges auto: all installed
    results = json.loads((tmp_path / "e" / "results.json").read_text())
    assert set(results["conditions"]) == {"real", "synthetic-only"}
    assert not (tmp_path / "e" / "fold-0" / "fes.json").exists()
    assert results["synthesis"]["n_synthetic"] > 0
    assert "exact counterfactuals" in (tmp_path / "e" / "report.md").read_text()

    before = _fold_mtimes(tmp_path / "e")
    code, out, err = cli(capsys, *args)
    assert code == 0, err
    assert "training FERSNet" not in err and _fold_mtimes(tmp_path / "e") == before


# ---------------------------------------------------------------------------- the report


def test_report_and_plot(run: Run) -> None:
    report = (run.out / "report.md").read_text()
    results = json.loads((run.out / "results.json").read_text())
    assert report.startswith("# fesaug evaluate")
    assert (
        "- Protocol: subject-independent folds; test folds 0, 1 of 0, 1, 2, each used for the final score only."
        in report
    )
    assert "## Test-fold scores" in report
    for name in NAMES:
        assert f"| `{name}` | 2 |" in report, name
    real = results["conditions"]["real"]["macro_f1"]
    assert f"{real['mean'] * 100:.1f} ± {real['std'] * 100:.1f}" in report
    assert "## Paired comparison over folds" in report
    assert "| fes vs real | macro f1 |" in report and "| fes vs oversample | macro f1 |" in report
    n = results["synthesis"]["n_synthetic"]
    assert f"## Synthesis quality ({n} synthetic images over folds 0, 1)" in report
    assert "Classification accuracy score" in report
    assert "Against the demo dataset's exact counterfactuals" in report
    assert "## Per fold: macro-F1" in report
    # Two folds cannot decide: the verdict says so instead of a recommendation alone.
    assert results["verdict"] == verdict(results["comparisons"], 1)
    assert "## Verdict" in report and "- Caution: 2 fold(s)" in report
    # The report is rendered from results.json alone.
    assert render_report(results, CLASSES) == report
    png = (run.out / "recall.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 1000


# ---------------------------------------------------------------------------- AU consistency (#6)


def test_au_consistency_per_target_class_is_reported(run: Run) -> None:
    from fesaug.data.au import au_consistency
    from fesaug.multitask import MultiTaskConfig, load_emotion_au, train_multitask

    config = MultiTaskConfig(model={"image_size": 32, "widths": (8, 16, 16)}, epochs=1, batch_size=8, holdout_fold=0)
    au_ckpt = train_multitask(run.manifest, run.root / "au-run", config).best_checkpoint
    out = run.copy("with-au")
    before = {n: t for n, t in _fold_mtimes(out).items() if not n.endswith("synthesis.json")}
    with_au = dataclasses.replace(run.config, au_checkpoint=str(au_ckpt))
    result = evaluate(run.manifest, out, with_au, folds=FOLDS)

    # Only the synthesis report is redone: the AU model is a judge, not a setting of the models.
    assert {n: t for n, t in _fold_mtimes(out).items() if n in before} == before
    scores = run.record(0, "synthesis", out)["au_consistency"]
    assert set(scores) == set(CLASSES)
    # The numbers are the balance gate's au_consistency, averaged over each target class's images.
    model = load_emotion_au(au_ckpt, device="cpu")
    syn = ManifestDataset(out / "fold-0" / "balanced" / "manifest.parquet", origins=("synthetic",), image_size=32)
    _, aus = model.predict(syn.pixels)
    for k, c in enumerate(CLASSES):
        mine = torch.from_numpy(syn.labels == k)
        if mine.any():
            expected = au_consistency(aus[mine], model.au_ids, c).mean().item()
            assert scores[c]["synthetic"] == pytest.approx(expected, abs=1e-6), c
        else:
            assert scores[c]["synthetic"] is None
    summary = result.results["synthesis"]["au_consistency"]
    assert summary["fear"]["synthetic"]["mean"] == pytest.approx(
        np.mean([run.record(k, "synthesis", out)["au_consistency"]["fear"]["synthetic"] for k in FOLDS])
    )
    report = (out / "report.md").read_text()
    assert "| AU consistency synthetic | AU consistency real test |" in report


def test_judges_trained_elsewhere_score_each_target_class_beside_real_face_yardsticks(run: Run) -> None:
    from fesaug.judges import load_judge
    from fesaug.judges.report import yardstick_pairs

    out = run.copy("with-judges")
    before = {n: t for n, t in _fold_mtimes(out).items() if not n.endswith("synthesis.json")}
    result = evaluate(
        run.manifest, out, dataclasses.replace(run.config, judges=("identity", "fer2013", "perceptual")), folds=FOLDS
    )
    assert {n: t for n, t in _fold_mtimes(out).items() if n in before} == before  # only the report is redone
    record = run.record(0, "synthesis", out)["judges"]
    assert set(record) == {"identity", "fer2013", "perceptual"}

    # Identity: each synthetic face against its parent, and real training pairs as the yardstick.
    split = read_manifest(out / "fold-0" / "split.parquet")
    train = np.flatnonzero((split.df["split"] == "train").to_numpy())
    real = ManifestDataset(split, rows=train, image_size=32)
    b = read_manifest(out / "fold-0" / "balanced" / "manifest.parquet")
    syn = ManifestDataset(b, origins=("synthetic",), image_size=32)
    syn_df = b.df.iloc[syn.rows]
    where = {sid: i for i, sid in enumerate(split.df["sample_id"].iloc[train])}
    parents = np.array([where[p] for p in syn_df["parent_id"]])
    judge = load_judge("identity")
    emb_real = judge.embed(real.pixels)
    dist = np.linalg.norm(judge.embed(syn.pixels) - emb_real[parents], axis=1)
    assert record["identity"]["all"]["median"] == pytest.approx(np.nanmedian(dist), abs=1e-4)
    for k, c in enumerate(CLASSES):
        if (syn.labels == k).any():
            assert record["identity"]["per_class"][c]["median"] == pytest.approx(
                np.nanmedian(dist[syn.labels == k]), abs=1e-4
            )
    same = yardstick_pairs(split.df["subject_id"].iloc[train].astype(str).tolist(), real.labels)["same_subject"]
    expected = np.median(np.linalg.norm(emb_real[same[:, 0]] - emb_real[same[:, 1]], axis=1))
    assert record["identity"]["yardstick"]["same_subject"]["median"] == pytest.approx(expected, abs=1e-4)
    assert record["identity"]["yardstick"]["same_subject"]["n"] == len(same)

    # FER2013: contempt is not judged; the other classes come with the share on real test faces.
    fer = record["fer2013"]
    assert fer["not_judged"] == ["contempt"]
    assert all(e["judged"] == (c != "contempt") for c, e in fer["per_class"].items())
    assert all(0 <= e["synthetic"] <= 1 for e in fer["per_class"].values() if e["judged"])
    assert record["perceptual"]["yardstick"]["different_subject"]["median"] > 0

    summary = result.results["synthesis"]["judges"]
    medians = [run.record(k, "synthesis", out)["judges"]["identity"]["all"]["median"] for k in FOLDS]
    assert summary["identity"]["all"]["median"]["mean"] == pytest.approx(np.mean(medians))
    assert summary["identity"]["all"]["n"] == sum(
        run.record(k, "synthesis", out)["judges"]["identity"]["all"]["n"] for k in FOLDS
    )
    report = (out / "report.md").read_text()
    assert "### Judges trained elsewhere" in report and "| FER2013 recognised % |" in report
    assert "| contempt |" in report and "not judged" in report
    assert "real pairs: same subject, other expression" in report


def test_judge_gate_uses_a_second_real_classifier_of_the_fold(run: Run) -> None:
    config = dataclasses.replace(
        run.config, judge=True, balance=BalanceConfig(min_confidence=0.0, batch_size=16, min_judge_confidence=0.0)
    )
    out = run.root / "judged"
    evaluate(run.manifest, out, config, folds=[0])
    judge, real = run.record(0, "judge", out), run.record(0, "real", out)
    # Same data and recipe as `real`, another seed: the model that scores the synthetic images
    # is not the one that chose them.
    assert judge["train_counts"] == real["train_counts"] and judge["history"] != real["history"]
    b = read_manifest(out / "fold-0" / "balanced" / "manifest.parquet")
    assert b.meta["balance"]["judge_check"]["checkpoint_sha256"] == file_sha256(out / "fold-0" / "judge.pt")
    assert b.df.loc[b.df["origin"] == "synthetic", "judge_confidence"].between(0, 1).all()
    assert "independent real-data classifier" in (out / "report.md").read_text()


def test_expression_judge_trains_the_judge_before_the_generator_that_learns_from_it(run: Run) -> None:
    config = dataclasses.replace(run.config, conditions=("fes",), expression_judge=True)
    out = run.root / "expression-judged"
    evaluate(run.manifest, out, config, folds=[0])
    fold = out / "fold-0"
    judge = run.record(0, "judge", out)
    assert judge["train_counts"] == run.record(0, "real")["train_counts"]
    # FERSNet of this fold records the judge it learned from (and only this fold's judge).
    used = json.loads((fold / "fersnet" / "provenance.json").read_text())["expression_classifier"]
    assert used == {"path": str(fold / "judge.pt"), "sha256": file_sha256(fold / "judge.pt")}
    metrics = [json.loads(line) for line in (fold / "fersnet" / "metrics.jsonl").read_text().splitlines()]
    assert metrics and all(np.isfinite(m["loss_expression"]) for m in metrics)
    results = json.loads((out / "results.json").read_text())
    assert results["protocol"]["generator"]["expression_loss_judge"] == "the fold's judge classifier"
    report = (out / "report.md").read_text()
    assert "expression loss judged by the fold's judge classifier" in report
    # Its recognised share is no independent check any more, and the report says so.
    assert "fooling one transfers to the other" in report
    assert "fooling one transfers" not in (run.out / "report.md").read_text()


def test_one_expression_classifier_for_every_fold_is_refused(run: Run, tmp_path: Path) -> None:
    # A classifier trained once has seen the test subjects of every fold but one.
    (tmp_path / "judge.pt").write_bytes(b"x")
    with pytest.raises(UsageError, match="--expression-judge"):
        dataclasses.replace(run.config, generator=tiny_config(expression_classifier=str(tmp_path / "judge.pt")))


def test_cli_summary_gives_the_verdict(run: Run) -> None:
    from cli.evaluate import format_summary
    from fesaug.evaluate.report import verdict_text

    lines = format_summary(run.results).splitlines()
    assert f"verdict: {verdict_text(run.results['verdict'])}" in lines
    assert "caution: 2 fold(s): the signed-rank test needs at least 6 to reach p < 0.05; evaluate more folds" in lines
    assert lines[-1].startswith("synthetic images recognised")  # the verdict closes the comparisons


def test_cli_generator_config_sets_loss_weights_and_flags_still_win(
    capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    from fesaug.evaluate.run import EvaluateConfig as Config

    seen: list[Config] = []

    def fake_evaluate(manifest, out, config, **kwargs):
        seen.append(config)
        raise FesaugError("stop here")

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("epochs: 99\nbatch_size: 4\nloss:\n  mask_smoothness: 0.5\n  expression: 2.0\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fesaug.evaluate.run.evaluate", fake_evaluate)
        code, _out, err = cli(
            capsys,
            "evaluate",
            "--manifest",
            tmp_path / "m.parquet",
            "--out",
            tmp_path / "e",
            "--generator-config",
            recipe,
            "--generator-epochs",
            "3",
            "--device",
            "cpu",
            "--downstream-seeds",
            "3",
            "--conditions",
            "real,oversample,mixed",
            "--label-smoothing",
            "0",
            "--precision",
            "bfloat16",
            "--retune-head",
        )
    assert code == 1 and "Error: stop here" in err
    assert seen[0].downstream.precision == "bfloat16" and seen[0].retune_head
    assert seen[0].downstream_seeds == 3 and seen[0].conditions == ("real", "oversample", "mixed")
    assert seen[0].downstream.label_smoothing == 0.0  # an evaluation made before smoothing was the default resumes
    generator = seen[0].generator
    assert (generator.loss.mask_smoothness, generator.loss.expression) == (0.5, 2.0)
    assert (generator.epochs, generator.batch_size) == (3, 4)  # the flag over the file, the file over the preset


def test_fersnet_fine_tuned_on_the_balanced_set_is_the_papers_condition(run: Run) -> None:
    out = run.copy("fine-tuned")
    before = _fold_mtimes(out)
    config = dataclasses.replace(run.config, conditions=(*ALL, "fersnet+fes"))
    results = evaluate(run.manifest, out, config, folds=[0]).results
    # Only the new condition is computed; FERSNet, the balanced set and the other models are reused.
    assert {n for n, t in _fold_mtimes(out).items() if before.get(n) != t} == {"fold-0/fersnet+fes.json"}
    record = run.record(0, "fersnet+fes", out)
    assert record["init_checkpoint_sha256"] == file_sha256(run.fold(0) / "fersnet" / "checkpoints" / "best.pt")
    assert record["train_counts"] == run.record(0, "fes")["train_counts"]  # real + synthetic, as fes
    assert record["lr"] == pytest.approx(run.config.downstream.lr / 10)
    assert record["n_test"] == run.record(0, "real")["n_test"] and 0 <= record["test"]["macro_f1"] <= 1
    assert results["conditions"]["fersnet+fes"]["folds"] == [0]
    compared = results["comparisons"]["fersnet+fes_vs_fersnet"]
    assert compared["folds"] == [0] and compared["macro_f1"]["mean_difference"] == pytest.approx(
        record["test"]["macro_f1"] - run.record(0, "fersnet")["test"]["macro_f1"]
    )
    assert "fine-tuned on real + synthetic" in (out / "report.md").read_text()


def test_fersnet_fine_tuned_on_oversampled_real_images_is_the_control(run: Run) -> None:
    out = run.copy("fine-tuned-control")
    config = dataclasses.replace(run.config, conditions=(*ALL, "fersnet+fes", "fersnet+oversample"))
    results = evaluate(run.manifest, out, config, folds=[0]).results
    control, paper = run.record(0, "fersnet+oversample", out), run.record(0, "fersnet+fes", out)
    # Same start, same per-class counts, same schedule: only the synthetic faces differ.
    assert control["init_checkpoint_sha256"] == paper["init_checkpoint_sha256"]
    assert control["train_counts"] == paper["train_counts"] == run.record(0, "oversample")["train_counts"]
    assert control["lr"] == paper["lr"]
    compared = results["comparisons"]["fersnet+fes_vs_fersnet+oversample"]
    assert compared["macro_f1"]["mean_difference"] == pytest.approx(
        paper["test"]["macro_f1"] - control["test"]["macro_f1"]
    )
    assert "fersnet+fes vs fersnet+oversample" in (out / "report.md").read_text()


def test_mixed_fills_half_of_each_shortfall_with_synthetic_images_and_half_with_real_repeats(run: Run) -> None:
    out = run.copy("mixed")
    before = _fold_mtimes(out)
    config = dataclasses.replace(run.config, conditions=(*ALL, "mixed"))
    results = evaluate(run.manifest, out, config, folds=[0]).results
    assert {n for n, t in _fold_mtimes(out).items() if before.get(n) != t} == {"fold-0/mixed.json", "fold-0/mixed.pt"}
    mixed, fes, real = (run.record(0, name, out) for name in ("mixed", "fes", "real"))
    # The same per-class counts as fes and oversample: only where the new images come from differs.
    assert mixed["train_counts"] == fes["train_counts"] == run.record(0, "oversample", out)["train_counts"]
    shortfall = {c: fes["train_counts"][c] - real["train_counts"][c] for c in CLASSES}
    assert mixed["n_synthetic"] == sum(s // 2 for s in shortfall.values()) > 0
    compared = results["comparisons"]["mixed_vs_oversample"]
    assert compared["macro_f1"]["mean_difference"] == pytest.approx(
        mixed["test"]["macro_f1"] - run.record(0, "oversample", out)["test"]["macro_f1"]
    )
    assert "mixed vs oversample" in (out / "report.md").read_text()


def test_several_downstream_seeds_are_averaged_per_fold_before_the_comparison(run: Run) -> None:
    out = run.copy("seeds")
    before = _fold_mtimes(out)
    config = dataclasses.replace(run.config, downstream_seeds=2)
    results = evaluate(run.manifest, out, config, folds=[0]).results
    # The first seed's records and models are reused; the second seed adds records only.
    added = {n for n, t in _fold_mtimes(out).items() if before.get(n) != t}
    assert added == {f"fold-0/seeds/{name}-1.json" for name in ("real", "oversample", "fes")}
    first, second = (
        run.record(0, "oversample", out),
        json.loads((out / "fold-0" / "seeds" / "oversample-1.json").read_text()),
    )
    assert (first["seed"], second["seed"]) == (run.config.downstream.seed, run.config.downstream.seed + 1)
    assert second["train_counts"] == first["train_counts"]
    for name in ("real", "oversample", "fes"):
        scores = [
            run.record(0, name, out)["test"]["macro_f1"],
            json.loads((out / "fold-0" / "seeds" / f"{name}-1.json").read_text())["test"]["macro_f1"],
        ]
        assert results["per_fold"]["0"][name]["macro_f1"] == pytest.approx(np.mean(scores))
    assert results["conditions"]["fersnet"]["seeds_per_fold"] == [1]  # no seed: one checkpoint
    compared = results["comparisons"]["fes_vs_oversample"]
    assert compared["macro_f1"]["differences"][compared["folds"].index(0)] == pytest.approx(
        results["per_fold"]["0"]["fes"]["macro_f1"] - results["per_fold"]["0"]["oversample"]["macro_f1"]
    )
    # Fold 1 has one seed so far: the report says how many each condition has.
    assert results["conditions"]["oversample"]["seeds_per_fold"] == [1, 2]
    assert "seeds per fold" in (out / "report.md").read_text()
    # The number of seeds only chooses pieces: a later run with the default reuses and still averages them.
    again = evaluate(run.manifest, out, run.config, folds=[0]).results
    assert again["per_fold"]["0"]["fes"] == results["per_fold"]["0"]["fes"]


def test_soft_synthetic_labels_reach_the_downstream_classifier(run: Run) -> None:
    out = run.root / "soft"
    balance = dataclasses.replace(run.config.balance, synthetic_labels="soft", intensity=(0.4, 0.8))
    config = dataclasses.replace(run.config, conditions=("fes",), balance=balance, synthesis=False)
    evaluate(run.manifest, out, config, folds=[0], generators_from=run.out)
    soft, hard = run.record(0, "fes", out), run.record(0, "fes", run.out)
    # Edits at intensities 0.4-0.8 keep that share of their label on the target, the rest on the source.
    assert 0.4 < soft["soft_label_mass"] < 1 and "soft_label_mass" not in hard
    assert soft["train_counts"] == hard["train_counts"]


def test_retune_head_refits_every_condition_s_last_layer_on_the_real_faces(run: Run) -> None:
    out = run.root / "retune"
    config = dataclasses.replace(
        run.config, conditions=("real", "oversample", "fes"), retune_head=True, synthesis=False
    )
    evaluate(run.manifest, out, config, folds=[0], generators_from=run.out)
    for name in ("real", "oversample", "fes"):
        retune = run.record(0, name, out)["retune_head"]
        assert isinstance(retune["applied"], bool) and 0 <= retune["val_macro_f1_before"] <= 1
        assert "retune_head" not in run.record(0, name, run.out)
        # The trained layer's own test scores are kept beside the re-tuned ones: unchanged when not applied.
        if not retune["applied"]:
            assert retune["test_before"] == run.record(0, name, out)["test"]
        assert 0 <= retune["test_before"]["macro_f1"] <= 1
    settings = json.loads((out / "evaluate.json").read_text())["config"]
    assert settings["retune_head"] is True and settings["downstream"]["precision"] == "float32"
    # The report says what the re-tune changed, per condition, from the same records.
    summary = json.loads((out / "results.json").read_text())["retune_head"]
    assert set(summary) == {"real", "oversample", "fes"}
    for name, r in summary.items():
        record = run.record(0, name, out)
        assert r["trained_macro_f1"]["mean"] == pytest.approx(record["retune_head"]["test_before"]["macro_f1"])
        assert r["kept_macro_f1"]["mean"] == pytest.approx(record["test"]["macro_f1"])
        assert r["applied_share"] == float(record["retune_head"]["applied"])
    assert "## The re-tuned last layer" in (out / "report.md").read_text()
    assert json.loads((run.out / "results.json").read_text())["retune_head"] == {}  # a run without the re-tune


def test_an_evaluation_recorded_with_the_old_name_of_the_held_out_folds_is_the_same_settings() -> None:
    from fesaug.evaluate.records import migrate_key_v0_to_v1 as _recorded_key
    from fesaug.utils.runlog import jsonable

    config = EvaluateConfig(balance=BalanceConfig(holdout_folds=(1,)))
    old = json.loads(json.dumps(jsonable(config.key())))
    old["balance"]["exclude_folds"] = old["balance"].pop("holdout_folds")
    assert _recorded_key(old) == jsonable(config.key())
    assert _recorded_key(old) != jsonable(EvaluateConfig(balance=BalanceConfig(holdout_folds=(2,))).key())


def test_an_evaluation_recorded_before_downstream_label_smoothing_existed_was_made_without_it() -> None:
    from fesaug.evaluate.records import migrate_key_v0_to_v1 as _recorded_key
    from fesaug.utils.runlog import jsonable

    before = EvaluateConfig(downstream=DownstreamConfig(label_smoothing=0.0, erasing=0.0))
    old = json.loads(json.dumps(jsonable(before.key())))
    del old["downstream"]["label_smoothing"], old["downstream"]["erasing"]
    assert _recorded_key(old) == jsonable(before.key())
    assert _recorded_key(old) != jsonable(EvaluateConfig().key())  # today's default smooths


def test_an_evaluation_recorded_before_the_warp_decoder_means_the_attention_decoder() -> None:
    from fesaug.evaluate.records import migrate_key_v0_to_v1 as _recorded_key
    from fesaug.synthesis.config import load_config
    from fesaug.synthesis.records import LEGACY
    from fesaug.utils.runlog import jsonable

    attention = EvaluateConfig(
        generator=load_config(Path(__file__).parents[1] / "bench" / "recipes" / "attention.yaml")
    )
    # The key as fesaug wrote it then: the model's overrides (none: attention was the default),
    # no resolved model, none of the keys added since.
    old = json.loads(json.dumps(jsonable(attention.key())))
    generator = old["generator"]
    del generator["resolved_model"]
    generator["model"] = {}
    for key in LEGACY:
        if key != "loss":
            del generator[key]
    for key in LEGACY["loss"]:
        del generator["loss"][key]
    assert _recorded_key(old) == jsonable(attention.key())
    assert _recorded_key(old) != jsonable(EvaluateConfig().key())  # today's defaults are another generator
