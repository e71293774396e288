"""Soft labels for synthetic rows (`fesaug balance --synthetic-labels soft`, the `target_mass`
column) and the judge-margin gate (`--min-judge-margin`)."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import torch

from fesaug.audit.report import audit
from fesaug.balance import BalanceConfig
from fesaug.balance import run as balancing
from fesaug.data.datasets import ManifestDataset
from fesaug.data.export import export
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.utils.errors import FesaugError, UsageError

from .conftest import cli_in_process

pytestmark = pytest.mark.usefixtures("one_thread")

OPEN = {"min_confidence": 0.0, "batch_size": 8}
balance = functools.partial(balancing.balance, device="cpu")


@pytest.fixture(scope="module")
def demo(small_demo: Path) -> Path:
    return small_demo


@pytest.fixture(scope="module")
def checkpoint(small_checkpoint: Path) -> Path:
    return small_checkpoint


@pytest.fixture(scope="module")
def judge(small_judge: Path) -> Path:
    return small_judge


@pytest.fixture(scope="module")
def soft(demo: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    config = BalanceConfig(synthetic_labels="soft", soft_gamma=2.0, intensity=(0.4, 1.4), **OPEN)
    return balance(demo, checkpoint, tmp_path_factory.mktemp("soft") / "b", config).manifest


def test_intensity_soft_labels_are_the_capped_intensity_to_the_gamma(soft: Path) -> None:
    m = read_manifest(soft)
    syn = m.df[m.df["origin"] == "synthetic"]
    expected = np.minimum(syn["intensity"].to_numpy(), 1.0) ** 2.0
    assert np.allclose(syn["target_mass"].to_numpy(), expected, atol=1e-5)
    assert (syn["target_mass"] < 1).any() and (syn["target_mass"] == 1).any()
    assert m.df.loc[m.df["origin"] == "real", "target_mass"].isna().all()
    footer = m.meta["balance"]
    assert footer["synthetic_labels"] == "soft" and footer["soft_gamma"] == 2.0
    assert set(footer["mean_target_mass"]) == set(m.classes)


def test_the_dataset_yields_the_mass_on_the_target_and_the_rest_on_the_source(soft: Path) -> None:
    data = ManifestDataset(soft, soft_labels=True, image_size=32)
    targets = data.targets
    assert torch.allclose(targets.sum(1), torch.ones(len(data)))
    for i in range(len(data)):
        mass = data.target_mass[i]
        assert targets[i, data.labels[i]] == pytest.approx(mass, abs=1e-6)
        if mass < 1:
            assert targets[i, data.source_labels[i]] == pytest.approx(1 - mass, abs=1e-6)
        _, item = data[i]
        assert torch.equal(item, targets[i])
    assert data.has_soft_labels
    hard = ManifestDataset(soft, image_size=32)
    assert isinstance(hard[0][1], int)  # without soft_labels, items keep their class index


def test_an_old_manifest_without_the_column_reads_as_hard_labels(demo: Path) -> None:
    data = ManifestDataset(demo, soft_labels=True)
    assert not data.has_soft_labels
    assert torch.equal(data.targets, torch.nn.functional.one_hot(torch.from_numpy(data.labels), 7).float())
    assert all(c.label_mass is None for c in audit(demo, check_images=False).classes.values())


def test_export_audit_and_card_show_the_soft_labels(soft: Path, tmp_path: Path) -> None:
    m = read_manifest(soft)
    report = audit(soft, check_images=False)
    counted = m.df[m.balanced_rows()]  # the audit counts the balanced rows; the held-out fold apart
    syn = counted[counted["origin"] == "synthetic"]
    for k, c in enumerate(m.classes):
        mine = counted[counted["label"] == k]
        received = (
            len(mine[mine["origin"] == "real"]) + mine["target_mass"].fillna(1).loc[mine["origin"] != "real"].sum()
        )
        given_away = (1 - syn.loc[syn["source_label"] == k, "target_mass"]).sum()
        assert report.classes[c].label_mass == pytest.approx(received + given_away, abs=1e-3)
    assert "| label mass" not in (soft.parent / "README.md").read_text()
    assert (
        "Soft labels: each synthetic image puts a share of its label on its target"
        in (soft.parent / "README.md").read_text()
    )
    out = export(soft, tmp_path / "exported").out
    with open(out / "soft_labels.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == int((m.df["target_mass"] < 1).sum())
    assert all(0 <= float(r["target_mass"]) < 1 and r["source_label"] in m.classes for r in rows)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.assign(target_mass=np.where(df["origin"] == "synthetic", 1.5, np.nan)), "must lie in"),
        (lambda df: df.assign(target_mass=np.where(df["origin"] == "real", 0.5, np.nan)), "only synthetic rows"),
        (
            lambda df: df.assign(
                target_mass=np.where(df["origin"] == "synthetic", 0.5, np.nan),
                source_label=None,
            ),
            "no source_label",
        ),
    ],
)
def test_the_column_is_validated(soft: Path, tmp_path: Path, change, message: str) -> None:
    m = read_manifest(soft)
    with pytest.raises(FesaugError, match=message):
        write_manifest(change(m.df.copy()), tmp_path / "bad.parquet", classes=m.classes, image_root=str(m.image_root))
        read_manifest(tmp_path / "bad.parquet")


def test_judge_soft_labels_and_the_margin_gate(demo: Path, checkpoint: Path, judge: Path, tmp_path: Path) -> None:
    from fesaug.data.datasets import resize_pixels
    from fesaug.evaluate.downstream import load_classifier, predict_proba

    config = BalanceConfig(
        synthetic_labels="soft",
        soft_label_source="judge",
        judge_checkpoint=str(judge),
        min_judge_confidence=0.0,
        min_judge_margin=-0.2,
        **OPEN,
    )
    m = read_manifest(balance(demo, checkpoint, tmp_path / "b", config).manifest)
    rows = np.flatnonzero((m.df["origin"] == "synthetic").to_numpy())
    syn = m.df.iloc[rows]
    assert (syn["judge_margin"] >= -0.2 - 1e-6).all()
    model, _ = load_classifier(judge, device="cpu")
    probs = predict_proba(model, resize_pixels(ManifestDataset(m, rows=rows).pixels, model.image_size))
    p_t = probs[np.arange(len(rows)), syn["label"].to_numpy()]
    p_s = probs[np.arange(len(rows)), syn["source_label"].to_numpy().astype(int)]
    # Scores come from the images before they were written as PNGs: close, not bit-equal.
    assert np.allclose(syn["judge_margin"], p_t - p_s, atol=0.05)
    assert np.allclose(syn["target_mass"], p_t / (p_t + p_s), atol=0.05)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--synthetic-labels", "maybe"], "--synthetic-labels"),
        (["--synthetic-labels", "soft", "--soft-label-source", "judge"], "--soft-label-source judge"),
        (["--soft-gamma", "0"], "--soft-gamma"),
        (["--min-judge-margin", "0.1"], "--min-judge-margin"),
    ],
)
def test_bad_values_are_one_error_line(
    demo: Path, checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture, flags: list[str], message: str
) -> None:
    code, _, err = cli_in_process(
        capsys, "balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", tmp_path / "o", *flags
    )
    assert code in (1, 2) and err.startswith("Error:") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_config_rules() -> None:
    with pytest.raises(UsageError, match="--soft-label-source judge reads the independent judge"):
        BalanceConfig(synthetic_labels="soft", soft_label_source="judge").check_judge()
    BalanceConfig(synthetic_labels="soft", soft_label_source="judge").check_judge(given=True)  # evaluate --judge
    with pytest.raises(UsageError, match="--min-judge-margin must lie in"):
        BalanceConfig(judge_checkpoint="j.pt", min_judge_margin=2)
