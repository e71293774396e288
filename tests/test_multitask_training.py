"""Training EmotionAUNet (emotion + AU, issue #6): the run folder, held-out folds, the label split,
the CLI routing of --tasks and the inference API. Tiny demo data at 32x32, one CPU thread."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fesaug.data.demo import DEFAULT_COUNTS, make_demo_dataset
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.multitask.config import MultiTaskConfig, MultiTaskResult
from fesaug.multitask.data import label_split
from fesaug.multitask.training import FORMAT, load_emotion_au, train_multitask
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process as cli

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"image_size": 32, "widths": (8, 16, 16)}


def tiny(**changes: object) -> MultiTaskConfig:
    return MultiTaskConfig(**{"model": TINY, "epochs": 2, "batch_size": 8, "holdout_fold": 0, **changes})


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """56 images of 8 subjects in 4 folds, 32x32, every row with AU labels."""
    out = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(out, counts=dict.fromkeys(DEFAULT_COUNTS, 8), n_subjects=8, size=32, folds=4)


@pytest.fixture(scope="module")
def run(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> MultiTaskResult:
    """A finished 2-epoch run holding out fold 0, with the 50/50 label split."""
    config = tiny(emotion_fraction=0.5, au_fraction=0.5)
    return train_multitask(demo, tmp_path_factory.mktemp("run") / "run", config)


def test_run_folder_metrics_and_checkpoints(run: MultiTaskResult, demo: Path) -> None:
    folder = run.run_dir
    for name in ("config.json", "provenance.json", "metrics.jsonl", "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (folder / name).is_file(), name
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert lines == run.metrics and [m["epoch"] for m in lines] == [1, 2]
    for key in (
        "loss_emotion",
        "loss_au",
        "loss_total",
        "val_emotion_acc",
        "val_emotion_macro_f1",
        "val_au_mean_f1",
        "seconds",
    ):
        assert lines[0][key] is not None, key
    assert lines[run.best_epoch - 1]["best"]
    ckpt = torch.load(run.last_checkpoint, weights_only=True)
    m = read_manifest(demo)
    assert ckpt["format"] == FORMAT and ckpt["epoch"] == 2 and ckpt["classes"] == m.classes
    assert ckpt["au_ids"] == m.meta["au_ids"] and ckpt["model_config"]["sharing"] == "aws"
    assert ckpt["config"]["emotion_fraction"] == 0.5 and ckpt["model_config"]["widths"] == [8, 16, 16]
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == run.best_epoch


def test_heldout_fold_is_never_trained_or_validated_on(run: MultiTaskResult, demo: Path) -> None:
    df = read_manifest(demo).df
    fold0 = set(df.loc[df["fold"] == 0, "subject_id"])
    split = torch.load(run.last_checkpoint, weights_only=True)["split"]
    assert set(split["heldout_subjects"]) == fold0 and split["holdout_folds"] == [0]
    seen = set(split["train_subjects"]) | set(split["val_subjects"])
    assert not fold0 & seen and set(split["emotion_subjects"]) | set(split["au_subjects"]) <= set(
        split["train_subjects"]
    )
    assert not fold0 & set(df["subject_id"].iloc[run.split.train_rows])


def test_label_split_gives_each_subject_one_kind_of_label() -> None:
    subjects = [f"S{i:02d}" for i in range(11)]
    emo, au = label_split(subjects, 0.5, 0.5, seed=3)
    assert not emo & au and emo | au == set(subjects) and len(emo) == 6 and len(au) == 5
    assert label_split(subjects, 0.5, 0.5, seed=3) == (emo, au)  # deterministic
    assert label_split(subjects, 0.5, 0.5, seed=4) != (emo, au)
    assert label_split(subjects, None, None, seed=0) == (set(subjects), set(subjects))
    emo, au = label_split(subjects, 0.3, 0.7, seed=0)
    assert not emo & au and emo | au == set(subjects)
    with pytest.raises(FesaugError, match="without any labelled subject"):
        label_split(subjects[:1], 0.5, 0.5, seed=0)


def test_run_hides_labels_by_subject(run: MultiTaskResult) -> None:
    split = torch.load(run.last_checkpoint, weights_only=True)["split"]
    emo, au = set(split["emotion_subjects"]), set(split["au_subjects"])
    assert emo and au and not emo & au and emo | au == set(split["train_subjects"])


def test_manifest_without_au_labels_is_one_error_line(
    demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    m = read_manifest(demo)
    df = m.df.drop(columns=["au_occurrence", "au_intensity"])
    df["image"] = [{"bytes": m.image_bytes(i), "path": None} for i in range(len(df))]
    meta = {k: v for k, v in m.meta.items() if not k.startswith("au_") and k not in ("classes", "schema_version")}
    plain = write_manifest(df, tmp_path / "plain.parquet", classes=m.classes, meta=meta)
    code, _, err = cli(capsys, "train", "--manifest", plain, "--out", tmp_path / "run", "--tasks", "emotion,au")
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("Error: ") and "has no AU labels" in lines[0]
    assert "--au-labels" in lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (("--tasks", "emotion,au,synthesis"), "not supported yet"),
        (("--tasks", "au,emotion", "--preset", "cpu"), "--preset only apply to FERSNet"),
        (("--tasks", "au,emotion", "--resume"), "--resume only apply to FERSNet"),
        (("--tasks", "emotion,pose"), "unknown task"),
        (("--tasks", "au"), "not a supported combination"),
    ],
)
def test_cli_usage_errors(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple, message: str) -> None:
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", tmp_path / "run", *args)
    assert code == 2 and message in err and not (tmp_path / "run").exists()


def test_cli_trains_emotion_au(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, out, err = cli(
        capsys,
        "train",
        "--manifest",
        demo,
        "--out",
        tmp_path / "run",
        "--tasks",
        "au,emotion",
        "--sharing",
        "hard",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--holdout-fold",
        "0",
        "--device",
        "cpu",
    )
    # The CLI keeps the default 64x64 model; the 32x32 demo images are resized.
    assert code == 0, err
    assert "best epoch 1" in out and "AU mean F1" in out and "epoch 1/1" in err
    assert torch.load(tmp_path / "run/checkpoints/best.pt", weights_only=True)["model_config"]["sharing"] == "hard"
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", tmp_path / "run", "--tasks", "emotion,au")
    assert code == 1 and "--overwrite" in err


def test_load_emotion_au_predicts_probabilities(run: MultiTaskResult, demo: Path) -> None:
    model = load_emotion_au(run.best_checkpoint, device="cpu")
    m = read_manifest(demo)
    assert model.classes == m.classes and model.au_ids == m.meta["au_ids"] and model.image_size == 32
    images = torch.from_numpy(np.stack([np.asarray(m.open_image(i)) for i in range(5)]))[:, None]
    emotion, aus = model.predict(images)
    assert emotion.shape == (5, len(m.classes)) and aus.shape == (5, len(model.au_ids))
    assert torch.allclose(emotion.sum(1), torch.ones(5), atol=1e-5) and ((aus >= 0) & (aus <= 1)).all()
    float_emotion, _ = model.predict(images.float() / 255)
    assert torch.allclose(float_emotion, emotion, atol=1e-5)
    with pytest.raises(FesaugError, match="expected images of shape"):
        model.predict(images[:, :, :16, :16])
    with pytest.raises(FesaugError, match="not an emotion \\+ AU checkpoint"):
        bad = run.run_dir / "bad.pt"
        torch.save({"format": "other"}, bad)
        load_emotion_au(bad)


def test_checkpoints_carry_a_schema_version_and_older_ones_still_load(run: MultiTaskResult, tmp_path: Path) -> None:
    ckpt = torch.load(run.best_checkpoint, weights_only=True)
    assert ckpt["schema_version"] == 1 and "format_version" not in ckpt
    # As versions before schema versions wrote it: format_version 1, and (before one name) heldout_folds.
    del ckpt["schema_version"]
    ckpt["format_version"] = 1
    ckpt["split"]["heldout_folds"] = ckpt["split"].pop("holdout_folds")
    torch.save(ckpt, tmp_path / "old.pt")
    old = load_emotion_au(tmp_path / "old.pt", device="cpu")
    assert old.split["holdout_folds"] == [0] and "heldout_folds" not in old.split
    assert old.split == load_emotion_au(run.best_checkpoint, device="cpu").split
    for changes, message in (
        ({"format_version": 2}, "format version 2 is not supported"),
        ({"schema_version": 9}, "schema version 9 was written by a newer fesaug"),
    ):
        torch.save({**ckpt, **changes}, tmp_path / "bad.pt")
        with pytest.raises(FesaugError, match=message):
            load_emotion_au(tmp_path / "bad.pt")
