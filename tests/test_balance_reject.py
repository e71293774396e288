"""fesaug balance --reject: the rows a person rejected (the review page's rejects.txt) are replaced,
in place, by new candidates from other sources through the same gates; the footer records it;
the same command again changes nothing; an interrupted round resumes; a wrong file is one error
line. A tiny FERSNet trained for one epoch on a tiny demo set stands in for a real generator."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest

from fesaug.audit.report import audit
from fesaug.balance import reject as rejecting
from fesaug.balance.config import BalanceConfig
from fesaug.balance.plan import candidate
from fesaug.balance.run import balance as run_balance
from fesaug.data.demo import make_demo_dataset
from fesaug.data.images import sha256_bytes
from fesaug.data.manifest import read_manifest
from fesaug.synthesis.training import train
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process, copy_beside, kill_at, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 6, "contempt": 3, "disgust": 7, "fear": 4, "happy": 8, "sadness": 4, "surprise": 9}
CONFIG = BalanceConfig(min_confidence=0.0, batch_size=8, synthetic_weight=0.5)
FLAGS = ("--min-confidence", "0", "--batch-size", "8", "--synthetic-weight", "0.5")
balance = functools.partial(run_balance, device="cpu")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), counts=COUNTS, n_subjects=8, size=32, folds=4)


@pytest.fixture(scope="module")
def checkpoint(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train(demo, tmp_path_factory.mktemp("run") / "run", tiny_config(holdout_fold=0, epochs=1)).best_checkpoint


@pytest.fixture(scope="module")
def balanced(demo: Path, checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return balance(demo, checkpoint, tmp_path_factory.mktemp("out") / "balanced", CONFIG).out_dir


@pytest.fixture
def copy(balanced: Path, request: pytest.FixtureRequest) -> Path:
    """A copy of the balanced folder beside it (its relative image root still holds)."""
    return copy_beside(balanced, f"copy-{request.node.name[:40]}")


def _pick(out: Path) -> list[str]:
    """Three synthetic ids: two of the class with the most synthetic rows, one of another."""
    df = read_manifest(out / "manifest.parquet").df
    syn = df[df["origin"] == "synthetic"]
    first, second = syn["label_name"].value_counts().index[:2]
    return [
        *syn.loc[syn["label_name"] == first, "sample_id"].iloc[[0, 2]],
        syn.loc[syn["label_name"] == second, "sample_id"].iloc[0],
    ]


def _rejects(path: Path, ids: list[str]) -> Path:
    # As a person may leave it: a comment, a blank line, an id twice.
    path.write_text("# rejected on the review page\n" + "\n".join([*ids, "", ids[0]]) + "\n")
    return path


def test_replacement_candidates_are_new_inputs_from_other_sources() -> None:
    order, need, attempts = [10, 11, 12, 13, 14], 3, 2
    used = {candidate(order, need, s, a) for s in range(need) for a in range(attempts)}  # the original run's
    cands, after = rejecting.replacement_candidates(order, {11}, need * attempts, n=2, attempts=3)
    flat = [c for slot in cands for c in slot]
    assert len(flat) == len(set(flat)) == 6 and not set(flat) & used
    assert all(c.source != 11 for c in flat)
    again, _ = rejecting.replacement_candidates(order, {11, 12}, after, n=1, attempts=2)  # a later round goes on
    assert not {c for slot in again for c in slot} & (used | set(flat))
    with pytest.raises(FesaugError, match="no source is left for 'fear'"):
        rejecting.replacement_candidates(order, set(order), 0, n=1, attempts=1, cls="fear")


def test_reject_replaces_exactly_the_listed_rows_in_place_from_other_sources(
    demo: Path, checkpoint: Path, copy: Path, tmp_path: Path
) -> None:
    before = read_manifest(copy / "manifest.parquet")
    ids = _pick(copy)
    result = balance(demo, checkpoint, copy, CONFIG, reject=_rejects(tmp_path / "rejects.txt", ids))
    after = read_manifest(copy / "manifest.parquet")
    old, new = before.df.set_index("sample_id"), after.df
    assert len(new) == len(old) and not set(ids) & set(new["sample_id"])
    fresh = new[new["replaces"].notna()]
    assert sorted(fresh["replaces"]) == sorted(ids)
    # In place: every other row is unchanged and where it was; each replacement where its rejected row was.
    expected = [r if r not in ids else None for r in before.df["sample_id"]]
    assert [None if p else s for s, p in zip(new["sample_id"], new["replaces"].notna())] == expected
    assert (new["replaces"].fillna(new["sample_id"]).tolist()) == before.df["sample_id"].tolist()
    rejected_parents = {(old.at[i, "label_name"], old.at[i, "parent_id"]) for i in ids}
    for _, row in fresh.iterrows():
        was = old.loc[row["replaces"]]
        assert row["label_name"] == was["label_name"] and row["sample_id"] not in old.index
        assert (row["label_name"], row["parent_id"]) not in rejected_parents  # another source
        i = int(np.flatnonzero(new["sample_id"] == row["sample_id"])[0])
        assert sha256_bytes(after.image_bytes(i)) == row["sha256"] and row["weight"] == 0.5
    assert not any((copy / "images" / old.at[i, "label_name"] / f"{i}.png").exists() for i in ids)
    assert not (copy / ".fesaug-balance").exists()
    # Weights still make each class's target; the audit finds nothing; footer and card say what happened.
    assert after.meta["balance"]["weighted"] == before.meta["balance"]["weighted"]
    assert audit(copy / "manifest.parquet").problems == []
    run = after.meta["balance"]
    assert sum(run["rejected_by_person"].values()) == 3 and result.rejected_by_person == run["rejected_by_person"]
    (round_,) = run["rejections"]
    assert round_["ids"] == [i for i in before.df["sample_id"] if i in ids]
    assert set(round_["replaced_by"].values()) == set(fresh["sample_id"])
    assert round_["provenance"]["tool"] == "balance --reject"
    assert "Reviewed by a person: 3 synthetic face(s) rejected" in (copy / "README.md").read_text()


def test_the_same_command_again_changes_nothing_and_a_second_round_goes_on(
    demo: Path, checkpoint: Path, copy: Path, tmp_path: Path
) -> None:
    ids = _pick(copy)[:2]
    first = balance(demo, checkpoint, copy, CONFIG, reject=_rejects(tmp_path / "r1.txt", ids))
    manifest = (copy / "manifest.parquet").read_bytes()
    again = balance(demo, checkpoint, copy, CONFIG, reject=_rejects(tmp_path / "r1.txt", ids))
    assert again.rejection["already_done"] and (copy / "manifest.parquet").read_bytes() == manifest
    replacement = first.rejection["replaced_by"][ids[0]]
    second = balance(demo, checkpoint, copy, CONFIG, reject=_rejects(tmp_path / "r2.txt", [replacement]))
    m = read_manifest(copy / "manifest.parquet")
    rounds = m.meta["balance"]["rejections"]
    assert [r["round"] for r in rounds] == [1, 2] and second.rejection["ids"] == [replacement]
    newest = second.rejection["replaced_by"][replacement]
    row = m.df.set_index("sample_id").loc[newest]
    assert row["replaces"] == replacement
    # Neither the first nor the second rejected face's parent is used again for the class.
    assert row["parent_id"] not in {
        p for r in rounds for p, c in zip(r["parents"], r["classes"]) if c == row["label_name"]
    }
    assert int(newest.rsplit("-", 1)[1]) > int(replacement.rsplit("-", 1)[1])  # a new slot, a new id
    assert sum(m.meta["balance"]["rejected_by_person"].values()) == 3


def test_an_interrupted_round_resumes_to_the_same_result(
    demo: Path, checkpoint: Path, balanced: Path, tmp_path: Path
) -> None:
    whole, killed = copy_beside(balanced, "whole"), copy_beside(balanced, "killed")
    ids = _pick(balanced)
    rejects = _rejects(tmp_path / "rejects.txt", ids)
    done = balance(demo, checkpoint, whole, CONFIG, reject=rejects)
    flags = ("balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", killed, *FLAGS, "--device", "cpu")
    kill_at("write:manifest.parquet", *flags, "--reject", rejects)  # every chunk done, the manifest not yet
    assert read_manifest(killed / "manifest.parquet").df["sample_id"].isin(ids).sum() == 3  # unchanged so far
    resumed = balance(demo, checkpoint, killed, CONFIG, reject=rejects)
    assert resumed.resumed_chunks == 1

    def replacements(out: Path) -> list[tuple]:
        df = read_manifest(out / "manifest.parquet").df
        return sorted(zip(df["replaces"].dropna(), df.loc[df["replaces"].notna(), "sha256"]))

    assert replacements(killed) == replacements(whole) and done.rejection["ids"] == resumed.rejection["ids"]


def test_a_wrong_rejects_file_is_one_error_line_and_changes_nothing(
    demo: Path, checkpoint: Path, copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    df = read_manifest(copy / "manifest.parquet").df
    synthetic = df.loc[df["origin"] == "synthetic", "sample_id"].iloc[0]
    real = df.loc[df["origin"] == "real", "sample_id"].tolist()[:2]
    files = {
        "unknown": ("syn-nothing-like-it\n" + synthetic, "1 id(s) are not rows of"),
        "real": ("\n".join([synthetic, *real]), "2 id(s) are real images"),
        "empty": ("# nothing marked\n\n", "lists no sample ids"),
    }
    manifest = (copy / "manifest.parquet").read_bytes()
    base = ("balance", "--manifest", demo, "--checkpoint", checkpoint, *FLAGS, "--device", "cpu")
    cases = [((*base, "--out", copy, "--reject", tmp_path / "missing.txt"), "cannot be read")]
    for name, (text, message) in files.items():
        (tmp_path / f"{name}.txt").write_text(text)
        cases.append(((*base, "--out", copy, "--reject", tmp_path / f"{name}.txt"), message))
    (tmp_path / "one.txt").write_text(synthetic)
    cases += [
        ((*base, "--out", tmp_path / "never-balanced", "--reject", tmp_path / "one.txt"), "holds no finished"),
        ((*base, "--seed", "3", "--out", copy, "--reject", tmp_path / "one.txt"), "balanced with other settings"),
    ]
    for args, message in cases:
        code, _, err = cli_in_process(capsys, *args)
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and lines[0].startswith("Error:") and message in lines[0], (args, err)
    assert (copy / "manifest.parquet").read_bytes() == manifest and not (copy / ".fesaug-balance").exists()


def test_cli_reports_the_round(
    demo: Path, checkpoint: Path, copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    ids = _pick(copy)
    rejects = _rejects(tmp_path / "rejects.txt", ids)
    args = ("balance", "--manifest", demo, "--checkpoint", checkpoint, "--out", copy, *FLAGS, "--device", "cpu")
    code, out, err = cli_in_process(capsys, *args, "--reject", rejects)
    assert code == 0, err
    assert "replaced 3 of 3 face(s) rejected by a person" in out and "3 rejected over 1 round(s)" in out
    code, out, _ = cli_in_process(capsys, *args, "--reject", rejects)
    assert code == 0 and "already replaced these 3 face(s); nothing to do" in out
