"""An evaluation's output folder ``DIR``: its recorded settings, the split folders in it, and the
generators another evaluation lends it (``--generators-from``)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fesaug.data.manifest import Manifest
from fesaug.evaluate.config import EvaluateConfig
from fesaug.evaluate.records import EVALUATE
from fesaug.evaluate.truth import check_truth_possible
from fesaug.synthesis.checkpoint import load_checkpoint
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import atomic_write_text, remove_stale_temporaries
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import changed_settings_text

log = logging.getLogger(__name__)

# The cross-dataset mode's folders and files in DIR: its one split, and the test folder as ingested.
CROSS_FOLDER = "cross"
TEST_MANIFEST = "test-manifest.parquet"
# Written by evaluate() (besides the split folders); anything else in DIR is the user's and is never deleted.
OUTPUTS = ("evaluate.json", "results.json", "report.md", "recall.png", TEST_MANIFEST)
# What evaluate.json records of a run, compared on resumption (``test_data`` only in the cross-dataset mode).
RECORDED = ("manifest_sha256", "config", "test_data")
# What a fold's generator depends on, of the recorded settings (EvaluateConfig.key()); with
# --expression-judge also the downstream recipe, which trains the judge the generator learns from.
GENERATOR_KEYS = ("generator", "val_fraction", "seed", "expression_judge")


def fold_number(path: Path) -> int | None:
    """``k`` for a split folder ``fold-k`` in DIR, else None."""
    name = path.name
    return int(name[5:]) if name.startswith("fold-") and name[5:].isdigit() and path.is_dir() else None


def is_split_folder(path: Path) -> bool:
    """Whether ``path`` is one of evaluate's split folders in DIR (``fold-k``, ``cross``)."""
    return path.is_dir() and (path.name == CROSS_FOLDER or fold_number(path) is not None)


def check_input(m: Manifest, config: EvaluateConfig) -> None:
    """One clear error, before any work, unless ``m`` can be evaluated with ``config``: real rows
    only, the demo set's stored faces when a truth condition is asked for, and an AU model
    (``--au-check``) trained on images like ``m``'s (gray or colour)."""
    synthetic = int((m.df["origin"] != "real").sum())
    if synthetic:
        raise FesaugError(
            f"{m.path} has {synthetic} synthetic row(s); evaluate the manifest of real images "
            "(fesaug evaluate makes its own synthetic images per fold)"
        )
    if {"truth", "truth-half"} & set(config.conditions):
        check_truth_possible(m, config.balance)
    if config.au_checkpoint:
        from fesaug.multitask.training import load_emotion_au  # torch models: only when asked for

        m.check_channels(load_emotion_au(config.au_checkpoint).channels, f"the --au-check model {config.au_checkpoint}")


def read_settings(path: Path) -> dict[str, Any]:
    """An ``evaluate.json`` at today's schema version."""
    return EVALUATE.read(json.loads(path.read_text()), where=str(path))


def prepare_out_dir(
    out: Path,
    record: dict[str, Any],
    overwrite: bool,
    held: Sequence[Path],
    others: Sequence[Path] = (),
    paths: dict[str, str] | None = None,
) -> None:
    """Check DIR's recorded settings (``record``, :data:`RECORDED`) against this run's; with
    ``overwrite`` and other settings, empty it first, which needs the locks of every split folder
    this run does not hold (``held``) and of the ``others`` folds, which may not exist yet (no run
    may be computing one under the old settings). ``paths``: the data's paths, recorded beside
    the settings for the reader, not compared (a moved manifest is the same data)."""
    settings = out / "evaluate.json"
    for name in OUTPUTS:
        remove_stale_temporaries(out, name)
    ours = [p for p in out.iterdir() if p.name in OUTPUTS or is_split_folder(p)] if out.is_dir() else []
    if ours and not settings.exists():
        raise FesaugError(f"{out} holds files fesaug evaluate did not record ({ours[0].name}); choose a new --out")
    if settings.exists():
        previous = read_settings(settings)
        shown = changed_settings_text({k: previous.get(k) for k in RECORDED}, {k: record.get(k) for k in RECORDED})
        if not shown:
            return  # resume: finished pieces are reused
        if not overwrite:
            raise FesaugError(
                f"{out} holds an evaluation with other settings or another manifest ({shown}, recorded -> "
                "now); run it with the recorded settings to finish it, choose a new --out, or pass --overwrite to "
                "start over"
            )
        with contextlib.ExitStack() as locks:
            for folder in dict.fromkeys([*others, *(p for p in ours if is_split_folder(p) and p not in held)]):
                locks.enter_context(output_lock(folder))
            for p in ours:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    written = EVALUATE.stamp({**record, **(paths or {}), "provenance": provenance("evaluate", record["config"])})
    atomic_write_text(settings, json.dumps(written, indent=2, sort_keys=True))


def check_generator_source(
    source: Path, out: Path, record: dict[str, Any], config: EvaluateConfig, folds: Sequence[int]
) -> None:
    """Refuse ``source`` as ``--generators-from`` unless it is another evaluation of the same
    manifest whose generators were trained with this run's settings and finished for ``folds``."""
    if source.resolve() == out.resolve():
        raise UsageError(f"--generators-from {source} is --out itself; name the evaluation whose generators to reuse")
    settings = source / "evaluate.json"
    if not settings.is_file():
        raise FesaugError(f"--generators-from {source}: no evaluate.json there; name a folder fesaug evaluate wrote")
    theirs = read_settings(settings)
    if theirs.get("manifest_sha256") != record["manifest_sha256"]:
        raise FesaugError(
            f"--generators-from {source} evaluated another manifest (sha256 "
            f"{str(theirs.get('manifest_sha256'))[:12]}, this one {record['manifest_sha256'][:12]}); "
            "its generators saw other data, so reuse one of this manifest"
        )
    their_config, ours = theirs.get("config") or {}, record["config"]
    keys = GENERATOR_KEYS + (("downstream",) if config.expression_judge else ())
    shown = changed_settings_text({k: their_config.get(k) for k in keys}, {k: ours.get(k) for k in keys})
    if shown:
        raise FesaugError(
            f"--generators-from {source} trained its generators with other settings ({shown}); "
            "give this run the same ones (--preset, --generator-config, --generator-epochs, "
            "--generator-batch-size, --val-fraction, --seed, --expression-judge) or drop --generators-from"
        )
    for k in folds:
        last = source / f"fold-{k}" / "fersnet" / "checkpoints" / "last.pt"
        if not last.is_file() or load_checkpoint(last)["epoch"] < config.generator.epochs:
            raise FesaugError(
                f"--generators-from {source}: fold {k} has no finished generator (fold-{k}/fersnet); "
                f"finish it there (its command again, with --folds {k}) or leave fold {k} out of --folds"
            )


def copy_generator(source_fold: Path, fold: Path) -> None:
    """Copy ``source_fold``'s FERSNet run into ``fold`` unless ``fold`` has one; under the source
    fold's lock (no run is writing it), staged beside the destination and renamed into place."""
    target = fold / "fersnet"
    if target.exists():
        return
    fold.mkdir(parents=True, exist_ok=True)
    stage = fold / f".fersnet.{os.getpid()}.tmp"
    with output_lock(source_fold):
        shutil.copytree(source_fold / "fersnet", stage)
    os.replace(stage, target)
    log.info("%s: generator copied from %s", fold.name, source_fold)
