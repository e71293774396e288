"""Training FERSNet: learning, resumption, held-out folds, DDP, checkpoints, configs, the
inference API and the datasets. Everything runs on a tiny demo dataset at 32x32 with a tiny
model, on one CPU thread (the test machines' cores are shared)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import fesaug
from fesaug.data.datasets import ManifestDataset, PairedTargetDataset
from fesaug.data.demo import DEFAULT_COUNTS, make_demo_dataset
from fesaug.data.manifest import HOLDOUT_RENAMES, read_manifest, write_manifest
from fesaug.data.splits import check_holdout_folds, split_subjects
from fesaug.models import Discriminator, FERSNet, FERSNetConfig
from fesaug.synthesis import step, training, validation
from fesaug.synthesis.checkpoint import FORMAT, load_checkpoint
from fesaug.synthesis.records import RUN_CONFIG
from fesaug.synthesis.training import TrainConfig, train
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.records import rename_keys
from fesaug.utils.runlog import read_metrics

from .conftest import TINY, tiny_config
from .conftest import cli_in_process as cli
from .ddp_worker import weight_digest

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """56 images of 8 subjects in 4 folds, 32x32."""
    out = tmp_path_factory.mktemp("demo")
    return make_demo_dataset(out, counts=dict.fromkeys(DEFAULT_COUNTS, 8), n_subjects=8, size=32, folds=4)


@pytest.fixture(scope="module")
def run(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> training.TrainResult:
    """A finished 2-epoch run holding out fold 0, shared by the read-only tests."""
    return train(demo, tmp_path_factory.mktemp("run") / "run", tiny_config(holdout_fold=0))


# ----------------------------------------------------------------------------- learning


def test_short_run_lowers_fer_loss_and_reconstruction_error(demo: Path, tmp_path: Path) -> None:
    result = train(demo, tmp_path / "run", tiny_config(epochs=6, lr=1e-3, lr_milestones=[1.0], val_fraction=0))
    first, last = result.metrics[0], result.metrics[-1]
    assert last["loss_fer"] < first["loss_fer"] * 0.9
    assert last["loss_cycle"] < first["loss_cycle"] * 0.9
    assert last["loss_paired"] < first["loss_paired"]
    assert [m["epoch"] for m in result.metrics] == list(range(1, 7))


def test_run_folder_contents(run: training.TrainResult) -> None:
    folder = run.run_dir
    for name in (
        "config.yaml",
        "provenance.json",
        "metrics.jsonl",
        "checkpoints/last.pt",
        "checkpoints/best.pt",
        "samples/epoch_001.png",
        "samples/epoch_002.png",
    ):
        assert (folder / name).is_file(), name
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert lines == run.metrics and len(lines) == 2
    for key in (
        "loss_fer",
        "loss_adversarial",
        "loss_cycle",
        "loss_paired",
        "loss_expression",
        "loss_d",
        "val_fer_acc",
        "val_fer_loss",
        "val_cycle_l1",
        "lr",
        "images_per_s",
        "epoch_seconds",
    ):
        assert key in lines[0], key
    assert 1 <= run.best_epoch <= 2 and lines[run.best_epoch - 1]["best"]
    assert training.run_config(folder) == run.config
    assert json.loads((folder / "provenance.json").read_text())["tool"] == "train"


def test_checkpoint_loads_with_weights_only_and_records_the_run(run: training.TrainResult, demo: Path) -> None:
    ckpt = torch.load(run.last_checkpoint, weights_only=True)
    assert ckpt["format"] == FORMAT and ckpt["epoch"] == 2 and ckpt["step"] > 0
    assert ckpt["classes"] == read_manifest(demo).classes and ckpt["image_size"] == 32
    assert ckpt["config"]["holdout_fold"] == 0 and ckpt["model_config"]["widths"] == [8, 16, 16]
    assert len(ckpt["manifest"]["sha256"]) == 64
    for key in ("model", "discriminator", "optimizer_g", "optimizer_d", "scheduler_g", "rng"):
        assert ckpt[key], key
    assert torch.load(run.best_checkpoint, weights_only=True)["epoch"] == run.best_epoch


def test_holdout_fold_subjects_are_never_trained_or_validated_on(run: training.TrainResult, demo: Path) -> None:
    df = read_manifest(demo).df
    fold0 = set(df.loc[df["fold"] == 0, "subject_id"])
    split = torch.load(run.last_checkpoint, weights_only=True)["split"]
    assert set(split["heldout_subjects"]) == fold0 and split["holdout_folds"] == [0]
    assert not fold0 & set(split["train_subjects"]) and not fold0 & set(split["val_subjects"])
    assert not set(split["train_subjects"]) & set(split["val_subjects"]) and split["val_subjects"]
    assert set(split["train_subjects"]) | set(split["val_subjects"]) | fold0 == set(df["subject_id"])
    assert 0 not in split["train_folds"] + split["val_folds"]
    # the rows actually trained on
    rows = split_subjects(read_manifest(demo), 0, 0.15, 0).train_rows
    assert not set(df["subject_id"].iloc[rows]) & fold0


def test_a_checkpoint_with_the_old_name_of_the_held_out_folds_reads_as_today(
    run: training.TrainResult, tmp_path: Path
) -> None:
    ckpt = torch.load(run.last_checkpoint, weights_only=True)
    # As written before one name, and before checkpoints carried a schema version.
    ckpt["split"]["heldout_folds"] = ckpt["split"].pop("holdout_folds")
    del ckpt["schema_version"]
    ckpt["format_version"] = 1
    torch.save(ckpt, tmp_path / "old.pt")
    split = load_checkpoint(tmp_path / "old.pt")["split"]
    assert split["holdout_folds"] == [0] and "heldout_folds" not in split
    assert fesaug.load_generator(tmp_path / "old.pt", device="cpu").holdout_fold == 0


def test_old_names_of_the_held_out_folds_read_as_today() -> None:
    def read_holdout_names(record: dict) -> dict:
        return rename_keys(record, HOLDOUT_RENAMES)

    assert read_holdout_names({"splits": ["train"], "excluded_folds": [0]}) == {
        "splits": ["train"],
        "holdout_folds": [0],
    }
    assert read_holdout_names({"exclude_folds": None, "seed": 1}) == {"holdout_folds": None, "seed": 1}
    assert read_holdout_names({"heldout_folds": [2], "holdout_fold": 2}) == {"holdout_folds": [2], "holdout_fold": 2}
    assert read_holdout_names({"test_fold": 3}) == {"holdout_fold": 3}
    assert read_holdout_names({"holdout_folds": [1], "excluded_folds": [0]}) == {"holdout_folds": [1]}  # today's wins


def test_held_out_folds_are_validated_by_one_function(demo: Path) -> None:
    m = read_manifest(demo)
    assert check_holdout_folds([np.int64(1), 0], m) == (1, 0)
    for bad in (-1, True, 1.5, "0"):
        with pytest.raises(FesaugError, match=r"--holdout-fold must be a fold number \(0 or more\)"):
            check_holdout_folds([bad])
    with pytest.raises(UsageError, match=r"--folds: .* has no fold 9 \(folds: 0, 1, 2, 3\)"):
        check_holdout_folds([0, 9], m, option="--folds", error=UsageError)
    m.df["fold"] = None
    with pytest.raises(FesaugError, match="has no folds, so --holdout-fold cannot be used") as info:
        split_subjects(m, 0, 0.15, 0)
    assert type(info.value) is FesaugError  # exit status 1, as before


def test_split_rejects_unknown_fold_and_subjectless_rows(demo: Path) -> None:
    m = read_manifest(demo)
    with pytest.raises(FesaugError, match="--holdout-fold: .* has no fold 9"):
        split_subjects(m, 9, 0.15, 0)
    m.df.loc[3, "subject_id"] = None
    with pytest.raises(FesaugError, match="has no subject_id"):
        split_subjects(m, 0, 0.15, 0)


def test_a_manifest_validation_split_is_kept_as_the_validation_set(demo: Path) -> None:
    m = read_manifest(demo)
    subjects = sorted(set(m.df["subject_id"][m.df["fold"] != 0]))
    chosen = set(subjects[:3])
    m.df.loc[m.df["subject_id"].isin(chosen), "split"] = "validation"
    split = split_subjects(m, 0, 0.15, 0)
    assert set(split.val_subjects) == chosen  # not a fresh carve: val_fraction is not used
    assert set(split.val_rows) == set(np.flatnonzero(m.df["subject_id"].isin(chosen)))
    assert not chosen & set(split.train_subjects)
    # One subject with rows in both roles is leakage the split cannot repair.
    other = next(s for s in subjects if s not in chosen)
    m.df.loc[m.df.index[m.df["subject_id"] == other][0], "split"] = "validation"
    with pytest.raises(FesaugError, match="validation split and in training rows"):
        split_subjects(m, 0, 0.15, 0)


# ----------------------------------------------------------------------------- resumption


# The recognition recipe (rotation, zoom, label smoothing, weight averaging) resumes exactly too.
@pytest.mark.parametrize(
    "recipe",
    [{}, {"rotation": 10, "scale": 0.1, "label_smoothing": 0.1, "ema": 0.9}],
    ids=["default", "recognition-recipe"],
)
def test_resume_after_interruption_gives_identical_weights(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recipe: dict
) -> None:
    config = tiny_config(epochs=2, lr_milestones=[0.5], **recipe)
    # The uninterrupted run loads batches in two worker processes, the other one in this
    # process: items depend on (seed, epoch, index) only, so both see the same data.
    straight = train(demo, tmp_path / "straight", replace(config, num_workers=2))

    # Kill the second run between epochs 1 and 2, then resume it.
    reseed = training.seed_everything

    def killed_before_epoch_2(*seed: int) -> None:
        if seed[1:] == (2,):
            raise KeyboardInterrupt
        reseed(*seed)

    monkeypatch.setattr(training, "seed_everything", killed_before_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        train(demo, tmp_path / "resumed", config)
    monkeypatch.setattr(training, "seed_everything", reseed)
    assert torch.load(tmp_path / "resumed/checkpoints/last.pt", weights_only=True)["epoch"] == 1
    resumed = train(demo, tmp_path / "resumed", config, resume=True)

    a = torch.load(straight.last_checkpoint, weights_only=True)
    b = torch.load(resumed.last_checkpoint, weights_only=True)
    for part in ("model", "discriminator") + (("model_trained", "ema") if recipe else ()):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), f"{part}.{name}"
    for state_a, state_b in zip(a["optimizer_g"]["state"].values(), b["optimizer_g"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert a["step"] == b["step"] and [m["epoch"] for m in resumed.metrics] == [1, 2]
    assert [m["loss_fer"] for m in resumed.metrics] == [m["loss_fer"] for m in straight.metrics]


def test_weight_averaging_saves_and_validates_the_average(demo: Path, tmp_path: Path) -> None:
    result = train(demo, tmp_path / "run", tiny_config(epochs=2, ema=0.5))
    ckpt = torch.load(result.last_checkpoint, weights_only=True)
    averaged, trained = ckpt["model"], ckpt["model_trained"]
    assert averaged.keys() == trained.keys()
    # The model is the average (what inference loads), not the optimiser's last weights.
    assert all(torch.equal(averaged[k], ckpt["ema"][f"module.{k}"]) for k in averaged)
    assert any(not torch.equal(averaged[k], trained[k]) for k in averaged if averaged[k].is_floating_point())
    gen = fesaug.load_generator(result.last_checkpoint, device="cpu")
    assert all(torch.equal(v, averaged[k]) for k, v in gen.model.state_dict().items())
    # The validation accuracy recorded for the epoch is the average's.
    config = result.config
    split = split_subjects(read_manifest(demo), config.holdout_fold, config.val_fraction, config.seed)
    val_set = PairedTargetDataset(
        ManifestDataset(demo, rows=split.val_rows, image_size=32), paired_prob=1.0, augment=False
    )
    val = training.validate(gen.model, torch.utils.data.DataLoader(val_set, batch_size=64), torch.device("cpu"))
    assert val["val_fer_loss"] == pytest.approx(result.metrics[-1]["val_fer_loss"], rel=1e-4)


def test_batch_norm_statistics_are_recomputed_over_the_whole_loader() -> None:
    class Net(torch.nn.Module):  # FERSNet's call signature: images and target labels
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm2d(1, momentum=0.3)

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return self.norm(x + t[:, None, None, None])

    rng = np.random.default_rng(0)
    faces = torch.from_numpy(rng.integers(0, 256, (12, 1, 4, 4), dtype=np.uint8))
    labels = torch.arange(12) % 3
    batches = [{"source": faces[i : i + 4], "target_label": labels[i : i + 4]} for i in range(0, 12, 4)]
    net = Net().eval()
    net.norm.running_mean.fill_(5.0)
    validation.recalibrate_batch_norm(net, batches, torch.device("cpu"))
    inputs = (faces.float() / 127.5 - 1) + labels[:, None, None, None]
    assert torch.allclose(net.norm.running_mean, inputs.mean().reshape(1), atol=1e-5)
    # Equal batches: the mean of the batch variances (unbiased per batch), not a momentum blend.
    per_batch = torch.stack([inputs[i : i + 4].var() for i in range(0, 12, 4)]).mean()
    assert torch.allclose(net.norm.running_var, per_batch.reshape(1), atol=1e-5)
    assert net.norm.momentum == 0.3 and not net.training


def test_existing_run_needs_resume_or_overwrite(run: training.TrainResult, demo: Path, capsys) -> None:
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", run.run_dir)
    assert code == 1 and err.startswith("Error: ") and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", run.run_dir, "--resume", "--overwrite")
    assert code == 2 and "only one" in err
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", run.run_dir, "--resume")
    assert code == 1 and "already completed 2 epoch(s) of 2" in err


# ----------------------------------------------------------------------------- distributed


def test_two_process_ddp_run_finishes_with_equal_replicas(demo: Path, tmp_path: Path) -> None:
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        str(worker),
        str(tmp_path),
        "train",
        "--manifest",
        str(demo),
        "--out",
        str(tmp_path / "run"),
        "--device",
        "cpu",
        "--config",
        str(_write(tmp_path / "tiny.yaml", TINY)),
        "--epochs",
        "1",
        "--batch-size",
        "4",
    ]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    digests = [(tmp_path / f"rank{r}.txt").read_text() for r in (0, 1)]
    assert digests[0] == digests[1]
    # rank 0 wrote the checkpoint, and it holds the weights both replicas ended with
    ckpt = torch.load(tmp_path / "run/checkpoints/last.pt", weights_only=True)
    nets = [
        FERSNet(FERSNetConfig(**ckpt["model_config"])),
        Discriminator(FERSNetConfig(**ckpt["model_config"])),
    ]
    nets[0].load_state_dict(ckpt["model"])
    nets[1].load_state_dict(ckpt["discriminator"])
    assert weight_digest(nets) == digests[0]
    assert proc.stdout.count("best epoch") == 1  # only rank 0 prints


# ----------------------------------------------------------------------------- bad input


def test_bad_checkpoints_give_one_error_line(run: training.TrainResult, demo: Path, tmp_path: Path, capsys) -> None:
    garbage = tmp_path / "garbage"
    (garbage / "checkpoints").mkdir(parents=True)
    (garbage / "checkpoints/last.pt").write_bytes(b"not a checkpoint at all")
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", garbage, "--resume")
    assert code == 1 and err.count("\n") == 1 and "not a readable fesaug checkpoint" in err

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(run.last_checkpoint.read_bytes()[:5000])
    with pytest.raises(FesaugError, match="not a readable fesaug checkpoint"):
        fesaug.load_generator(truncated)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(FesaugError, match="not a fesaug FERSNet checkpoint"):
        fesaug.load_generator(other)

    # the right kind of file, but trained on other classes than the manifest has
    m = read_manifest(demo)
    classes = ["neutral" if c == "contempt" else c for c in m.classes]
    df = m.df.assign(label_name=[classes[i] for i in m.df["label"]])
    renamed = write_manifest(df, demo.with_name("renamed.parquet"), classes=classes, overwrite=True)
    code, _, err = cli(capsys, "train", "--manifest", renamed, "--out", run.run_dir, "--resume", "--epochs", "3")
    assert code == 1 and err.count("\n") == 1 and "trained on classes" in err and "Traceback" not in err


def test_resume_refuses_another_model_or_settings(
    run: training.TrainResult, demo: Path, tmp_path: Path, capsys
) -> None:
    base = ["train", "--manifest", demo, "--out", run.run_dir, "--resume", "--epochs", "3"]
    code, _, err = cli(capsys, *base, "--sharing", "cross-stitch")
    assert code == 1 and "another model" in err and "sharing" in err
    code, _, err = cli(capsys, *base, "--lr", "0.5")
    assert code == 1 and "other settings" in err and "lr" in err
    bigger = _write(tmp_path / "bigger.yaml", {"model": {"image_size": 64}})
    code, _, err = cli(capsys, *base, "--config", bigger)
    assert code == 1 and "32x32" in err and "64x64" in err


def test_a_run_saved_before_newer_config_keys_existed_still_resumes(
    run: training.TrainResult, demo: Path, tmp_path: Path, capsys
) -> None:
    import shutil

    import yaml

    old = tmp_path / "old"
    shutil.copytree(run.run_dir, old)
    # What an earlier fesaug wrote: no mask_smoothness weight, no expression_classifier key.
    ckpt = torch.load(old / "checkpoints" / "last.pt", weights_only=True)
    del ckpt["config"]["loss"]["mask_smoothness"], ckpt["config"]["expression_classifier"]
    torch.save(ckpt, old / "checkpoints" / "last.pt")
    config = yaml.safe_load((old / "config.yaml").read_text())
    del config["loss"]["mask_smoothness"], config["expression_classifier"]
    (old / "config.yaml").write_text(yaml.safe_dump(config))
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", old, "--resume", "--epochs", "3")
    assert code == 0, err
    assert [m["epoch"] for m in read_metrics(old / "metrics.jsonl")] == [1, 2, 3]


def test_bad_configs_give_one_error_line_naming_key_and_file(demo: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    for content, words in [
        ({"epoch": 3}, ["'epoch'", "unknown config key"]),
        ({"epochs": -2}, ["epochs", "at least 1"]),
        ({"loss": {"cycle": "high"}}, ["loss.cycle", "a number"]),
        ({"model": {"sharing": "magic"}}, ["sharing", "convflu"]),
        ({"ema": 1.0}, ["ema", "decay in [0, 1)"]),
        ({"rotation": 90}, ["rotation", "degrees in [0, 45]"]),
        ({"label_smoothing": -0.1}, ["label_smoothing", "in [0, 1)"]),
    ]:
        path = _write(tmp_path / "bad.yaml", content)
        code, _, err = cli(capsys, "train", "--manifest", demo, "--out", out, "--config", path)
        assert code == 1 and err.startswith("Error: ") and err.count("\n") == 1, err
        assert str(path) in err and all(w in err for w in words), err
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", out, "--config", tmp_path / "list.yaml")
    assert code == 1 and "mapping" in err
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", out, "--epochs", "-1")
    assert code == 2 and "--epochs" in err
    code, _, err = cli(capsys, "train", "--manifest", demo, "--out", out, "--batch-size", "500")
    assert code == 1 and "lower --batch-size" in err
    assert not (out / "checkpoints").exists()


def test_config_layers_preset_then_yaml_then_flags(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.yaml", {"preset": "paper", "epochs": 7, "model": {"sharing": "hard"}, "loss": {"cycle": 2}}
    )
    config = training.resolve_config(config_file=path, overrides={"epochs": 3, "model": {"widths": [8, 16, 32, 32]}})
    assert (config.preset, config.epochs, config.batch_size, config.d_steps) == ("paper", 3, 8, 3)
    assert config.model == {"sharing": "hard", "widths": (8, 16, 32, 32)} and config.loss.cycle == 2.0
    assert config.model_config(num_classes=7).image_size == 96
    assert TrainConfig.from_dict(config.to_dict(), where="x") == config


def test_bench_recipes_load_and_the_recognition_levers_add_up_to_the_recognition_recipe() -> None:
    from fesaug.synthesis.config import load_config

    recipes = Path(__file__).parents[1] / "bench" / "recipes"
    default = TrainConfig().to_dict()
    changed = {}
    for path in sorted(recipes.glob("*.yaml")):
        config = load_config(path).to_dict()  # a typo or a removed key fails here, not hours into a run
        changed[path.stem] = {k: v for k, v in config.items() if v != default[k]}
        assert changed[path.stem], f"{path.name} changes nothing"
    # The per-lever breakdown (bench/train_ckplus.py) measures the recipe's levers one at a time:
    # together they must be the recipe itself.
    levers = [changed[f"lever_{name}"] for name in ("augment", "smoothing", "ema")]
    assert {k: v for lever in levers for k, v in lever.items()} == changed["recognition"]
    assert sum(len(lever) for lever in levers) == len(changed["recognition"])


def test_ckplus_benchmark_resumes_from_its_committed_fold_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A CK+48 fold is 20 minutes of the CPU and its checkpoints stay on the machine that trained
    # it: a fresh clone must take the committed records as finished folds, not train them again.
    bench = Path(__file__).parents[1] / "bench"
    monkeypatch.syspath_prepend(str(bench))
    import train_ckplus

    def no_training(*args, **kwargs):
        raise AssertionError("a recorded fold was trained again")

    monkeypatch.setattr(train_ckplus.subprocess, "run", no_training)
    recorded = json.loads((bench / "results" / "fersnet_ckplus.json").read_text())["runs"]["recognition / convflu"]
    for fold in recorded["folds"]:
        r = train_ckplus.run_fold(
            tmp_path / "ck.parquet",
            tmp_path,
            "recognition",
            bench / "recipes" / "recognition.yaml",
            "convflu",
            fold,
            recorded["epochs"],
            seed=0,
        )
        assert r == recorded["per_fold"][recorded["folds"].index(fold)]
    with pytest.raises(AssertionError, match="trained again"):  # another recipe is not a recorded fold
        train_ckplus.run_fold(
            tmp_path / "ck.parquet",
            tmp_path,
            "recognition",
            bench / "recipes" / "recognition.yaml",
            "convflu",
            0,
            recorded["epochs"] + 1,
            seed=0,
        )


# ----------------------------------------------------------------------------- inference API


def test_load_generator_synthesizes_and_classifies(run: training.TrainResult, demo: Path) -> None:
    gen = fesaug.load_generator(run.best_checkpoint, device="cpu")
    ckpt = torch.load(run.best_checkpoint, weights_only=True)
    assert gen.classes == ckpt["classes"] and gen.image_size == 32 and len(gen.checkpoint_sha256) == 64
    assert gen.training_subjects == ckpt["split"]["train_subjects"] and gen.holdout_fold == 0

    faces = ManifestDataset(demo, rows=range(5), image_size=32).pixels  # uint8 (5, 1, 32, 32)
    fake = gen.synthesize(faces, [0, 1, 2, 3, "surprise"])
    assert fake.dtype == torch.uint8 and fake.shape == (5, 1, 32, 32)
    fake = gen.synthesize(faces.float() / 255, 2, batch_size=2)
    assert fake.dtype == torch.float32 and fake.shape == (5, 1, 32, 32) and fake.min() >= 0 and fake.max() <= 1
    assert gen.synthesize(faces[0], "happy").shape == (1, 32, 32)
    probs = gen.classify(faces)
    assert probs.shape == (5, len(gen.classes)) and torch.allclose(probs.sum(1), torch.ones(5))
    # Test-time mirroring: the mean over each face and its mirror image, so a face and its
    # mirror image get the same answer.
    mirrored = faces.flip(-1)
    both = gen.classify(faces, flip=True)
    assert torch.allclose(both, (probs + gen.classify(mirrored)) / 2, atol=1e-6)
    assert torch.allclose(both, gen.classify(mirrored, flip=True), atol=1e-6)
    with pytest.raises(FesaugError, match="resize"):
        gen.synthesize(torch.zeros(2, 1, 48, 48, dtype=torch.uint8), 0)
    with pytest.raises(FesaugError, match="unknown class"):
        gen.synthesize(faces, "joy")
    with pytest.raises(FesaugError, match="one per image"):
        gen.synthesize(faces, [0, 1])


def test_recogniser_is_the_fer_branch_and_fine_tunes_a_copy(run: training.TrainResult, demo: Path) -> None:
    from fesaug.evaluate.downstream import DownstreamConfig, fit, predict_proba

    gen = fesaug.load_generator(run.best_checkpoint, device="cpu")
    m = read_manifest(demo)
    data = ManifestDataset(m, rows=np.arange(12), image_size=gen.image_size)
    recogniser = gen.recogniser()
    # Same probabilities as the generator's own classify: the standardisation is FERSNet's range.
    assert np.allclose(predict_proba(recogniser, data.pixels), gen.classify(data.pixels).numpy(), atol=1e-5)
    before = {k: v.clone() for k, v in gen.model.state_dict().items()}
    tuned = fit(
        data.pixels,
        data.labels,
        config=DownstreamConfig(epochs=2, image_size=gen.image_size, batch_size=6, device="cpu", lr=1e-2),
        num_classes=len(m.classes),
        init=recogniser,
    ).model
    after = gen.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the generator itself is untouched
    assert not np.allclose(predict_proba(tuned, data.pixels), predict_proba(recogniser, data.pixels))
    with pytest.raises(FesaugError, match="fine-tune"):
        fit(
            data.pixels,
            data.labels,
            config=DownstreamConfig(epochs=1, image_size=gen.image_size, device="cpu"),
            num_classes=len(m.classes) + 1,
            init=recogniser,
        )


# ----------------------------------------------------------------------------- datasets


def test_manifest_dataset_images_labels_and_weights(demo: Path) -> None:
    m = read_manifest(demo)
    ds = ManifestDataset(m, origins=("real",), rows=[0, 1, 2, 10, 20], image_size=16)
    image, label = ds[3]
    assert image.dtype == torch.float32 and image.shape == (1, 16, 16) and 0 <= image.min() <= image.max() <= 1
    assert label == int(m.df["label"].iloc[10]) and len(ds) == 5
    weights = ds.sample_weights()
    counts = np.bincount(ds.labels)
    assert torch.allclose(weights, torch.tensor(1.0 / counts[ds.labels], dtype=torch.float64))
    assert len(ManifestDataset(m, origins=("synthetic",))) == 0
    flipped = ManifestDataset(m, rows=[0], transform=lambda x: x.flip(-1))
    assert torch.equal(flipped[0][0], ManifestDataset(m, rows=[0])[0][0].flip(-1))


def test_paired_dataset_pairs_same_subject_other_expression_and_is_deterministic(demo: Path) -> None:
    base = ManifestDataset(demo, image_size=32)
    ds = PairedTargetDataset(base, paired_prob=1.0, augment=False, seed=3)
    for i in range(len(ds)):
        item = ds[i]
        assert item["target_label"] != item["source_label"]
        if item["paired"]:
            j = next(j for j in range(len(base)) if torch.equal(base.pixels[j], item["target"]))
            assert base.subjects[j] == base.subjects[i] and base.labels[j] == item["target_label"]
        else:
            assert not ds.has_partner()[i] and not item["target"].any()
    assert ds.has_partner().any()
    unpaired = PairedTargetDataset(base, paired_prob=0.0, augment=False, seed=3)
    assert not any(unpaired[i]["paired"] for i in range(len(ds)))

    augmented = PairedTargetDataset(base, paired_prob=0.5, augment=True, shift=0.25, seed=3)
    augmented.set_epoch(4)
    again = [augmented[i] for i in range(8)]
    torch.manual_seed(123)  # the global generator does not matter
    assert all(torch.equal(a["source"], augmented[i]["source"]) for i, a in enumerate(again))
    augmented.set_epoch(5)
    assert any(not torch.equal(a["source"], augmented[i]["source"]) for i, a in enumerate(again))


def test_own_expression_targets_ask_for_the_source_back_unchanged(demo: Path) -> None:
    base = ManifestDataset(demo, image_size=32)
    before = [PairedTargetDataset(base, paired_prob=0.7, augment=True, shift=0.25, seed=3)[i] for i in range(len(base))]
    ds = PairedTargetDataset(base, paired_prob=0.7, augment=True, shift=0.25, own_expression_prob=0.5, seed=3)
    items = [ds[i] for i in range(len(ds))]
    own = [it for it in items if it["target_label"] == it["source_label"]]
    assert 0.3 * len(items) < len(own) < 0.7 * len(items)
    assert all(it["paired"] and torch.equal(it["target"], it["source"]) for it in own)
    assert all(a["target_label"] != a["source_label"] for a in before)  # off by default
    with pytest.raises(FesaugError, match="own_expression_prob"):
        PairedTargetDataset(base, paired_prob=0.7, augment=False, own_expression_prob=1.0)


@pytest.mark.parametrize("augment", [{"shift": 0.25}, {"rotation": 20, "scale": 0.2}], ids=["shift", "rotation-zoom"])
def test_paired_augmentation_moves_source_and_target_together(demo: Path, augment: dict) -> None:
    base = ManifestDataset(demo, image_size=32)
    face = base.pixels[0].clamp(40, 200)
    base.pixels[:] = face  # every image identical: an aligned pair stays identical
    ds = PairedTargetDataset(base, paired_prob=1.0, augment=True, seed=0, **augment)
    items = [ds[i] for i in range(len(ds))]
    paired = [it for it in items if it["paired"]]
    assert paired and all(torch.equal(it["source"], it["target"]) for it in paired)
    assert any(not torch.equal(it["source"], face) for it in items)
    # What comes into view from outside the image repeats its border, never a black corner.
    assert all(it["source"].min() >= 40 and it["source"].max() <= 200 for it in items)


def _write(path: Path, content: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(content))
    return path


# ----------------------------------------------------------------------------- expression judge


def _constant_judge(demo: Path, path: Path, classes: list[str] | None = None) -> Path:
    """A classifier whose logits are all zero whatever it sees: cross-entropy log(C) exactly."""
    from fesaug.evaluate.downstream import make_classifier, save_classifier

    m = read_manifest(demo)
    names = classes or m.classes
    model = make_classifier("small-cnn", len(names), image_size=32)
    torch.nn.init.zeros_(model.head.weight)
    torch.nn.init.zeros_(model.head.bias)
    save_classifier(model, path, names)
    return path


def test_expression_loss_goes_through_the_given_classifier_and_is_recorded(demo: Path, tmp_path: Path) -> None:
    from fesaug.utils.files import file_sha256

    judge = _constant_judge(demo, tmp_path / "judge.pt")
    before = file_sha256(judge)
    result = train(demo, tmp_path / "run", tiny_config(holdout_fold=0, expression_classifier=str(judge)))
    classes = len(read_manifest(demo).classes)
    # FERSNet's own FER branch would give another value; the judge's zero logits give log(C).
    assert all(m["loss_expression"] == pytest.approx(np.log(classes), abs=1e-5) for m in result.metrics)
    assert file_sha256(judge) == before  # frozen: the generator learns from it, never changes it
    used = json.loads((tmp_path / "run" / "provenance.json").read_text())["expression_classifier"]
    assert used == {"path": str(judge), "sha256": before}

    plain = train(demo, tmp_path / "plain", tiny_config(holdout_fold=0))
    assert plain.metrics[0]["loss_expression"] != pytest.approx(np.log(classes), abs=1e-5)


def test_cli_expression_classifier_flag(demo: Path, tmp_path: Path, capsys) -> None:
    judge = _constant_judge(demo, tmp_path / "judge.pt")
    tiny = _write(tmp_path / "tiny.yaml", TINY)
    code, out, err = cli(
        capsys,
        "train",
        "--manifest",
        demo,
        "--out",
        tmp_path / "run",
        "--config",
        tiny,
        "--epochs",
        "1",
        "--expression-classifier",
        judge,
    )
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "provenance.json").read_text())["expression_classifier"]["path"] == str(judge)
    code, _, err = cli(
        capsys,
        "train",
        "--manifest",
        demo,
        "--out",
        tmp_path / "au",
        "--tasks",
        "emotion,au",
        "--expression-classifier",
        judge,
    )
    assert code == 2 and "--expression-classifier" in err and "FERSNet" in err


def test_expression_classifier_of_other_classes_or_missing_is_one_error(demo: Path, tmp_path: Path) -> None:
    other = _constant_judge(demo, tmp_path / "other.pt", classes=["a", "b"])
    with pytest.raises(FesaugError, match="knows the classes a, b"):
        train(demo, tmp_path / "run", tiny_config(expression_classifier=str(other)))
    with pytest.raises(FesaugError, match="no such file"):
        train(demo, tmp_path / "run2", tiny_config(expression_classifier=str(tmp_path / "missing.pt")))


def test_mask_total_variation_is_zero_for_flat_masks_and_counts_edges() -> None:
    flat = torch.full((2, 1, 6, 6), 0.3)
    assert float(step._total_variation(flat)) == 0.0
    stripes = torch.zeros(1, 1, 4, 4)
    stripes[..., :, 1::2] = 1.0  # every horizontal neighbour differs by 1, vertical ones not at all
    assert float(step._total_variation(stripes)) == pytest.approx(1.0)


def test_mask_smoothness_weight_lowers_the_mask_variation(demo: Path, tmp_path: Path) -> None:
    rough = train(demo, tmp_path / "rough", tiny_config(epochs=3, val_fraction=0, lr=1e-3))
    smooth = train(
        demo, tmp_path / "smooth", tiny_config(epochs=3, val_fraction=0, lr=1e-3, loss={"mask_smoothness": 20.0})
    )
    assert smooth.metrics[-1]["loss_mask_smoothness"] < rough.metrics[-1]["loss_mask_smoothness"]
    assert rough.metrics[0]["loss_mask_smoothness"] > 0


# ----------------------------------------------------------------------------- deformation output (#17)


def test_a_checkpoint_from_before_the_warp_output_still_loads_and_synthesizes(
    run: training.TrainResult, tmp_path: Path
) -> None:
    ckpt = torch.load(run.run_dir / "checkpoints" / "last.pt", weights_only=True)
    # What a checkpoint written before the deformation output lacks.
    del ckpt["model_config"]["max_flow"]
    del ckpt["config"]["align_pairs"], ckpt["config"]["loss"]["flow_smoothness"]
    old = tmp_path / "old.pt"
    torch.save(ckpt, old)
    gen = fesaug.load_generator(old, device="cpu")
    faces = torch.randint(0, 256, (2, 1, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    fake = gen.synthesize(faces, [1, 2])
    assert fake.shape == faces.shape and fake.dtype == torch.uint8
    assert torch.equal(gen.synthesize(faces, [1, 2], intensity=0.0), faces)  # intensity works on old models too
    assert torch.equal(
        fake, fesaug.load_generator(run.run_dir / "checkpoints" / "last.pt", device="cpu").synthesize(faces, [1, 2])
    )


def test_an_attention_run_written_before_the_warp_thresholds_resumes(demo: Path, tmp_path: Path) -> None:
    # The thresholds belong to the warp decoder: an attention run's checkpoint that predates them
    # is the model today's config asks for, so it resumes (it used to be refused).
    config = tiny_config(holdout_fold=0, epochs=1, model={**TINY["model"], "output": "attention"})
    first = train(demo, tmp_path / "run", config)
    ckpt = torch.load(first.last_checkpoint, weights_only=True)
    del ckpt["model_config"]["flow_threshold"], ckpt["model_config"]["mask_threshold"]
    torch.save(ckpt, first.last_checkpoint)
    resumed = train(demo, tmp_path / "run", config.updated({"epochs": 2}, where="test"), resume=True)
    assert [m["epoch"] for m in resumed.metrics] == [1, 2]


def test_a_warp_model_trains_on_aligned_pairs_and_its_generator_takes_an_intensity(demo: Path, tmp_path: Path) -> None:
    config = tiny_config(
        holdout_fold=0,
        epochs=1,
        align_pairs=True,
        model={**TINY["model"], "output": "warp"},
        loss={"flow_smoothness": 0.1, "flow_magnitude": 0.1, "paired_perceptual": 1.0},
        paired_intensities=[0.5, 1.0],
    )
    result = train(demo, tmp_path / "warp", config)
    last = result.metrics[-1]
    assert last["loss_flow_smoothness"] > 0 and last["loss_flow_magnitude"] > 0 and last["loss_paired_perceptual"] > 0
    gen = fesaug.load_generator(result.run_dir / "checkpoints" / "last.pt", device="cpu")
    faces = ManifestDataset(demo, image_size=32).pixels[:3]
    assert torch.equal(gen.synthesize(faces, "happy", intensity=0.0), faces)
    assert not torch.equal(gen.synthesize(faces, "happy"), faces)
    with pytest.raises(FesaugError, match="intensity must be one number or one per image"):
        gen.synthesize(faces, "happy", intensity=[0.5, 2.5, 0.2])


def test_aligned_pairs_register_the_partner_onto_the_source() -> None:
    import cv2

    from fesaug.data.demo import Subject, render
    from fesaug.data.pairs import align_pair

    face = render(Subject.from_seed(0, 0), "happy", 1.0, size=64).astype(np.float32)
    # The same face rotated, scaled and shifted a little, darker, with less contrast and lit from one side.
    light = 1 + 0.2 * np.linspace(-0.5, 0.5, 64)[None, :]
    moved = (
        cv2.warpAffine(
            face, np.float32([[1.02, 0.03, 2.0], [-0.03, 1.02, -1.5]]), (64, 64), borderMode=cv2.BORDER_REPLICATE
        )
        * light
        * 0.8
        + 20
    )
    aligned = align_pair(face.astype(np.uint8), np.clip(moved, 0, 255).astype(np.uint8)).astype(float)
    inner = (slice(6, -6), slice(6, -6))
    assert np.abs(aligned[inner] - face[inner]).mean() < 4.0 < 15.0 < np.abs(moved[inner] - face[inner]).mean()


def test_a_pair_target_keeps_the_source_where_the_partner_barely_differs() -> None:
    from fesaug.data.pairs import keep_unchanged

    source = np.full((16, 16), 100, dtype=np.uint8)
    partner = source + np.random.default_rng(0).integers(-3, 4, (16, 16)).astype(np.uint8)  # noise only
    partner[5:8, 5:8] = 180  # the expression: a region that really changed
    target = keep_unchanged(source, partner, threshold=10, grow=1)
    changed = np.zeros((16, 16), dtype=bool)
    changed[4:9, 4:9] = True  # the region, grown by a pixel
    assert np.array_equal(target[changed], partner[changed]) and np.array_equal(target[~changed], source[~changed])


def test_a_config_recorded_before_a_default_changed_keeps_the_behaviour_it_was_made_with() -> None:
    recorded = TrainConfig().to_dict()
    for key in ("align_pairs", "pair_threshold", "paired_intensities"):  # keys fesaug added since
        del recorded[key]
    for key in ("edit_sparsity", "flow_magnitude"):
        del recorded["loss"][key]
    old = TrainConfig.from_dict(RUN_CONFIG.read(recorded, where="an older run"), where="an older run")
    model = old.model_config(num_classes=7)
    assert (model.output, model.flow_threshold, old.align_pairs, old.loss.edit_sparsity) == (
        "attention",
        0.0,
        False,
        0.0,
    )
    assert old.loss.paired == TrainConfig().loss.paired  # a key the record has keeps its value
    # A record with every key means exactly what it says, and so does any record of today's version.
    assert TrainConfig.from_dict(RUN_CONFIG.read(TrainConfig().to_dict(), where="x"), where="x") == TrainConfig()
    assert TrainConfig.from_dict(RUN_CONFIG.read(RUN_CONFIG.stamp(recorded), where="x"), where="x") != old
