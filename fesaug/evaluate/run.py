"""``fesaug evaluate``'s entry point: check the input and ``DIR``, lock the folds, run each fold
(:func:`fesaug.evaluate.runner.run_fold`) and summarise them (:mod:`fesaug.evaluate.aggregate`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import read_manifest
from fesaug.data.splits import check_holdout_folds, manifest_folds
from fesaug.evaluate.aggregate import aggregate, aggregate_cross
from fesaug.evaluate.config import EvaluateConfig, EvaluateResult
from fesaug.evaluate.cross_dataset import cross_split, read_test_data
from fesaug.evaluate.fold import Fold
from fesaug.evaluate.outdir import (
    CROSS_FOLDER,
    TEST_MANIFEST,
    check_generator_source,
    check_input,
    copy_generator,
    prepare_out_dir,
)
from fesaug.evaluate.runner import run_fold
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import check_out_folder, file_sha256, remove_stale_temporaries
from fesaug.utils.locking import output_lock
from fesaug.utils.runlog import jsonable

log = logging.getLogger(__name__)

# How long a run waits for another one sharing DIR to finish reading or writing DIR's own files
# (checking the settings, aggregating: seconds).
SHARED_FILES_WAIT_S = 120.0


def evaluate(
    manifest: str | Path,
    out_dir: str | Path,
    config: EvaluateConfig | None = None,
    *,
    folds: Sequence[int] | None = None,
    overwrite: bool = False,
    test_manifest: str | Path | None = None,
    test_subject_pattern: str | None = None,
    generators_from: str | Path | None = None,
) -> EvaluateResult:
    """Run the protocol of :mod:`fesaug.evaluate` on ``folds`` (default: every fold of the manifest).

    ``test_manifest``: instead, train on all of ``manifest`` and test on this other dataset (a
    manifest, or a folder of class folders whose subject ids ``test_subject_pattern`` reads from
    the file names): the cross-dataset protocol of :mod:`fesaug.evaluate`.

    ``generators_from``: another evaluation folder of the same manifest and generator settings;
    each fold's finished FERSNet (``fold-k/fersnet``) is copied from there instead of trained
    again, so downstream recipes or balance settings can be compared on the same generators.
    Everything after the generator (balancing, every condition) is computed here."""
    config = config or EvaluateConfig()
    out = Path(out_dir)
    _check_mode(folds, test_manifest, test_subject_pattern, generators_from)
    if test_manifest is not None:
        return evaluate_cross(
            manifest, test_manifest, out, config, overwrite=overwrite, subject_pattern=test_subject_pattern
        )
    m = read_manifest(manifest)
    check_input(m, config)
    present = manifest_folds(m)
    if len(present) < 2:
        raise FesaugError(
            f"{m.path} has {len(present)} fold(s); the protocol needs subject-independent folds: "
            f"re-create it with `fesaug ingest ... --folds 10`, or test on another dataset with --test-manifest"
        )
    chosen = present if folds is None else sorted({int(f) for f in folds})
    check_holdout_folds(chosen, m, option="--folds", error=UsageError)
    check_out_folder(out, "for the evaluation")
    record = {"manifest_sha256": file_sha256(m.path), "config": jsonable(config.key())}
    if generators_from is not None:
        check_generator_source(Path(generators_from), out, record, config, chosen)
    fold_locks = {k: contextlib.ExitStack() for k in chosen}
    with contextlib.ExitStack() as held:
        # Processes may share DIR, each with its own folds: a fold is locked until it is done (then
        # another run may read it, e.g. reuse its generator), DIR's own files (the settings, the
        # summary) only while they are read or written.
        for lock in fold_locks.values():
            held.enter_context(lock)
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            for k in chosen:
                fold_locks[k].enter_context(output_lock(out / f"fold-{k}"))
                for folder in (out / f"fold-{k}", out / f"fold-{k}" / "seeds"):  # of writes a kill -9 stopped
                    remove_stale_temporaries(folder)
            paths = {"manifest": str(m.path)} | ({"generators_from": str(generators_from)} if generators_from else {})
            prepare_out_dir(
                out,
                record,
                overwrite,
                held=[out / f"fold-{k}" for k in chosen],
                others=[out / f"fold-{k}" for k in present if k not in chosen],
                paths=paths,
            )
            if generators_from is not None:
                for k in chosen:
                    copy_generator(Path(generators_from) / f"fold-{k}", out / f"fold-{k}")
        # Decoded on first use: a run whose folds are all cached only aggregates.
        pixels = functools.cache(lambda: ManifestDataset(m, image_size=config.downstream.image_size).pixels)
        for k in chosen:
            start = time.perf_counter()
            run_fold(Fold(m, pixels, k, out / f"fold-{k}", config))
            fold_locks[k].close()
            log.info("fold %d done in %.0f s", k, time.perf_counter() - start)
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            results = aggregate(out, m, config)
    return EvaluateResult(out, results)


def _check_mode(
    folds: Sequence[int] | None,
    test_manifest: str | Path | None,
    test_subject_pattern: str | None,
    generators_from: str | Path | None,
) -> None:
    """The options that belong to one of the two protocols only."""
    if test_manifest is not None and folds is not None:
        raise UsageError(
            "--folds chooses test folds of --manifest, but with --test-manifest all of --manifest "
            "trains and the other dataset tests; drop --folds"
        )
    if test_manifest is not None and generators_from is not None:
        raise UsageError(
            "--generators-from reuses the generators of a k-fold evaluation; with --test-manifest "
            "the generator trains on all of --manifest, so drop --generators-from"
        )
    if test_manifest is None and test_subject_pattern is not None:
        raise UsageError(
            "--test-subject-pattern reads the subject ids of a --test-manifest folder; pass --test-manifest too"
        )


def evaluate_cross(
    manifest: str | Path,
    test: str | Path,
    out: Path,
    config: EvaluateConfig,
    *,
    overwrite: bool,
    subject_pattern: str | None,
) -> EvaluateResult:
    """Train on all of ``manifest`` (A), test on ``test`` (B): one split, checked and joined by
    :mod:`fesaug.evaluate.cross_dataset`, cached in ``DIR/cross/`` and run as a test fold is."""
    a = read_manifest(manifest)
    check_input(a, config)
    check_out_folder(out, "for the evaluation")
    folder = out / CROSS_FOLDER
    with contextlib.ExitStack() as held:
        data = held.enter_context(read_test_data(test, subject_pattern))
        split = cross_split(a, data)  # every check before DIR is touched
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            held.enter_context(output_lock(folder))
            for f in (folder, folder / "seeds"):  # of writes a kill -9 stopped
                remove_stale_temporaries(f)
            record = {
                "manifest_sha256": file_sha256(a.path),
                "config": jsonable(config.key()),
                "test_data": data.record(),
            }
            prepare_out_dir(
                out,
                record,
                overwrite,
                held=[folder],
                paths={"manifest": str(a.path), "test_manifest": str(data.source)},
            )
            split = dataclasses.replace(split, test=data.keep_at(out / TEST_MANIFEST))
            if not (folder / "input.parquet").exists():  # evaluate.json vouches for a cached one
                split.write(folder / "input.parquet")
        m = read_manifest(folder / "input.parquet")
        pixels = functools.cache(lambda: ManifestDataset(m, image_size=config.downstream.image_size).pixels)
        start = time.perf_counter()
        fold = Fold(m, pixels, None, folder, config, scored=split.scored)
        run_fold(fold)
        log.info("cross-dataset split done in %.0f s", time.perf_counter() - start)
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            results = aggregate_cross(out, split, fold, config)
    return EvaluateResult(out, results)
