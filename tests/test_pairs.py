"""Same-subject pairs as geometry: the displacement that moves a source onto its partner."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from fesaug.data.demo import counterfactual, make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.data.pairs import pair_flow


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
