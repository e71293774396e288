"""fesaug.data's samplers and datasets: WeightedDistributedSampler (reproducible epochs, disjoint
shards of one weighted draw, also under ``torchrun --nproc-per-node 2``), ManifestDataset with
torchvision v2 transforms, and labels and weights read without decoding an image."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from fesaug.data import ManifestDataset, WeightedDistributedSampler, datasets
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.utils.errors import FesaugError, InvalidValue

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 6, "contempt": 4, "disgust": 7, "fear": 4, "happy": 9, "sadness": 5, "surprise": 10}


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), counts=COUNTS, n_subjects=8, size=32, folds=4)


@pytest.fixture(scope="module")
def weighted(demo: Path) -> Path:
    """The demo manifest with a weight column: each class's weights sum to 1 (classes drawn equally)."""
    m = read_manifest(demo)
    labels = m.df["label"].to_numpy(dtype=np.int64)
    df = m.df.assign(weight=1.0 / np.bincount(labels)[labels])
    return write_manifest(df, demo.with_name("weighted.parquet"), classes=m.classes, image_root=m.meta["image_root"])


# ---------------------------------------------------------------------------- the sampler


def test_shards_are_disjoint_slices_of_one_draw_of_equal_length() -> None:
    weights = np.arange(1, 11, dtype=float)
    shards = [list(WeightedDistributedSampler(weights, 100, num_replicas=3, rank=r, seed=5)) for r in range(3)]
    assert [len(s) for s in shards] == [34, 34, 34]  # ceil(100 / 3) each: every rank takes as many steps
    draw = WeightedDistributedSampler(weights, 100, num_replicas=3, rank=0, seed=5).global_draw().tolist()
    assert len(draw) == 102 and [draw[r::3] for r in range(3)] == shards  # positions split, nothing shared
    # The same epoch on any number of ranks is one draw of the same law: a rank count changes the split only.
    alone = WeightedDistributedSampler(weights, 102, num_replicas=1, rank=0, seed=5)
    assert list(alone) == draw


def test_epochs_are_reproducible_and_differ() -> None:
    a = WeightedDistributedSampler([1.0] * 50, 40, num_replicas=2, rank=1, seed=3)
    b = WeightedDistributedSampler([1.0] * 50, 40, num_replicas=2, rank=1, seed=3)
    a.set_epoch(4)
    b.set_epoch(4)
    torch.manual_seed(99)  # the global generator plays no part
    assert list(a) == list(b) == list(a)
    b.set_epoch(5)
    assert list(a) != list(b)
    assert list(a) != list(WeightedDistributedSampler([1.0] * 50, 40, num_replicas=2, rank=1, seed=4, replacement=True))


def test_draws_follow_the_weights() -> None:
    weights = np.array([0.0, 1.0, 2.0, 5.0])
    draw = WeightedDistributedSampler(weights, 40_000, num_replicas=2, rank=0, seed=0).global_draw().numpy()
    shares = np.bincount(draw, minlength=4) / len(draw)
    assert shares[0] == 0 and np.allclose(shares, weights / weights.sum(), atol=0.01)
    distinct = WeightedDistributedSampler(weights, 3, num_replicas=1, rank=0, replacement=False)
    assert sorted(distinct) == [1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"weights": [1.0, -1.0]}, "finite and >= 0; item 1 has -1.0"),
        ({"weights": [0.0, 0.0]}, "every weight is 0"),
        ({"weights": [[1.0]]}, "one non-empty list of numbers"),
        ({"num_samples": 0}, "num_samples must be a positive whole number"),
        ({"rank": 2}, "rank must lie in 0..1"),
        ({"num_samples": 5, "replacement": False}, "cannot draw 6 distinct indices without replacement from 3"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs: dict, message: str) -> None:
    args = {"weights": [1.0, 2.0, 3.0], "num_samples": 4, "num_replicas": 2, "rank": 0, **kwargs}
    with pytest.raises(InvalidValue, match=message.replace("(", r"\(")) as caught:
        WeightedDistributedSampler(**args)
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, FesaugError)


@pytest.mark.slow
def test_two_torchrun_processes_share_one_weighted_draw(weighted: Path, tmp_path: Path) -> None:
    worker = Path(__file__).with_name("ddp_sampler_worker.py")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [*cmd, str(worker), str(weighted), str(tmp_path), "7001"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["world"], r["dist_world"]) for r in ranks] == [(0, 2, 2), (1, 2, 2)]
    data = ManifestDataset(weighted, lazy=True)
    reference = WeightedDistributedSampler(data.weights, 7001, num_replicas=2, rank=0, seed=7)
    for epoch in (0, 1):
        shards = [r["epochs"][epoch] for r in ranks]
        assert len(shards[0]["indices"]) == len(shards[1]["indices"]) == 3501
        reference.set_epoch(epoch)
        draw = reference.global_draw().tolist()
        assert [s["indices"] for s in shards] == [draw[0::2], draw[1::2]]
        # The DataLoader served exactly the sampler's items, and each class about a seventh of them.
        assert all(s["labels"] == data.labels[s["indices"]].tolist() for s in shards)
        per_class = np.bincount(shards[0]["labels"] + shards[1]["labels"], minlength=7)
        assert np.allclose(per_class / per_class.sum(), 1 / 7, atol=0.02)
    assert ranks[0]["epochs"][0]["indices"] != ranks[0]["epochs"][1]["indices"]


# ---------------------------------------------------------------------------- ManifestDataset


def test_torchvision_v2_transforms_apply_to_each_image(demo: Path) -> None:
    plain = ManifestDataset(demo, rows=[0, 1, 2])
    pipeline = v2.Compose(
        [v2.RandomHorizontalFlip(p=1.0), v2.Resize(16, antialias=True), v2.Normalize(mean=[0.5], std=[0.5])]
    )
    data = ManifestDataset(demo, rows=[0, 1, 2], transform=pipeline)
    image, label = data[1]
    assert type(image) is torch.Tensor and image.shape == (1, 16, 16) and label == plain[1][1]
    expected = v2.functional.resize(plain[1][0].flip(-1), [16, 16], antialias=True) * 2 - 1
    assert torch.allclose(image, expected, atol=1e-6)
    crops = ManifestDataset(demo, rows=[0], transform=v2.RandomResizedCrop(24, antialias=True))
    assert crops[0][0].shape == (1, 24, 24)


def test_labels_and_weights_need_no_image(weighted: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager = ManifestDataset(weighted)
    decoded = []
    real_decode = datasets._decode
    monkeypatch.setattr(datasets, "_decode", lambda *a: decoded.append(1) or real_decode(*a))
    lazy = ManifestDataset(weighted, lazy=True)
    assert lazy.get_labels() == eager.labels.tolist() and torch.equal(lazy.weights, eager.weights)
    assert np.array_equal(lazy.class_counts(), list(COUNTS.values())) and not decoded
    # A sampler reads the labels of a dataset whose images are not even there.
    moved = read_manifest(weighted)
    moved.path = tmp_path / "elsewhere" / "manifest.parquet"  # its image root now points at nothing
    gone = ManifestDataset(moved, lazy=True)
    assert gone.get_labels() == eager.labels.tolist()
    with pytest.raises(FesaugError, match="missing or unreadable image file"):
        gone[0]
    decoded.clear()
    # Decoded once, on first use, to the same pixels as an eager dataset.
    assert torch.equal(lazy[3][0], eager[3][0]) and torch.equal(lazy.pixels, eager.pixels) and len(decoded) == 1
