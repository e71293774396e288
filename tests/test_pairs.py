"""Same-subject pairs as geometry: the displacement that moves a source onto its partner."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from fesaug.data.demo import counterfactual, make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.data.pairs import pair_flow
from fesaug.synthesis.training import train
from fesaug.utils.errors import FesaugError

pytestmark = pytest.mark.usefixtures("one_thread")


def _blob(x: int) -> np.ndarray:
    image = np.full((48, 48), 90, np.uint8)
    cv2.circle(image, (x, 24), 5, 210, -1)
    return cv2.GaussianBlur(image, (5, 5), 1.2)


def test_a_moved_feature_gives_the_backward_displacement_where_it_changed() -> None:
    flow, weight = pair_flow(_blob(20), _blob(23))  # the feature moved 3 px right
    moved = weight > 0.5
    assert moved.sum() > 30 and weight[:5, :5].max() == 0  # weight only where the face changed
    # The output at p reads the source at p + flow(p): 3 px to the left.
    assert flow[moved, 0].mean() == pytest.approx(-3.0, abs=0.5) and abs(flow[moved, 1].mean()) < 0.3


def test_warping_the_source_by_it_comes_close_to_the_partner(tmp_path) -> None:
    m = read_manifest(make_demo_dataset(tmp_path / "demo", counts={"happy": 6, "surprise": 6}, n_subjects=6, folds=2))
    errors = []
    for i in range(len(m.df)):
        row = m.df.iloc[i]
        source = np.asarray(m.open_image(i))
        target = counterfactual(row, "surprise" if row["label_name"] == "happy" else "happy")
        flow, _ = pair_flow(source, target)
        ys, xs = np.mgrid[0:64, 0:64].astype(np.float32)
        warped = cv2.remap(source.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
        changed = np.abs(target.astype(float) - source) > 10
        errors.append((np.abs(warped - target)[changed].mean(), np.abs(source.astype(float) - target)[changed].mean()))
    warped_error, copy_error = np.mean(errors, axis=0)
    assert warped_error < 0.7 * copy_error  # most of an expression change is geometry


def test_paired_items_carry_the_displacement_of_their_augmented_pair(small_demo) -> None:
    from fesaug.data.datasets import ManifestDataset, PairedTargetDataset

    base = ManifestDataset(small_demo, image_size=32)
    common = {"paired_prob": 0.7, "augment": True, "shift": 0.1, "rotation": 5.0, "seed": 3, "align_pairs": True}
    data = PairedTargetDataset(base, pair_flow=True, **common, pair_threshold=10.0)
    plain = PairedTargetDataset(base, **common, pair_threshold=10.0)
    paired = unpaired = 0
    for i in range(len(data)):
        item, same = data[i], plain[i]
        assert torch.equal(item["source"], same["source"]) and torch.equal(item["target"], same["target"])
        assert item["flow"].shape == (2, 32, 32) and item["flow_weight"].shape == (32, 32)
        if item["paired"]:  # the flow of exactly the images the generator is shown
            flow, weight = pair_flow(item["source"][0].numpy(), item["target"][0].numpy(), 10.0)
            assert torch.equal(item["flow"], torch.from_numpy(flow).permute(2, 0, 1))
            assert torch.equal(item["flow_weight"], torch.from_numpy(weight))
            paired += 1
        else:
            assert not item["flow"].any() and not item["flow_weight"].any()
            unpaired += 1
    assert paired and unpaired
    with pytest.raises(FesaugError, match="pair_flow needs align_pairs"):
        PairedTargetDataset(base, paired_prob=0.5, augment=False, pair_flow=True)


def test_the_flow_target_loss_is_the_weighted_displacement_error_on_paired_rows() -> None:
    from fesaug.synthesis.step import _flow_target

    target = torch.zeros(2, 2, 4, 4)
    target[:, 0] = 3.0  # every pixel reads the source 3 px to the right
    weight = torch.zeros(2, 4, 4)
    weight[:, :2] = 1.0  # only the top half moved
    predicted = torch.zeros(2, 2, 4, 4)
    predicted[:, 0, :2] = 1.0  # the top half moved 1 px of 3; the bottom half's error does not count
    predicted[:, 1, 2:] = 9.0
    batch = {"flow": target, "flow_weight": weight}
    assert float(_flow_target(predicted, batch, torch.tensor([1.0, 1.0]))) == pytest.approx(2.0)
    predicted[1] = 50.0  # an unpaired row's flow is free
    assert float(_flow_target(predicted, batch, torch.tensor([1.0, 0.0]))) == pytest.approx(2.0)
    assert float(_flow_target(None, batch, torch.tensor([1.0, 0.0]))) == 0.0


def test_a_generator_trains_with_the_flow_target_and_configs_without_a_warp_are_refused(small_demo, tmp_path) -> None:
    from .conftest import tiny_config

    train(small_demo, tmp_path / "run", tiny_config(epochs=1, loss={"flow_target": 1.0}, device="cpu"))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["loss_flow_target"] > 0 and np.isfinite(rows[-1]["loss_g_total"])
    with pytest.raises(FesaugError, match="loss.flow_target needs registered pairs"):
        tiny_config(loss={"flow_target": 1.0}, align_pairs=False)
    with pytest.raises(FesaugError, match="output 'attention'"):
        tiny_config(loss={"flow_target": 1.0}, model={"output": "attention"})
