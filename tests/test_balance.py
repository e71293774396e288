"""fesaug balance: target resolution, source selection, the gate, provenance, resumption,
determinism across seeds and processes, and its errors. A tiny FERSNet trained for one epoch
on a tiny imbalanced demo set stands in for a real generator: these tests check the
bookkeeping, not image quality (the gate is opened with min_confidence=0 where counts matter)."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

import fesaug
import fesaug.data
from fesaug.audit.report import audit
from fesaug.balance import BalanceConfig, BalanceResult
from fesaug.balance import run as balancing
from fesaug.balance.plan import candidate, plan_sources
from fesaug.data.datasets import ManifestDataset
from fesaug.data.images import sha256_bytes
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.utils.errors import FesaugError, UsageError

from .conftest import REPO, SMALL_COUNTS, cli_in_process, run_cli

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = SMALL_COUNTS
OPEN = {"min_confidence": 0.0, "batch_size": 8}
# Every run on the CPU, so results compare across runs on a machine with a GPU too.
balance = functools.partial(balancing.balance, device="cpu")


@pytest.fixture(scope="module")
def demo(small_demo: Path) -> Path:
    return small_demo


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint: Path) -> Path:
    return small_checkpoint


@pytest.fixture(scope="module")
def balanced(demo: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> BalanceResult:
    return balance(demo, checkpoint, tmp_path_factory.mktemp("out") / "balanced", BalanceConfig(**OPEN))


def _working_counts(manifest: Path, excluded: int = 0) -> dict[str, int]:
    m = read_manifest(manifest)
    df = m.df[(m.df["fold"] != excluded) & (m.df["origin"] == "real")]
    return {c: int((df["label"] == k).sum()) for k, c in enumerate(m.classes)}


# ---------------------------------------------------------------------------- sources


def test_sources_are_round_robin_over_subjects_lacking_the_target_first() -> None:
    #            rows:   0    1    2    3    4    5    6    7
    labels = np.array([0, 1, 1, 1, 2, 2, 0, 1])
    subjects = ["A", "A", "A", "B", "B", "C", "C", "D"]
    rows = np.arange(8) + 100
    order = plan_sources(labels, subjects, rows, target=0, seed=3)
    assert sorted(order) == [101, 102, 103, 104, 105, 107]  # every non-target row, once
    first_round = order[:2]  # B and D have no image of class 0: they come first
    assert {r - 100 for r in first_round} <= {3, 4, 7}
    assert len({subjects[r - 100] for r in first_round}) == 2
    # Each group takes one image per subject per round.
    assert len({subjects[r - 100] for r in order[2:4]}) == 2
    assert order == plan_sources(labels, subjects, rows, target=0, seed=3)
    assert any(plan_sources(labels, subjects, rows, target=0, seed=s) != order for s in range(4, 10))


def test_similar_order_tries_the_faces_closest_to_the_target_first_but_keeps_spreading_identities() -> None:
    #            rows:    0    1    2    3    4    5    6    7
    labels = np.array([0, 1, 1, 1, 2, 2, 0, 1])
    subjects = ["A", "A", "A", "B", "B", "C", "C", "D"]
    similarity = np.array([0.9, 0.1, 0.6, 0.2, 0.8, 0.7, 0.9, 0.3])
    rows = np.arange(8) + 100
    order = [r - 100 for r in plan_sources(labels, subjects, rows, target=0, seed=3, similarity=similarity)]
    # B and D (no image of class 0) still come first: B (best 0.8) before D (0.3), one image each
    # per round, most similar first. Then C (best 0.7) before A (best 0.6).
    assert order == [4, 7, 3, 5, 2, 1]
    unchanged = plan_sources(labels, subjects, rows, target=0, seed=3)
    assert sorted(unchanged) == sorted(r + 100 for r in order)
    tied = plan_sources(labels, subjects, rows, target=0, seed=3, similarity=np.zeros(8))
    assert tied == unchanged  # no preference: the seeded shuffle decides, as without similarity


def test_reused_sources_are_mirrored_then_jittered() -> None:
    order = [5, 6, 7]
    uses = [candidate(order, need=4, slot=s, attempt=a) for a in range(3) for s in range(4)]
    assert len(set(uses)) == len(uses)  # no input is ever used twice
    assert [c.variant for c in uses[:4]] == [0, 0, 0, 1]
    assert {c.variant for c in uses} == {0, 1, 2, 3}


# ---------------------------------------------------------------------------- the run


def test_balanced_output_reaches_targets_and_audits_clean(balanced: BalanceResult, demo: Path) -> None:
    working = _working_counts(demo)
    assert balanced.counts_before == working
    largest = max(working.values())
    assert balanced.counts_after == dict.fromkeys(COUNTS, largest)
    report = audit(balanced.manifest)  # reads every image, checks hashes and provenance
    assert report.problems == []
    m = read_manifest(balanced.manifest)
    working_rows = m.df[(m.df["fold"] != 0)]
    assert working_rows.groupby("label_name").size().to_dict() == dict.fromkeys(COUNTS, largest)
    # The excluded fold's real rows are still there, untouched and unbalanced.
    assert (m.df["fold"] == 0).sum() == (read_manifest(demo).df["fold"] == 0).sum()
    assert {p.name for p in balanced.out_dir.iterdir()} == {"manifest.parquet", "images", "README.md", "histogram.png"}
    card = (balanced.out_dir / "README.md").read_text()
    assert "| contempt |" in card and "never saw fold 0" in card


def test_audit_card_and_histogram_count_the_held_out_fold_apart(balanced: BalanceResult, demo: Path) -> None:
    # Fold 0 stays in the manifest for testing; counted with the balanced rows, every class would
    # look above its target and the set still imbalanced.
    largest = max(_working_counts(demo).values())
    held = read_manifest(demo).df.query("fold == 0").groupby("label_name").size().reindex(list(COUNTS), fill_value=0)
    report = audit(balanced.manifest, target=largest, check_images=False)
    assert {c: n.total for c, n in report.classes.items()} == dict.fromkeys(COUNTS, largest)
    assert report.imbalance_ratio == 1.0 and report.balanced_rows == "split train outside fold 0"
    assert [g.value for g in report.held_out] == ["fold 0 (train)"]
    assert {c: n.total for c, n in report.held_out[0].classes.items()} == held.to_dict()
    card = (balanced.out_dir / "README.md").read_text()
    assert "| class | real | target | synthesized | acceptance | shortfall | after | held out: fold 0 (train) |" in card
    assert f"| contempt | {COUNTS['contempt'] - held['contempt']} | {largest} |" in card
    assert card.split("| contempt |")[1].split("\n")[0].endswith(f"| {largest} | {held['contempt']} |")


def test_synthetic_rows_carry_complete_provenance(balanced: BalanceResult, checkpoint: Path) -> None:
    m = read_manifest(balanced.manifest)
    syn = m.df[m.df["origin"] == "synthetic"]
    real = m.df[m.df["origin"] == "real"].set_index("sample_id")
    assert len(syn) == sum(balanced.generated.values()) > 0
    for col in (
        "parent_id",
        "source_label",
        "generator",
        "seed",
        "confidence",
        "subject_id",
        "fold",
        "source_transform",
        "attempt",
    ):
        assert syn[col].notna().all(), col
    parents = real.loc[syn["parent_id"]]
    assert (parents["subject_id"].to_numpy() == syn["subject_id"].to_numpy()).all()
    assert (parents["fold"].to_numpy() == syn["fold"].to_numpy()).all()
    assert (parents["label"].to_numpy() == syn["source_label"].to_numpy()).all()
    assert (syn["label"] != syn["source_label"]).all()
    gen_sha = sha256_bytes(checkpoint.read_bytes())
    assert set(syn["generator"]) == {gen_sha}
    meta = m.meta
    assert meta["balance"]["checkpoint_sha256"] == gen_sha
    assert meta["balance"]["holdout_folds"] == [0] and meta["holdout_folds"] == [0]
    seen = meta["generator_training"][gen_sha]
    assert 0 not in seen["folds"]
    assert meta["provenance"]["tool"] == "balance" and "torch" in meta["provenance"]["versions"]
    for i in np.flatnonzero(m.df["origin"] == "synthetic")[:5]:
        assert sha256_bytes(m.image_bytes(int(i))) == m.df["sha256"].iat[int(i)]
        assert (
            m.df["image"]
            .iat[int(i)]["path"]
            .endswith(f"{m.df['label_name'].iat[int(i)]}/{m.df['sample_id'].iat[int(i)]}.png")
        )


def test_no_source_comes_from_a_held_out_fold(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    result = balance(demo, checkpoint, tmp_path / "b", BalanceConfig(holdout_folds=(0, 2), **OPEN))
    m = read_manifest(result.manifest)
    fold_of = dict(zip(m.df["sample_id"], m.df["fold"]))
    syn = m.df[m.df["origin"] == "synthetic"]
    assert len(syn) and not {fold_of[p] for p in syn["parent_id"]} & {0, 2}
    assert result.counts_before == dict(_count_outside(demo, {0, 2}))


def _count_outside(manifest: Path, folds: set[int]) -> dict[str, int]:
    m = read_manifest(manifest)
    df = m.df[~m.df["fold"].isin(list(folds))]
    return {c: int((df["label"] == k).sum()) for k, c in enumerate(m.classes)}


def test_same_seed_same_output_and_another_seed_differs(
    balanced: BalanceResult, demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    again = balance(demo, checkpoint, tmp_path / "again", BalanceConfig(**OPEN))
    assert _content(again.manifest) == _content(balanced.manifest)
    other = balance(demo, checkpoint, tmp_path / "other", BalanceConfig(seed=1, **OPEN))
    assert _content(other.manifest) != _content(balanced.manifest)


def _content(manifest: Path) -> list[tuple]:
    df = read_manifest(manifest).df
    syn = df[df["origin"] == "synthetic"]
    return sorted(zip(syn["sample_id"], syn["sha256"], syn["parent_id"], syn["confidence"].round(5)))


def test_interrupted_run_resumes_to_the_same_output(
    balanced: BalanceResult, demo: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_run_chunk = balancing.run_chunk
    calls = []

    def crash_on_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if killed between two chunks
        return real_run_chunk(*args, **kwargs)

    config = BalanceConfig(min_confidence=0.0, batch_size=3)
    whole = balance(demo, checkpoint, tmp_path / "whole", config)
    assert _content(whole.manifest) == _content(balanced.manifest)  # chunking changes nothing
    out = tmp_path / "b"
    monkeypatch.setattr(balancing, "run_chunk", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        balance(demo, checkpoint, out, config)
    assert not (out / "manifest.parquet").exists()
    parts = list((out / balancing.WORK_DIR / "parts").iterdir())
    assert len(parts) == 1  # chunk 1 was done but not yet committed; chunk 0 was
    # A kill -9 in the middle of a write leaves a temporary file behind.
    (out / "images" / "anger").mkdir(parents=True, exist_ok=True)
    (out / "images" / "anger" / ".x.png.abc.tmp").write_bytes(b"half")
    (out / ".histogram.png.abc.tmp").write_bytes(b"half")  # or beside the card and histogram
    monkeypatch.setattr(balancing, "run_chunk", real_run_chunk)
    # Another setting is refused: it would mix two runs in one folder.
    with pytest.raises(FesaugError, match="unfinished balance run with other settings"):
        balance(demo, checkpoint, out, BalanceConfig(seed=5, **OPEN))
    resumed = balance(demo, checkpoint, out, config)
    assert resumed.resumed_chunks == 1
    assert _content(resumed.manifest) == _content(balanced.manifest)
    files = sorted(p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file())
    assert files == sorted(
        p.relative_to(balanced.out_dir).as_posix() for p in (balanced.out_dir / "images").rglob("*") if p.is_file()
    )
    assert not list(out.glob(".*.tmp"))
    with pytest.raises(FesaugError, match="already holds a finished balanced dataset; pass --overwrite"):
        balance(demo, checkpoint, out, config)


def test_similar_order_uses_sources_closer_to_the_target_and_says_so(
    balanced: BalanceResult, demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    similar = balance(demo, checkpoint, tmp_path / "b", BalanceConfig(source_order="similar", **OPEN))
    gen = fesaug.load_generator(checkpoint, device="cpu")

    def parent_similarity(manifest: Path) -> float:
        m = read_manifest(manifest)
        df = m.df.reset_index(drop=True)
        syn = df[df["origin"] == "synthetic"]
        position = {sid: i for i, sid in enumerate(df["sample_id"])}
        rows = np.unique([position[p] for p in syn["parent_id"]])
        probs = gen.classify(ManifestDataset(m, rows=rows, image_size=gen.image_size).pixels)
        at = np.searchsorted(rows, [position[p] for p in syn["parent_id"]])
        return float(probs[torch.as_tensor(at), torch.as_tensor(syn["label"].to_numpy())].mean())

    assert similar.generated == balanced.generated
    assert parent_similarity(similar.manifest) > parent_similarity(balanced.manifest)
    assert read_manifest(similar.manifest).meta["balance"]["source_order"] == "similar"
    assert "closest to the target are tried first" in (similar.out_dir / "README.md").read_text()
    with pytest.raises(UsageError, match="unknown --source-order 'nearest'; choose one of subjects, similar"):
        BalanceConfig(source_order="nearest")


def _interrupted_and_rerecorded(
    demo: Path,
    checkpoint: Path,
    out: Path,
    config: BalanceConfig,
    monkeypatch: pytest.MonkeyPatch,
    edit: Callable[[dict], None],
) -> None:
    """A balance run stopped before its first chunk, its plan.json's config then ``edit``ed as an
    older version would have written it (before records carried a schema version)."""
    real_run_chunk = balancing.run_chunk

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(balancing, "run_chunk", crash)
    with pytest.raises(KeyboardInterrupt):
        balance(demo, checkpoint, out, config)
    plan = out / balancing.WORK_DIR / "plan.json"
    recorded = json.loads(plan.read_text())
    assert recorded.pop("schema_version") == 1
    edit(recorded["config"])
    plan.write_text(json.dumps(recorded))
    monkeypatch.setattr(balancing, "run_chunk", real_run_chunk)


def test_a_run_recorded_before_a_setting_existed_still_resumes(
    demo: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = BalanceConfig(min_confidence=0.0, batch_size=8)
    out = tmp_path / "b"
    real_run_chunk = balancing.run_chunk

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    # As written by a version without the setting.
    _interrupted_and_rerecorded(demo, checkpoint, out, config, monkeypatch, lambda c: c.pop("source_order"))
    assert (out / "manifest.parquet") == balance(demo, checkpoint, out, config).manifest
    with pytest.raises(FesaugError, match="unfinished balance run with other settings"):
        crashed = tmp_path / "c"
        monkeypatch.setattr(balancing, "run_chunk", crash)
        with pytest.raises(KeyboardInterrupt):
            balance(demo, checkpoint, crashed, config)
        monkeypatch.setattr(balancing, "run_chunk", real_run_chunk)
        balance(demo, checkpoint, crashed, BalanceConfig(source_order="similar", min_confidence=0.0, batch_size=8))


def test_a_run_recorded_with_the_old_name_of_the_held_out_folds_still_resumes(
    demo: Path, checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before one name, BalanceConfig and so plan.json called holdout_folds "exclude_folds".
    config = BalanceConfig(min_confidence=0.0, batch_size=8, holdout_folds=(0,))
    out = tmp_path / "b"
    _interrupted_and_rerecorded(
        demo, checkpoint, out, config, monkeypatch, lambda c: c.__setitem__("exclude_folds", c.pop("holdout_folds"))
    )
    # Another fold under the old name is still other settings.
    with pytest.raises(FesaugError, match="unfinished balance run with other settings"):
        balance(demo, checkpoint, out, BalanceConfig(min_confidence=0.0, batch_size=8, holdout_folds=(1,)))
    result = balance(demo, checkpoint, out, config)
    assert result.manifest == out / "manifest.parquet"
    assert read_manifest(result.manifest).meta["balance"]["holdout_folds"] == [0]


def test_a_held_out_fold_must_be_a_fold_number() -> None:
    with pytest.raises(UsageError, match=r"--holdout-fold must be a fold number \(0 or more\), got -1"):
        BalanceConfig(holdout_folds=(-1,))
    assert dataclasses.replace(BalanceConfig(holdout_folds=(0, 2)), seed=3).holdout_folds == (0, 2)


def test_the_holdout_flag_reaches_the_config(
    capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen = []

    def record(manifest, checkpoint, out, config, **kwargs):
        seen.append(config.holdout_folds)
        raise FesaugError("stop")

    monkeypatch.setattr(balancing, "balance", record)
    code, out, _ = cli_in_process(capsys, "balance", "--help")
    assert code == 0 and "--holdout-fold" in out
    for flags, folds in (
        (["--holdout-fold", "1"], (1,)),
        (["--holdout-fold", "1", "--holdout-fold", "2"], (1, 2)),
        ([], None),
    ):
        code, _, err = cli_in_process(
            capsys,
            "balance",
            "--manifest",
            tmp_path / "m.parquet",
            "--checkpoint",
            tmp_path / "c.pt",
            "--out",
            tmp_path / "o",
            *flags,
        )
        assert code == 1 and "stop" in err, err
        assert seen.pop() == folds


def test_two_processes_give_the_same_manifest_as_one(
    balanced: BalanceResult, demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fesaug",
        "balance",
        "--manifest",
        str(demo),
        "--checkpoint",
        str(checkpoint),
        "--out",
        str(out),
        "--min-confidence",
        "0",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert _content(out / "manifest.parquet") == _content(balanced.manifest)


def test_the_gate_rejects_and_reports_the_shortfall(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    result = balance(demo, checkpoint, tmp_path / "b", BalanceConfig(min_confidence=1.0, max_attempts=2, batch_size=8))
    assert sum(result.generated.values()) == 0
    assert result.shortfall == result.to_generate
    assert result.attempts == {c: 2 * n for c, n in result.to_generate.items()}
    meta = read_manifest(result.manifest).meta["balance"]
    assert meta["shortfall"] == result.to_generate and meta["acceptance"]["contempt"] == 0
    proc = run_cli(
        "balance",
        "--manifest",
        demo,
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "c",
        "--min-confidence",
        "1",
        "--max-attempts",
        "1",
        "--strict",
    )
    assert proc.returncode == 1
    assert "Warning: 'contempt' is" in proc.stderr and "short of its target" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ") and "Traceback" not in proc.stderr


def test_partial_gate_keeps_only_confident_images(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    threshold = 0.2
    result = balance(
        demo, checkpoint, tmp_path / "b", BalanceConfig(min_confidence=threshold, max_attempts=3, batch_size=8)
    )
    df = read_manifest(result.manifest).df
    syn = df[df["origin"] == "synthetic"]
    assert (syn["confidence"] >= threshold).all()
    assert sum(result.generated.values()) + sum(result.shortfall.values()) == sum(result.to_generate.values())


def test_undersample_and_explicit_targets(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    config = BalanceConfig(target_per_class=5, undersample=True, targets={"contempt": 2}, **OPEN)
    result = balance(demo, checkpoint, tmp_path / "b", config)
    expected = dict.fromkeys(COUNTS, 5) | {"contempt": 2}
    assert result.counts_after == expected
    m = read_manifest(result.manifest)
    assert m.meta["balance"]["removed"]["surprise"] == result.counts_before["surprise"] - 5


def test_output_is_a_torch_dataset_and_embeds_on_request(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    result = balance(demo, checkpoint, tmp_path / "b", BalanceConfig(embed_images=True, **OPEN))
    m = read_manifest(result.manifest)
    assert m.df["image"].map(lambda im: im["bytes"] is not None).all()
    data = ManifestDataset(result.manifest, origins=("synthetic",))
    image, label = data[0]
    assert image.shape == (1, 32, 32) and 0 <= label < len(COUNTS)
    assert len(data) == sum(result.generated.values())
    # The README's one-liner: the class is importable from fesaug.data.
    assert fesaug.data.ManifestDataset(result.out_dir / "manifest.parquet", image_size=48)[0][0].shape == (1, 48, 48)


# ---------------------------------------------------------------------------- errors


def test_bad_inputs_give_one_error_line(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    other = read_manifest(demo)
    renamed = write_manifest(
        other.df.assign(label_name=other.df["label_name"].str.upper()),
        tmp_path / "other.parquet",
        classes=[c.upper() for c in other.classes],
        image_root=str(demo.parent),
    )
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"PAR1 nope")
    out = tmp_path / "out"
    cases = [
        (["--manifest", demo, "--checkpoint", junk], "junk.pt", 1),
        (["--manifest", renamed, "--checkpoint", checkpoint], "was trained on classes anger", 1),
        (["--manifest", broken, "--checkpoint", checkpoint], "not a readable Parquet file", 1),
        (["--manifest", demo, "--checkpoint", checkpoint, "--target-per-class", "2"], "--undersample", 2),
        (["--manifest", demo, "--checkpoint", checkpoint, "--target", "joy=3"], "class 'joy'", 2),
        (["--manifest", demo, "--checkpoint", checkpoint, "--split", "test"], "--split 'test' is not in", 2),
    ]
    for args, message, code in cases:
        proc = run_cli("balance", *args, "--out", out)
        assert proc.returncode == code, (args, proc.stderr)
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], (args, proc.stderr)
    assert not out.exists()  # nothing half-written
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("user data")
    proc = run_cli("balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", tmp_path / "mine", "--overwrite")
    assert proc.returncode == 1 and "did not write (notes.txt)" in proc.stderr
    assert (tmp_path / "mine" / "notes.txt").read_text() == "user data"


def test_balancing_synthetic_rows_again_is_refused(balanced: BalanceResult, checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(FesaugError, match="already has .* synthetic row"):
        balance(balanced.manifest, checkpoint, tmp_path / "b", BalanceConfig(**OPEN))


def test_cli_prints_the_summary(demo: Path, checkpoint: Path, tmp_path: Path) -> None:
    proc = run_cli(
        "balance",
        "--manifest",
        demo,
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "b",
        "--min-confidence",
        "0",
        "--sampling-strategy",
        "minority",
    )
    assert proc.returncode == 0, proc.stderr
    assert "synthesized" in proc.stdout and "accepted" in proc.stdout
    assert "%|" not in proc.stderr  # stderr is no terminal here: no progress-bar frames in a log
    meta = read_manifest(tmp_path / "b" / "manifest.parquet").meta["balance"]
    minority = min(meta["counts_before"], key=meta["counts_before"].get)
    assert {c: n for c, n in meta["to_generate"].items() if n} == {
        minority: max(meta["counts_before"].values()) - meta["counts_before"][minority]
    }


# ---------------------------------------------------------------------------- AU check (#6)


@pytest.fixture(scope="module")
def au_checkpoint(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fesaug.multitask import MultiTaskConfig, train_multitask

    config = MultiTaskConfig(model={"image_size": 32, "widths": (8, 16, 16)}, epochs=1, batch_size=8, holdout_fold=0)
    return train_multitask(demo, tmp_path_factory.mktemp("au") / "run", config).best_checkpoint


def test_au_check_scores_keeps_and_rejects(demo: Path, checkpoint: Path, au_checkpoint: Path, tmp_path: Path) -> None:
    open_gate = balance(
        demo,
        checkpoint,
        tmp_path / "open",
        BalanceConfig(au_checkpoint=str(au_checkpoint), min_au_consistency=0.0, **OPEN),
    )
    m = read_manifest(open_gate.manifest)
    syn = m.df[m.df["origin"] == "synthetic"]
    assert len(syn) == sum(open_gate.to_generate.values())  # consistency 0 rejects nothing
    assert syn["au_consistency"].between(0, 1).all()
    assert m.meta["balance"]["au_check"]["checkpoint_sha256"] == sha256_bytes(au_checkpoint.read_bytes())
    assert "AU check" in (open_gate.out_dir / "README.md").read_text()
    _assert_threshold_splits(
        demo, checkpoint, tmp_path, syn, "au_consistency", "min_au_consistency", au_checkpoint=str(au_checkpoint)
    )


def _assert_threshold_splits(
    demo: Path, checkpoint: Path, tmp_path: Path, syn, column: str, option: str, **gate
) -> None:
    """A threshold between the scores an open gate gave splits kept from rejected images."""
    threshold = float(syn[column].median())
    strict = balance(
        demo, checkpoint, tmp_path / "strict", BalanceConfig(**gate, **{option: threshold}, max_attempts=1, **OPEN)
    )
    kept = read_manifest(strict.manifest).df.query("origin == 'synthetic'")
    assert (kept[column] >= threshold).all()
    assert 0 < len(kept) < len(syn) and sum(strict.shortfall.values()) == len(syn) - len(kept)


# ---------------------------------------------------------------------------- independent judge


@pytest.fixture(scope="module")
def judge(small_judge: Path) -> Path:
    return small_judge


def test_judge_scores_every_kept_image_and_rejects_below_its_threshold(
    demo: Path, checkpoint: Path, judge: Path, tmp_path: Path
) -> None:
    from fesaug.evaluate.downstream import load_classifier, predict_proba

    open_gate = balance(
        demo,
        checkpoint,
        tmp_path / "open",
        BalanceConfig(judge_checkpoint=str(judge), min_judge_confidence=0.0, **OPEN),
    )
    m = read_manifest(open_gate.manifest)
    rows = np.flatnonzero((m.df["origin"] == "synthetic").to_numpy())
    syn = m.df.iloc[rows]
    assert len(syn) == sum(open_gate.to_generate.values())
    # The stored score is the judge's probability of the target on the image as written.
    model, _ = load_classifier(judge, device="cpu")
    probs = predict_proba(model, ManifestDataset(m, rows=rows).pixels)
    np.testing.assert_allclose(syn["judge_confidence"], probs[np.arange(len(rows)), syn["label"]], atol=1e-4)
    assert m.meta["balance"]["judge_check"]["checkpoint_sha256"] == sha256_bytes(judge.read_bytes())
    assert "Independent judge" in (open_gate.out_dir / "README.md").read_text()
    _assert_threshold_splits(
        demo, checkpoint, tmp_path, syn, "judge_confidence", "min_judge_confidence", judge_checkpoint=str(judge)
    )


def test_judge_of_other_classes_or_not_a_classifier_is_one_error(
    demo: Path, checkpoint: Path, judge: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from fesaug.evaluate.downstream import load_classifier, save_classifier

    model, classes = load_classifier(judge, device="cpu")
    other = tmp_path / "other.pt"
    save_classifier(model, other, [f"x{i}" for i in range(len(classes))])
    with pytest.raises(FesaugError, match="knows classes x0"):
        balance(demo, checkpoint, tmp_path / "b", BalanceConfig(judge_checkpoint=str(other), **OPEN))
    code, _, err = cli_in_process(
        capsys,
        "balance",
        "--manifest",
        demo,
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "c",
        "--judge",
        checkpoint,
        "--device",
        "cpu",
    )
    assert code == 1 and err.startswith("Error:") and "not a fesaug downstream classifier" in err
    assert len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- judges trained elsewhere (#16)


def test_identity_gate_records_distances_and_rejects_faces_too_far_from_their_source(
    demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from fesaug.judges import load_judge

    open_gate = balance(demo, checkpoint, tmp_path / "open", BalanceConfig(max_identity_distance=10.0, **OPEN))
    m = read_manifest(open_gate.manifest)
    rows = np.flatnonzero((m.df["origin"] == "synthetic").to_numpy())
    syn = m.df.iloc[rows]
    assert len(syn) == sum(open_gate.to_generate.values()) and syn["identity_distance"].notna().all()
    # The stored distance is the judge's, between the image as written and its (unjittered) parent.
    judge = load_judge("identity")
    positions = {sid: i for i, sid in enumerate(m.df["sample_id"])}
    parent_rows = np.array([positions[p] for p in syn["parent_id"]])
    real = ManifestDataset(m, rows=np.unique(parent_rows))
    parents = real.pixels[np.searchsorted(real.rows, parent_rows)]
    first = (syn["source_transform"] == "none").to_numpy()
    mask = torch.from_numpy(first.copy())
    recomputed = judge.score(ManifestDataset(m, rows=rows).pixels[mask], [""] * int(first.sum()), parents[mask])
    np.testing.assert_allclose(syn["identity_distance"].to_numpy()[first], recomputed, atol=0.05)
    assert m.meta["balance"]["identity_check"]["max_identity_distance"] == 10.0
    assert "- Identity: also kept only when" in (open_gate.out_dir / "README.md").read_text()

    threshold = float(syn["identity_distance"].median())
    strict = balance(
        demo, checkpoint, tmp_path / "strict", BalanceConfig(max_identity_distance=threshold, max_attempts=1, **OPEN)
    )
    kept = read_manifest(strict.manifest).df.query("origin == 'synthetic'")
    assert (kept["identity_distance"] <= threshold).all()
    assert 0 < len(kept) < len(syn) and sum(strict.shortfall.values()) == len(syn) - len(kept)
    rates = strict.gate_pass_rates["identity"]
    assert sum(strict.gate_passed["identity"].values()) == len(kept)  # one attempt: passing it is being kept
    assert all(r is None or 0 <= r <= 1 for r in rates.values())
    assert read_manifest(strict.manifest).meta["balance"]["gate_pass_rates"]["identity"] == pytest.approx(rates)


def test_external_judge_gate_passes_contempt_untouched_and_rejects_the_rest(
    demo: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code, out, err = cli_in_process(
        capsys,
        "balance",
        "--manifest",
        demo,
        "--checkpoint",
        checkpoint,
        "--out",
        tmp_path / "b",
        "--min-confidence",
        "0",
        "--external-judge",
        "fer2013",
        "--min-external-confidence",
        "1",
        "--max-attempts",
        "2",
        "--batch-size",
        "8",
        "--device",
        "cpu",
    )
    assert code == 0, err
    result = balancing.summary_from(tmp_path / "b")
    m = read_manifest(result.manifest)
    syn = m.df[m.df["origin"] == "synthetic"]
    # Nothing reaches probability 1, so only contempt, which FER2013 has no class for, is kept.
    assert set(syn["label_name"]) == {"contempt"} and syn["external_confidence"].isna().all()
    assert result.shortfall["contempt"] == 0 and result.gate_pass_rates["external"]["contempt"] == 1.0
    assert all(result.generated[c] == 0 for c in result.to_generate if c != "contempt")
    assert m.meta["balance"]["external_check"] == {
        "judge": "fer2013",
        "min_external_confidence": 1.0,
        "not_judged": ["contempt"],
    }
    assert "share of candidates each gate passed" in out and "external judge" in out
    assert "| class | FER branch | external judge |" in (tmp_path / "b" / "README.md").read_text()

    scored = balance(
        demo,
        checkpoint,
        tmp_path / "open",
        BalanceConfig(external_judge="fer2013", min_external_confidence=0.0, **OPEN),
    )
    syn = read_manifest(scored.manifest).df.query("origin == 'synthetic'")
    judged = syn[syn["label_name"] != "contempt"]
    assert judged["external_confidence"].between(0, 1).all() and len(judged) > 0


def test_judge_gates_bad_values_and_missing_extra_are_one_error_line(
    demo: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = ["balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", tmp_path / "b", "--device", "cpu"]
    for bad in (["--max-identity-distance", "0"], ["--external-judge", "clip"], ["--min-external-confidence", "2"]):
        code, _, err = cli_in_process(capsys, *base, *bad)
        assert code == 2 and err.startswith("Error:") and len(err.strip().splitlines()) == 1, bad
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dlib" else real(name, *a))
    code, _, err = cli_in_process(capsys, *base, "--max-identity-distance", "0.5")
    assert code == 1 and "pip install 'fesaug[judges]'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "b").exists()


def test_intensity_range_is_drawn_per_image_recorded_and_zero_copies_the_source(
    demo: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ranged = balance(demo, checkpoint, tmp_path / "ranged", BalanceConfig(intensity=(0.4, 0.9), **OPEN))
    m = read_manifest(ranged.manifest)
    syn = m.df[m.df["origin"] == "synthetic"]
    assert syn["intensity"].between(0.4, 0.9).all() and syn["intensity"].nunique() > len(syn) // 2
    assert (
        m.meta["balance"]["intensity"] == [0.4, 0.9]
        and "intensity drawn uniformly from 0.4..0.9" in (tmp_path / "ranged" / "README.md").read_text()
    )
    again = balance(demo, checkpoint, tmp_path / "again", BalanceConfig(intensity=(0.4, 0.9), **OPEN))
    assert (
        read_manifest(again.manifest).df.query("origin == 'synthetic'")["intensity"].tolist()
        == syn["intensity"].tolist()
    )

    # Intensity 0 leaves every face as it was given to the generator (the first round: unjittered).
    none = balance(demo, checkpoint, tmp_path / "none", BalanceConfig(intensity=(0.0, 0.0), **OPEN))
    nm = read_manifest(none.manifest)
    rows = np.flatnonzero(((nm.df["origin"] == "synthetic") & (nm.df["source_transform"] == "none")).to_numpy())
    positions = {sid: i for i, sid in enumerate(nm.df["sample_id"])}
    parents = [positions[p] for p in nm.df["parent_id"].iloc[rows]]
    assert torch.equal(
        ManifestDataset(nm, rows=rows).pixels,
        torch.stack([ManifestDataset(nm, rows=np.array([p])).pixels[0] for p in parents]),
    )

    for bad in ("0.9..0.4", "2.5", "-0.1..1", "low..high"):
        code, _, err = cli_in_process(
            capsys,
            "balance",
            "--manifest",
            demo,
            "--checkpoint",
            checkpoint,
            "--out",
            tmp_path / "bad",
            "--intensity",
            bad,
        )
        assert code == 2 and err.startswith("Error:") and "--intensity" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------------------- synthetic share and weight (#17, lever 4)


def test_synthetic_share_makes_part_of_each_shortfall_and_weights_the_real_rows_up_to_the_target(
    demo: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    config = BalanceConfig(synthetic_share=0.5, synthetic_weight=0.8, **OPEN)
    result = balance(demo, checkpoint, tmp_path / "half", config)
    largest = max(result.counts_before.values())
    full = {c: largest - n for c, n in result.counts_before.items()}
    assert result.generated == {c: round(n / 2) for c, n in full.items()}
    m = read_manifest(result.manifest)
    working = (m.df["fold"] != 0).to_numpy()
    weights = m.df["weight"].to_numpy()
    synthetic = (m.df["origin"] == "synthetic").to_numpy()
    assert np.all(weights[synthetic] == 0.8) and np.all(weights[~working] == 1.0)
    for k in range(len(m.classes)):
        mine = working & (m.df["label"] == k).to_numpy()
        # The weights of every balanced class reach the target; its real rows share what synthesis left.
        assert weights[mine].sum() == pytest.approx(largest)
        assert len(set(weights[mine & ~synthetic].round(9))) == 1 and weights[mine & ~synthetic].min() >= 1
    assert result.weighted == pytest.approx(dict.fromkeys(m.classes, largest))
    # Audit balances by weight: no shortfall, ratio 1, and the weighted column in the JSON.
    report = audit(m, target=largest, check_images=False)
    assert report.problems == [] and report.imbalance_ratio == pytest.approx(1.0)
    assert sum(report.shortfall.values()) == 0 and report.to_dict()["classes"]["anger"]["weighted"] == pytest.approx(
        largest
    )
    # A dataset reads the weights; a sampler drawing by them sees the classes balanced.
    data = ManifestDataset(m, rows=np.flatnonzero(working))
    per_class = np.bincount(data.labels, weights=data.weights.numpy(), minlength=len(m.classes))
    assert per_class == pytest.approx([largest] * len(m.classes))
    card = (result.out_dir / "README.md").read_text()
    assert "WeightedRandomSampler(train.weights" in card and "| weighted |" in card
    # The defaults write no weight column: a plain balanced set is unchanged.
    assert (
        "weight" not in read_manifest(balance(demo, checkpoint, tmp_path / "plain", BalanceConfig(**OPEN)).manifest).df
    )

    for option, bad in (("--synthetic-share", "0"), ("--synthetic-share", "1.5"), ("--synthetic-weight", "0")):
        code, _, err = cli_in_process(
            capsys, "balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", tmp_path / "bad", option, bad
        )
        assert code == 2 and err.startswith("Error:") and option in err and len(err.strip().splitlines()) == 1
    with pytest.raises(UsageError, match="--synthetic-share"):
        BalanceConfig(synthetic_share=0)


def test_weighted_balance_exports_its_weights_and_refuses_bad_ones(
    demo: Path, checkpoint: Path, tmp_path: Path
) -> None:
    from fesaug.data.export import export

    result = balance(demo, checkpoint, tmp_path / "half", BalanceConfig(synthetic_share=0.5, **OPEN))
    export(result.manifest, tmp_path / "tree")
    lines = (tmp_path / "tree" / "weights.csv").read_text().splitlines()
    assert lines[0] == "path,weight" and len(lines) == 1 + len(read_manifest(result.manifest).df)
    path, weight = lines[1].rsplit(",", 1)
    assert (tmp_path / "tree" / path).is_file() and float(weight) >= 1
    m = read_manifest(result.manifest)
    with pytest.raises(FesaugError, match="weight -1"):
        read_manifest(
            write_manifest(
                m.df.assign(weight=-1.0), tmp_path / "bad.parquet", classes=m.classes, image_root=str(m.image_root)
            )
        )
