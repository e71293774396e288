"""Colour end to end: a FERSNet trained on the colour demo takes and makes RGB faces, balance,
review and the downstream classifiers work in colour, the exact-truth scores are computed in
colour, and a checkpoint trained on the other kind of images is refused with one line (balance,
train --resume, FESampler, the generator, a classifier). Tiny FERSNets trained for one epoch
stand in for real generators: these tests check the plumbing, not image quality."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace as dataclass_replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fesaug
from fesaug.audit.report import audit
from fesaug.balance import BalanceConfig, balance
from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.evaluate.downstream import DownstreamConfig, fit, load_classifier, predict_proba, save_classifier
from fesaug.review.page import write_review
from fesaug.synthesis.checkpoint import load_checkpoint
from fesaug.synthesis.training import train
from fesaug.utils.errors import FesaugError, InvalidValue

from .conftest import SMALL_COUNTS, cli_in_process, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def colour(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's small gray demo set (conftest), in colour."""
    out = tmp_path_factory.mktemp("colour")
    return make_demo_dataset(out, counts=SMALL_COUNTS, n_subjects=8, size=32, folds=4, color=True)


@pytest.fixture(scope="module")
def gray(small_demo: Path) -> Path:
    return small_demo


@pytest.fixture(scope="module")
def colour_run(colour: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(colour, tmp_path_factory.mktemp("run") / "run", tiny_config(holdout_fold=0, epochs=1)).run_dir


@pytest.fixture(scope="module")
def gray_run(small_checkpoint: Path) -> Path:
    return small_checkpoint.parents[1]  # run/checkpoints/best.pt


def _best(run: Path) -> Path:
    return run / "checkpoints" / "best.pt"


def _one_error_line(code: int, err: str, *needles: str) -> None:
    assert code == 1, err
    assert err.startswith("Error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err, err


def test_a_colour_run_trains_balances_audits_and_reviews_in_colour(colour: Path, colour_run: Path, tmp_path) -> None:
    assert load_checkpoint(_best(colour_run))["model_config"]["in_channels"] == 3
    with Image.open(colour_run / "samples" / "epoch_001.png") as grid:
        assert grid.mode == "RGB"
    gen = fesaug.load_generator(_best(colour_run), device="cpu")
    assert gen.channels == 3 and "RGB" in repr(gen)
    faces = ManifestDataset(colour, image_size=32).pixels[:3]
    assert gen.synthesize(faces, "happy").shape == (3, 3, 32, 32) and gen.classify(faces).shape == (3, 7)
    out = balance(colour, _best(colour_run), tmp_path / "b", BalanceConfig(min_confidence=0.0, seed=0), device="cpu")
    m = read_manifest(out.manifest)
    syn = np.flatnonzero((m.df["origin"] == "synthetic").to_numpy())
    assert m.channels == 3 and syn.size > 0
    for i in syn[:5]:
        with Image.open(m.image_root / m.df["image"].iat[int(i)]["path"]) as png:
            assert png.mode == "RGB" and png.size == (32, 32)
    assert "colour (RGB) PNGs" in (tmp_path / "b" / "README.md").read_text()
    assert audit(m).problems == []
    write_review(tmp_path / "b", tmp_path / "review", thumb_size=64)
    thumbs = list((tmp_path / "review" / "thumbs").rglob("*.png"))
    assert thumbs and all(Image.open(t).mode == "RGB" for t in thumbs)


def test_a_checkpoint_for_the_other_channels_is_refused_by_balance(
    colour: Path, gray: Path, colour_run: Path, gray_run: Path, tmp_path, capsys
) -> None:
    code, _, err = cli_in_process(
        capsys, "balance", "--manifest", gray, "--checkpoint", _best(colour_run), "--out", tmp_path / "a"
    )
    _one_error_line(code, err, "was trained on colour (RGB) images", "holds gray ones", "--color")
    code, _, err = cli_in_process(
        capsys, "balance", "--manifest", colour, "--checkpoint", _best(gray_run), "--out", tmp_path / "b"
    )
    _one_error_line(code, err, "was trained on gray images", "holds colour (RGB) ones", "--grayscale")
    assert not (tmp_path / "a" / "manifest.parquet").exists() and not (tmp_path / "b" / "manifest.parquet").exists()


def test_resuming_with_the_other_channels_is_refused(colour: Path, gray_run: Path, tmp_path, capsys) -> None:
    run = shutil.copytree(gray_run, tmp_path / "run")
    code, _, err = cli_in_process(capsys, "train", "--manifest", colour, "--out", run, "--resume", "--epochs", "2")
    _one_error_line(code, err, "was trained on gray images, but the manifest holds colour (RGB) ones")


def test_fesampler_and_the_generator_refuse_the_other_channels(colour: Path, gray: Path, colour_run: Path) -> None:
    sampler = fesaug.FESampler(_best(colour_run), min_confidence=0.0, random_state=0, device="cpu")
    with pytest.raises(FesaugError, match="was trained on colour \\(RGB\\) images"):
        sampler.fit_resample(gray)
    pixels = ManifestDataset(gray).pixels
    with pytest.raises(InvalidValue, match="have 1 channel\\(s\\), but the generator .* makes 3"):
        sampler.fit_resample(pixels[:, 0].numpy(), ManifestDataset(gray).labels)
    # Colour arrays N×H×W×C come back as such, with synthetic faces appended.
    data = ManifestDataset(colour)
    X_res, y_res = sampler.fit_resample(data.pixels.permute(0, 2, 3, 1).numpy(), data.labels)
    assert X_res.shape[1:] == (32, 32, 3) and len(X_res) == len(y_res) > len(data)
    gen = fesaug.load_generator(_best(colour_run), device="cpu")
    with pytest.raises(FesaugError, match="expected colour images of shape \\(B, 3, 32, 32\\)"):
        gen.synthesize(pixels[:2], "happy")


def test_downstream_classifiers_take_the_data_channels(colour: Path, gray: Path, tmp_path) -> None:
    data = ManifestDataset(colour)
    config = DownstreamConfig(epochs=1, image_size=32, batch_size=16)
    model = fit(data.pixels, data.labels, config=config, num_classes=7).model
    assert model.channels == 3
    save_classifier(model, tmp_path / "c.pt", data.classes)
    loaded, classes = load_classifier(tmp_path / "c.pt", device="cpu")
    assert loaded.channels == 3 and classes == data.classes
    assert np.allclose(predict_proba(loaded, data.pixels), predict_proba(model.cpu(), data.pixels), atol=1e-6)
    with pytest.raises(FesaugError, match="takes colour \\(RGB\\) images, got 1-channel ones"):
        predict_proba(loaded, ManifestDataset(gray).pixels)
    # A classifier saved before colour (no channels in the file) is gray.
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    gray_model = fit(ManifestDataset(gray).pixels, data.labels, config=config, num_classes=7).model
    save_classifier(gray_model, tmp_path / "g.pt", data.classes)
    old = torch.load(tmp_path / "g.pt", weights_only=True)
    old.pop("channels"), old.pop("schema_version")
    torch.save({**old, "format_version": 1}, tmp_path / "old.pt")  # as fesaug wrote it before
    assert load_classifier(tmp_path / "old.pt", device="cpu")[0].channels == 1 and saved["channels"] == 3


def test_exact_truth_scores_on_the_colour_demo(colour: Path, tmp_path, capsys) -> None:
    config = tmp_path / "tiny.yaml"
    config.write_text("model: {image_size: 32, widths: [8, 16, 16], disc_width: 8}\n")
    args = ["--out", tmp_path / "ev", "--folds", "0", "--epochs", "1", "--image-size", "32", "--generator-epochs", "1"]
    args += ["--generator-config", config, "--generator-batch-size", "8", "--min-confidence", "0", "--judges", "none"]
    code, _, err = cli_in_process(capsys, "evaluate-synthesis", "--manifest", colour, *args)
    assert code == 0, err
    truth = json.loads((tmp_path / "ev" / "results.json").read_text())["synthesis"]["ground_truth"]
    for name in ("synthetic", "copy_input"):
        scores = truth[name]
        assert 0 < scores["l1"]["mean"] < 60 and 10 < scores["psnr"]["mean"] < 60 and 0 < scores["ssim"]["mean"] <= 1


def test_the_emotion_au_model_takes_colour_and_is_refused_for_gray(colour: Path, gray: Path, tmp_path, capsys) -> None:
    from fesaug.multitask import MultiTaskConfig, load_emotion_au, train_multitask

    config = MultiTaskConfig(model={"image_size": 32, "widths": (8, 16, 16)}, epochs=1, batch_size=8, holdout_fold=0)
    ckpt = train_multitask(colour, tmp_path / "mt", config).best_checkpoint
    model = load_emotion_au(ckpt, device="cpu")
    emotions, aus = model.predict(ManifestDataset(colour, image_size=32).pixels[:4])
    assert model.channels == 3 and emotions.shape == (4, 7) and aus.shape[0] == 4
    capsys.readouterr()  # training's log lines
    args = ["--folds", "0", "--epochs", "1", "--generator-epochs", "1", "--au-check", ckpt]
    code, _, err = cli_in_process(capsys, "evaluate", "--manifest", gray, "--out", tmp_path / "ev", *args)
    _one_error_line(code, err, "--au-check model", "was trained on colour (RGB) images, but", "holds gray ones")
    assert not (tmp_path / "ev" / "evaluate.json").exists()


def test_the_pictures_show_colour(colour: Path, tmp_path) -> None:
    from fesaug.quickstart import synthesis_grid
    from fesaug.utils.plots import class_grid

    m = read_manifest(colour)
    with Image.open(class_grid(m, tmp_path / "grid.png", per_class=2)) as grid:
        pixels = np.asarray(grid.convert("RGB"), dtype=int)
    assert np.abs(pixels[..., 0] - pixels[..., 2]).max() > 40  # faces drawn in colour, not on a gray map
    fake = m.df.assign(origin="synthetic", parent_id=m.df["sample_id"])  # every face its own "synthetic" twin
    fake.loc[0, "origin"] = "real"
    assert synthesis_grid(dataclass_replace(m, df=fake), tmp_path / "syn.png").is_file()
