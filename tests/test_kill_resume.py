"""kill -9 at any moment, then the same command again: every long-running command finishes with
the result of an uninterrupted run, and an interrupted one leaves nothing a re-run or `fesaug
audit` would take for a whole output.

Each test kills a real `fesaug` process (SIGKILL, sent by the process itself at a named point,
see fesaug.utils.killpoints) several times in a row, at points drawn from a seeded generator, and
compares the finished output with a run that was never interrupted. Tiny data and models: these
check the bookkeeping, not the learning. (Balance's own chunk-by-chunk resumption: test_balance.)
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fesaug.data.demo import DEFAULT_COUNTS, make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.synthesis.checkpoint import load_checkpoint

from .conftest import TINY, cli_in_process, kill_at

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _leftovers(folder: Path) -> list[str]:
    """Temporary files and folders of interrupted writes, anywhere below ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if p.name.endswith((".tmp", ".old")))


def test_train_resume_after_kill_9_gives_the_weights_of_an_uninterrupted_run(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    demo = make_demo_dataset(tmp_path / "demo", counts=dict.fromkeys(DEFAULT_COUNTS, 8), n_subjects=8, size=32, folds=4)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "epochs": 2, "lr_milestones": [0.5]}))

    def train(out: Path, *more: str) -> list[object]:
        return ["train", "--manifest", demo, "--out", out, "--config", config, "--device", "cpu", *more]

    code, _, err = cli_in_process(capsys, *train(tmp_path / "straight"))
    assert code == 0, err
    straight = load_checkpoint(tmp_path / "straight/checkpoints/last.pt")
    steps = straight["metrics"]["step"] // 2  # per epoch
    rng = random.Random(20)
    out = tmp_path / "run"
    kill_at(f"train-step#{rng.randint(1, steps)}", *train(out))  # mid-epoch 1: nothing saved yet
    assert not (out / "checkpoints" / "last.pt").exists()
    # Resubmitted with --resume, as a job script would be: it has to start over, then continue.
    kill_at("write:last.pt#2", *train(out, "--resume"))  # while writing epoch 2's checkpoint
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1  # the previous one, whole
    assert load_checkpoint(out / "checkpoints" / "best.pt")["epoch"] in (1, 2)
    code, _, err = cli_in_process(capsys, *train(out, "--resume"))  # epoch 2 again, from epoch 1's state
    assert code == 0, err

    resumed = load_checkpoint(out / "checkpoints" / "last.pt")
    for part in ("model", "discriminator"):
        assert straight[part].keys() == resumed[part].keys()
        assert all(torch.equal(straight[part][k], resumed[part][k]) for k in straight[part]), part
    assert straight["step"] == resumed["step"] and straight["metrics"]["loss_fer"] == resumed["metrics"]["loss_fer"]
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert _leftovers(out) == []  # the killed checkpoint write's temporary file is gone


def test_evaluate_killed_anywhere_resumes_to_the_same_results(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    counts = {"anger": 8, "contempt": 4, "disgust": 6, "fear": 4, "happy": 10, "sadness": 5, "surprise": 12}
    demo = make_demo_dataset(tmp_path / "demo", counts=counts, n_subjects=9, size=32, folds=3)
    generator = tmp_path / "tiny.yaml"
    generator.write_text(yaml.safe_dump(TINY))

    def evaluate(out: Path) -> list[object]:
        return [
            "evaluate",
            "--manifest",
            demo,
            "--out",
            out,
            "--folds",
            "0",
            "--conditions",
            "real,oversample,fes",
            "--no-synthesis",
            "--epochs",
            "2",
            "--image-size",
            "32",
            "--generator-config",
            generator,
            "--generator-epochs",
            "2",
            "--min-confidence",
            "0",
            "--device",
            "cpu",
        ]

    code, _, err = cli_in_process(capsys, *evaluate(tmp_path / "straight"))
    assert code == 0, err
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())

    # The fold runs real, then fes (FERSNet, balance, its classifier), then oversample.
    out = tmp_path / "eval"
    fold = out / "fold-0"
    kill_at(f"downstream-epoch#{random.Random(7).randint(1, 2)}", *evaluate(out))  # inside real's fit
    # While saving FERSNet's last epoch: metrics.jsonl already lists it, last.pt is still epoch 1.
    kill_at("write:last.pt#2", *evaluate(out))
    assert load_checkpoint(fold / "fersnet" / "checkpoints" / "last.pt")["epoch"] == 1
    kill_at("write:histogram.png", *evaluate(out))  # inside balance, as it finishes
    kill_at("write:results.json", *evaluate(out))
    assert not (out / "results.json").exists()
    code, _, err = cli_in_process(capsys, *evaluate(out))
    assert code == 0, err

    results = json.loads((out / "results.json").read_text())
    for key in ("conditions", "comparisons", "per_fold"):
        assert results[key] == straight[key], key
    assert (
        read_manifest(fold / "balanced" / "manifest.parquet").df["sha256"].tolist()
        == read_manifest(tmp_path / "straight" / "fold-0" / "balanced" / "manifest.parquet").df["sha256"].tolist()
    )
    assert _leftovers(out) == []


def _fer_csv(path: Path, rows: int) -> Path:
    rng = np.random.default_rng(0)
    lines = [f"{i % 7},{' '.join(map(str, rng.integers(0, 256, 16)))},Training" for i in range(rows)]
    path.write_text("\n".join(["emotion,pixels,Usage", *lines]) + "\n")
    return path


def _rows(manifest: Path) -> list[tuple]:
    df = read_manifest(manifest).df
    return list(zip(df["sample_id"], df["label_name"], df["sha256"], [Path(i["path"]).name for i in df["image"]]))


def test_ingest_killed_midway_leaves_nothing_taken_for_whole(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    csv = _fer_csv(tmp_path / "fer.csv", 20)
    code, _, err = cli_in_process(
        capsys, "ingest", csv, "--format", "fer2013-csv", "--out", tmp_path / "ref" / "m.parquet"
    )
    assert code == 0, err
    out = tmp_path / "out" / "m.parquet"
    ingest = ["ingest", csv, "--format", "fer2013-csv", "--out", out]

    kill_at(f"write:*.png#{random.Random(3).randint(1, 20)}", *ingest)  # writing the images
    assert not out.exists() and not (out.parent / "m-images").exists()
    kill_at("write:m.parquet", *ingest)  # the images are in place, their manifest is not
    assert not out.exists()
    code, _, err = cli_in_process(capsys, "audit", out)
    assert code == 1 and "does not exist" in err
    code, _, err = cli_in_process(capsys, *ingest)  # a folder without its manifest is not taken as one
    assert code == 1 and "m-images already exists without its manifest" in err and "--overwrite" in err
    code, _, err = cli_in_process(capsys, *ingest, "--overwrite")
    assert code == 0, err
    assert _rows(out) == _rows(tmp_path / "ref" / "m.parquet")
    assert sorted(p.name for p in out.parent.iterdir()) == ["m-images", "m.parquet"]  # nothing half-written left


def test_export_killed_midway_leaves_the_previous_tree_or_none(
    small_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    def tree(folder: Path) -> dict[str, bytes]:
        return {
            str(p.relative_to(folder)): p.read_bytes()
            for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "export.json"
        }  # export.json records the time

    out = tmp_path / "exported" / "x"
    export = ["export", small_manifest, "--out", out]
    kill_at(f"write:*.png#{random.Random(5).randint(1, 4)}", *export)
    assert not out.exists()
    kill_at("write:export.json", *export)
    assert not out.exists()
    code, _, err = cli_in_process(capsys, *export)
    assert code == 0, err
    whole = tree(out)
    assert len([name for name in whole if name.endswith(".png")]) == 4

    kill_at("write:*.png#2", *export, "--overwrite")  # replacing it: the previous tree stays whole
    assert tree(out) == whole
    code, _, err = cli_in_process(capsys, *export, "--overwrite")
    assert code == 0, err
    assert tree(out) == whole and sorted(p.name for p in out.parent.iterdir()) == ["x"]
