"""``fesaug evaluate``: does balancing by synthesis help a downstream FER model? Measured on real data.

The protocol is subject-independent k-fold cross-validation. For each test fold ``k``:

1. **Split.** :func:`fesaug.synthesis.training.split_subjects` holds fold ``k`` out and carves validation
   subjects from the rest. The split is written as ``fold-k/split.parquet`` (the input manifest
   with ``split`` = ``train``/``validation``/``test``), and every model of the fold reads that
   one file, so FERSNet, the balanced data and the downstream classifiers see the same
   subjects in the same roles. Fold ``k`` is used for the final test only; every choice
   (FERSNet checkpoint, downstream epoch) is made on the validation subjects.
2. **Conditions**, each a fresh downstream classifier (:mod:`fesaug.evaluate.downstream`, independent
   of FERSNet, same architecture, schedule, augmentation and seed):

   * ``real``: the real training images;
   * ``fes``: FERSNet trained with fold ``k`` held out (``fold-k/fersnet``), the training
     images balanced with it by :func:`fesaug.balance.run.balance` (``fold-k/balanced``), the
     classifier trained on real + synthetic;
   * ``oversample``: the real training images randomly oversampled to ``fes``'s per-class
     counts (the targets, if ``fes`` is not run) — the baseline a user would try first;
   * ``mixed``: the same per-class counts, each class's shortfall filled half with ``fes``'s
     synthetic images and half with repeats of its real images;
   * ``fersnet``: FERSNet's own FER branch (its validation-selected ``best.pt``), for
     reference against the paper.
3. **Synthesis quality** (:func:`fesaug.evaluate.synthesis_scores.synthesis_quality`): how the
   fold's ``real`` classifier sees the synthetic images, a classifier trained on synthetic images
   only tested on real fold ``k`` (classification accuracy score), Fréchet distance and precision/recall in the
   ``real`` classifier's feature space, a memorisation check, exact scores against the demo
   dataset's counterfactuals, and with an emotion + AU model the AU consistency per target class.

Every step is cached in ``DIR/fold-k/``: an interrupted evaluation resumes at the first missing
piece when run again with the same settings (``DIR/evaluate.json`` records them), and several
processes may each run some ``folds`` into one ``DIR`` (each holds the locks of its folds while it
runs them; a second run of a fold that one holds stops at once, naming it); a run over all folds
then only aggregates. A second ``DIR`` can take the first one's trained generators
(``generators_from``) to compare downstream or balance settings without training them again.
``DIR/results.json``, ``DIR/report.md`` and ``DIR/recall.png`` summarise the folds
present: mean ± std over folds, a paired comparison of ``fes`` with ``real`` and with
``oversample`` (per-fold differences, Wilcoxon signed-rank and paired t tests), and the
:func:`fesaug.evaluate.stats.verdict` those comparisons give.

One downstream training is one draw: its seed (initialisation, batch order, augmentation, the
oversampling draw) moves a fold's macro-F1 by points, as much as the differences measured.
``downstream_seeds`` = n trains every downstream condition n times per fold (seeds ``seed`` …
``seed + n - 1``, extra ones cached in ``fold-k/seeds/``) and averages their test scores per fold
before the comparison over folds; the synthesis report keeps the first seed's ``real`` classifier.

**Cross-dataset** (``test_manifest``): train on all of one dataset (A, the manifest), test on all
of another (B). :mod:`fesaug.evaluate.cross_dataset` checks the pair (B real, no subject or image file in
both, a class in common) and joins it into one input, ``DIR/cross/input.parquet``: A's rows in
split ``train`` (A's folds and splits are not used) and B's rows of the classes A knows in split
``test``. One ``_Fold`` with no held-out fold runs it in ``DIR/cross/``, exactly as a test fold:
validation subjects carved from A's subjects choose every model, FERSNet and the balanced data see
A's training subjects only, B scores. Scores cover the classes both have (A's others are trained,
not tested; B's other rows are left out). With one test set there are no folds to pair: the
downstream seeds are the units (mean ± std over seeds, differences paired by seed). Seeds share
their training and test images, so their spread is training noise, not the variation over
subjects a claim needs: the verdict tests nothing and only says which way the mean went.

This module runs the folds (:func:`evaluate`, one ``_Fold`` per test fold or the one cross-dataset
split) and summarises them (:func:`aggregate`); the statistics are in :mod:`fesaug.evaluate.stats`,
the synthesis scores in :mod:`fesaug.evaluate.synthesis_scores`, the report in :mod:`fesaug.evaluate.report`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fesaug.balance.config import BalanceConfig
from fesaug.balance.run import balance
from fesaug.balance.targets import Targets, resolve_targets
from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import Manifest, read_holdout_names, read_manifest, relative_image_root, write_manifest
from fesaug.data.splits import check_holdout_folds, manifest_folds, split_subjects
from fesaug.evaluate.cross_dataset import CrossSplit, cross_split, read_test_data
from fesaug.evaluate.downstream import (
    DownstreamClassifier,
    DownstreamConfig,
    classification_report,
    fit,
    load_classifier,
    predict_proba,
    random_oversample,
    save_classifier,
)
from fesaug.evaluate.report import EXPRESSION_JUDGE, plot_recall, render_report
from fesaug.evaluate.stats import fold_metric, fold_scores, fold_seconds, mean_std, paired_comparison, verdict
from fesaug.evaluate.synthesis_scores import synthesis_quality, synthesis_summary
from fesaug.judges import resolve_judges
from fesaug.synthesis.checkpoint import load_checkpoint
from fesaug.synthesis.config import DATA_MODEL_FIELDS, TrainConfig, legacy_filled
from fesaug.synthesis.generator import load_generator
from fesaug.synthesis.training import train
from fesaug.utils.devices import resolve_device
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import atomic_write_text, check_out_folder, file_sha256, remove_stale_temporaries
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import changed_settings_text, jsonable, with_defaults

log = logging.getLogger(__name__)

CONDITIONS = ("real", "oversample", "fes", "mixed", "fersnet", "fersnet+fes", "fersnet+oversample")
DEFAULT_CONDITIONS = ("real", "oversample", "fes")
FINE_TUNED = ("fersnet+fes", "fersnet+oversample")
# Paired over folds when both ran: synthesis against its two baselines, and the paper's recipe
# (fine-tuning on synthetic faces) against the FER branch it starts from and against the same
# fine-tuning on repeated real faces (what the synthetic faces add beyond more training).
COMPARISONS = (
    ("fes", "real"),
    ("fes", "oversample"),
    ("mixed", "real"),
    ("mixed", "oversample"),
    ("fersnet+fes", "fersnet"),
    ("fersnet+fes", "fersnet+oversample"),
)
# The cross-dataset mode's folders and files in DIR: its one split, and the test folder as ingested.
CROSS_FOLDER = "cross"
TEST_MANIFEST = "test-manifest.parquet"
# Written by evaluate() (besides the split folders); anything else in DIR is the user's and is never deleted.
OUTPUTS = ("evaluate.json", "results.json", "report.md", "recall.png", TEST_MANIFEST)
# What evaluate.json records of a run, compared on resumption (``test_data`` only in the cross-dataset mode).
RECORDED = ("manifest_sha256", "config", "test_data")
# How long a run waits for another one sharing DIR to finish reading or writing DIR's own files
# (checking the settings, aggregating: seconds).
SHARED_FILES_WAIT_S = 120.0


@dataclass(frozen=True)
class EvaluateConfig:
    """Settings of an evaluation.

    ``downstream``: the classifier every condition trains. ``generator``: FERSNet's training
    recipe for ``fes`` (``holdout_fold``, ``seed`` and ``val_fraction`` are set per fold).
    ``balance``: the balancing run (targets, quality gate); it always balances the fold's
    training subjects. ``val_fraction``: share of training subjects kept for validation.
    ``synthesis``: also score the synthetic images (needs a generator; trains one more
    classifier per fold for the classification accuracy score). ``au_checkpoint``: an emotion +
    AU model (``fesaug train --tasks emotion,au``) for AU consistency per target class.
    ``judge``: also gate the synthetic images with a classifier trained on the fold's real
    training images (``fold-k/judge.pt``, the ``real`` recipe with seed + 1, so the ``real``
    classifier that scores the synthetic images is not the one that chose them).
    ``expression_judge``: FERSNet's expression loss goes through that same judge instead of
    its own FER branch (``TrainConfig.expression_classifier``). ``downstream_seeds``: trainings
    per downstream condition and fold, averaged (module docstring). ``judges``: models trained
    elsewhere that also score the synthetic images (:mod:`fesaug.judges`; default: every one
    installed).
    """

    conditions: tuple[str, ...] = DEFAULT_CONDITIONS
    synthesis: bool = True
    downstream: DownstreamConfig = field(default_factory=DownstreamConfig)
    generator: TrainConfig = field(default_factory=TrainConfig)
    balance: BalanceConfig = field(default_factory=BalanceConfig)
    val_fraction: float = 0.15
    seed: int = 0
    au_checkpoint: str | None = None
    judge: bool = False
    expression_judge: bool = False
    downstream_seeds: int = 1
    judges: tuple[str, ...] = field(default_factory=lambda: resolve_judges("auto"))

    def __post_init__(self) -> None:
        unknown = [c for c in self.conditions if c not in CONDITIONS]
        if unknown or not self.conditions:
            raise UsageError(
                f"--conditions: unknown or no condition(s) {', '.join(unknown) or '(none)'}; "
                f"choose from {', '.join(CONDITIONS)}"
            )
        if len(set(self.conditions)) != len(self.conditions):
            raise UsageError(f"--conditions lists a condition twice: {', '.join(self.conditions)}")
        if self.generator.expression_classifier is not None:
            # One classifier for every fold would have seen each fold's test subjects.
            raise UsageError(
                "the generator config names an expression_classifier; evaluate trains one per fold "
                "with --expression-judge instead"
            )
        if self.downstream_seeds < 1:
            raise UsageError(f"--downstream-seeds must be at least 1, got {self.downstream_seeds}")
        if not 0 < self.val_fraction <= 0.5:
            raise UsageError(f"--val-fraction must lie in (0, 0.5], got {self.val_fraction}")
        resolve_judges(self.judges)  # unknown or not installed: one clear error before any work

    def key(self) -> dict[str, Any]:
        """What cached fold results depend on. Conditions, the synthesis report, the AU model, the
        judges and the number of downstream seeds only choose which pieces are computed, so they
        may change between runs of one DIR. The generator's model is recorded resolved (preset +
        overrides) rather than as its overrides, so a change of the model's defaults is a change
        of settings too."""
        generator = {k: v for k, v in self.generator.to_dict().items() if k != "model"}
        return {
            "downstream": dataclasses.asdict(self.downstream) | {"device": None},
            "generator": generator
            | {"device": None, "num_workers": None, "resolved_model": _model_key(self.generator)},
            "balance": self.balance.to_dict(),
            "val_fraction": self.val_fraction,
            "seed": self.seed,
            "judge": self.judge,
            "expression_judge": self.expression_judge,
        }

    @property
    def needs_generator(self) -> bool:
        return self.synthesis or bool({"fes", "mixed", "fersnet", *FINE_TUNED} & set(self.conditions))


@dataclass
class EvaluateResult:
    out_dir: Path
    results: dict[str, Any]  # the content of results.json

    @property
    def report(self) -> Path:
        return self.out_dir / "report.md"


# --------------------------------------------------------------------------------------------
# the run


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
    """Run the protocol of the module docstring on ``folds`` (default: every fold of the manifest).

    ``test_manifest``: instead, train on all of ``manifest`` and test on this other dataset (a
    manifest, or a folder of class folders whose subject ids ``test_subject_pattern`` reads from
    the file names): the cross-dataset protocol of the module docstring.

    ``generators_from``: another evaluation folder of the same manifest and generator settings;
    each fold's finished FERSNet (``fold-k/fersnet``) is copied from there instead of trained
    again, so downstream recipes or balance settings can be compared on the same generators.
    Everything after the generator (balancing, every condition) is computed here."""
    config = config or EvaluateConfig()
    out = Path(out_dir)
    if test_manifest is not None:
        if folds is not None:
            raise UsageError(
                "--folds chooses test folds of --manifest, but with --test-manifest all of --manifest "
                "trains and the other dataset tests; drop --folds"
            )
        if generators_from is not None:
            raise UsageError(
                "--generators-from reuses the generators of a k-fold evaluation; with --test-manifest "
                "the generator trains on all of --manifest, so drop --generators-from"
            )
        return _evaluate_cross(
            manifest, test_manifest, out, config, overwrite=overwrite, subject_pattern=test_subject_pattern
        )
    if test_subject_pattern is not None:
        raise UsageError(
            "--test-subject-pattern reads the subject ids of a --test-manifest folder; pass --test-manifest too"
        )
    m = read_manifest(manifest)
    _check_real(m)
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
    with contextlib.ExitStack() as held:
        # Processes may share DIR, each with its own folds: a fold is locked for the whole run,
        # DIR's own files (the settings, the summary) only while they are read or written.
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            for k in chosen:
                held.enter_context(output_lock(out / f"fold-{k}"))
                for folder in (out / f"fold-{k}", out / f"fold-{k}" / "seeds"):  # of writes a kill -9 stopped
                    remove_stale_temporaries(folder)
            paths = {"manifest": str(m.path)} | ({"generators_from": str(generators_from)} if generators_from else {})
            _prepare_out_dir(
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
            _Fold(m, pixels, k, out / f"fold-{k}", config).run()
            log.info("fold %d done in %.0f s", k, time.perf_counter() - start)
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            results = aggregate(out, m, config)
    return EvaluateResult(out, results)


def _evaluate_cross(
    manifest: str | Path,
    test: str | Path,
    out: Path,
    config: EvaluateConfig,
    *,
    overwrite: bool,
    subject_pattern: str | None,
) -> EvaluateResult:
    """Train on all of ``manifest`` (A), test on ``test`` (B): one split, checked and joined by
    :mod:`fesaug.evaluate.cross_dataset`, cached in ``DIR/cross/`` and run by the :class:`_Fold` that runs
    a test fold."""
    a = read_manifest(manifest)
    _check_real(a)
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
            _prepare_out_dir(
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
        fold = _Fold(m, pixels, None, folder, config, scored=split.scored)
        fold.run()
        log.info("cross-dataset split done in %.0f s", time.perf_counter() - start)
        with output_lock(out, wait=SHARED_FILES_WAIT_S):
            results = _aggregate_cross(out, split, fold, config)
    return EvaluateResult(out, results)


# The downstream settings added after evaluations were first recorded, as they behaved before:
# an older record without them was made with neither (today's defaults differ).
DOWNSTREAM_BEFORE = {"erasing": 0.0, "label_smoothing": 0.0}
# What a fold's generator depends on, of the recorded settings (EvaluateConfig.key()); with
# --expression-judge also the downstream recipe, which trains the judge the generator learns from.
GENERATOR_KEYS = ("generator", "val_fraction", "seed", "expression_judge")


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
    theirs = json.loads(settings.read_text())
    if theirs.get("manifest_sha256") != record["manifest_sha256"]:
        raise FesaugError(
            f"--generators-from {source} evaluated another manifest (sha256 "
            f"{str(theirs.get('manifest_sha256'))[:12]}, this one {record['manifest_sha256'][:12]}); "
            "its generators saw other data, so reuse one of this manifest"
        )
    their_config, ours = _recorded_key(theirs.get("config") or {}), record["config"]
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


def _check_real(m: Manifest) -> None:
    synthetic = int((m.df["origin"] != "real").sum())
    if synthetic:
        raise FesaugError(
            f"{m.path} has {synthetic} synthetic row(s); evaluate the manifest of real images "
            "(fesaug evaluate makes its own synthetic images per fold)"
        )


def _split_folder(path: Path) -> bool:
    """Whether ``path`` is one of evaluate's split folders in DIR (``fold-k``, ``cross``)."""
    return path.is_dir() and (path.name == CROSS_FOLDER or _fold_number(path) is not None)


def _prepare_out_dir(
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
    ours = [p for p in out.iterdir() if p.name in OUTPUTS or _split_folder(p)] if out.is_dir() else []
    if ours and not settings.exists():
        raise FesaugError(f"{out} holds files fesaug evaluate did not record ({ours[0].name}); choose a new --out")
    if settings.exists():
        previous = json.loads(settings.read_text())
        # A key this version added is missing from an older record; new keys default to the
        # behaviour before they existed, so the default stands in for it.
        if isinstance(previous.get("config"), dict):
            previous["config"] = _recorded_key(previous["config"])
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
            for folder in dict.fromkeys([*others, *(p for p in ours if _split_folder(p) and p not in held)]):
                locks.enter_context(output_lock(folder))
            for p in ours:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    atomic_write_text(
        settings,
        json.dumps(
            {**record, **(paths or {}), "provenance": provenance("evaluate", record["config"])},
            indent=2,
            sort_keys=True,
        ),
    )


def _model_key(generator: TrainConfig) -> dict[str, Any]:
    """The generator's model as resolved from its preset and overrides, less what the data sets."""
    return {k: v for k, v in generator.model_config(num_classes=2).settings().items() if k not in DATA_MODEL_FIELDS}


def _recorded_key(recorded: dict[str, Any]) -> dict[str, Any]:
    """A recorded :meth:`EvaluateConfig.key` as this version writes it: generator keys added
    since mean their behaviour before (:func:`fesaug.synthesis.config.legacy_filled`), a record of
    the model's overrides becomes the model they resolved to then, the balance settings' old
    names for the held-out folds are read as today's, and other new keys mean their defaults."""
    out = dict(recorded)
    if isinstance(out.get("generator"), dict):
        generator = legacy_filled(out["generator"])
        if "resolved_model" not in generator:
            # ``generator["model"]`` already holds the model of its time (legacy_filled).
            generator["resolved_model"] = jsonable(
                _model_key(
                    TrainConfig.from_dict(
                        {k: generator[k] for k in ("preset", "model") if k in generator}, where="evaluate.json"
                    )
                )
            )
        generator.pop("model", None)
        out["generator"] = generator
    if isinstance(out.get("balance"), dict):
        out["balance"] = read_holdout_names(out["balance"])  # exclude_folds of older versions
    if isinstance(out.get("downstream"), dict):
        out["downstream"] = with_defaults(out["downstream"], DOWNSTREAM_BEFORE)
    return with_defaults(out, jsonable(EvaluateConfig().key()))


class _Fold:
    """One split: its conditions and its synthesis report, each cached in ``dir``.

    ``k``: the test fold. None: the input's ``test`` split is the test set and no fold is held
    out (the cross-dataset input, :mod:`fesaug.evaluate.cross_dataset`). ``scored``: the classes the test
    set can score (default all; :func:`fesaug.evaluate.downstream.classification_report`)."""

    def __init__(
        self,
        m: Manifest,
        pixels: Callable[[], torch.Tensor],
        k: int | None,
        folder: Path,
        config: EvaluateConfig,
        scored: Sequence[str] | None = None,
    ) -> None:
        self.m, self._pixels, self.k, self.dir, self.config = m, pixels, k, folder, config
        self.scored = list(scored) if scored is not None else m.classes
        self.name = "cross-dataset" if k is None else f"fold {k}"  # in log lines
        self.labels = m.df["label"].to_numpy(dtype=np.int64)
        split = split_subjects(m, k, config.val_fraction, config.seed)
        self.train_rows, self.val_rows = split.train_rows, split.val_rows
        tested = m.df["split"] == "test" if k is None else (m.df["fold"] == k).fillna(False)
        self.test_rows = np.flatnonzero(tested.to_numpy(dtype=bool))
        self.n_subjects = {"train": len(split.train_subjects), "validation": len(split.val_subjects)}
        self.split_manifest = self._write_split()
        self._balanced_read: Manifest | None = None
        self._balanced_data: dict[int, ManifestDataset] = {}
        self._pixels_by_size: dict[int, torch.Tensor] = {}

    def run(self) -> None:
        conditions = set(self.config.conditions)
        for r in range(self.config.downstream_seeds):  # r: the seed's offset from the configured one
            if "real" in conditions or (self.config.synthesis and r == 0):
                self._condition(
                    "real", lambda: self._fit(self.pixels[self.train_rows], self.labels[self.train_rows], r), r
                )
            if "fes" in conditions:
                self._condition(
                    "fes",
                    lambda: self._fit(
                        self._balanced_train().pixels,
                        self._balanced_train().labels,
                        r,
                        weights=self._balanced_weights(),
                    ),
                    r,
                )
            if "oversample" in conditions:
                self._condition("oversample", lambda: self._oversample(r), r)
            if "mixed" in conditions:
                self._condition("mixed", lambda: self._mixed(r), r)
            for name in FINE_TUNED:
                if name in conditions:
                    self._fersnet_fine_tuned(name, r)
        if "fersnet" in conditions:
            self._fersnet_branch()
        if self.config.synthesis:
            self._synthesis()

    # ---- data

    @property
    def pixels(self) -> torch.Tensor:
        """Every image of the manifest at the downstream size (decoded once, shared by the folds)."""
        return self._pixels()

    def _write_split(self) -> Path:
        path = self.dir / "split.parquet"
        if path.exists():
            return path
        df = self.m.df.copy()
        keep = np.zeros(len(df), dtype=bool)
        keep[np.concatenate([self.train_rows, self.val_rows, self.test_rows])] = True
        split = np.full(len(df), "train", dtype=object)
        split[self.val_rows], split[self.test_rows] = "validation", "test"
        df["split"] = split
        # Rows of the user's own test split outside fold k are neither trained nor tested on.
        df = df[keep].reset_index(drop=True)
        meta = {
            **self.m.inherited_meta(),
            "provenance": provenance("evaluate", {"fold": self.k}),
            "input_provenance": self.m.meta.get("provenance"),
            "evaluation": {
                "input_manifest": str(self.m.path),
                "holdout_fold": self.k,
                "val_fraction": self.config.val_fraction,
                "seed": self.config.seed,
            },
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        return write_manifest(
            df,
            path,
            classes=self.m.classes,
            meta=meta,
            overwrite=True,
            image_root=relative_image_root(path, self.m.image_root),
        )

    def _balanced_manifest(self) -> Manifest:
        if self._balanced_read is None:  # read once per fold: fes and the synthesis report share it
            self._balanced_read = read_manifest(self._balanced())
        return self._balanced_read

    def _pixels_at(self, size: int) -> torch.Tensor:
        """Every image of the manifest at ``size`` (FERSNet's may differ from the downstream one),
        decoded once per fold and size."""
        if size == self.config.downstream.image_size:
            return self.pixels
        if size not in self._pixels_by_size:
            self._pixels_by_size[size] = ManifestDataset(self.m, image_size=size).pixels
        return self._pixels_by_size[size]

    def _balanced_train(self, size: int | None = None) -> ManifestDataset:
        """The balanced training rows (real + synthetic) at ``size`` (default the downstream
        size), decoded once per fold and size: ``fes``, ``mixed`` and ``fersnet+fes`` train on
        them once per seed."""
        size = size or self.config.downstream.image_size
        if size not in self._balanced_data:
            b = self._balanced_manifest()
            rows = np.flatnonzero((b.df["split"] == "train").to_numpy())
            self._balanced_data[size] = ManifestDataset(b, rows=rows, image_size=size)
        return self._balanced_data[size]

    def _balanced_weights(self) -> torch.Tensor | None:
        """The balanced training rows' ``weight`` column, or None when the run wrote none."""
        train = self._balanced_train()
        return train.weights if "weight" in train.manifest.df.columns else None

    def _synthetic(self, image_size: int | None) -> ManifestDataset:
        return ManifestDataset(self._balanced_manifest(), origins=("synthetic",), image_size=image_size)

    # ---- FERSNet and balancing (cached by train() and balance() themselves)

    def _generator_run(self) -> Path:
        run = self.dir / "fersnet"
        cfg = dataclasses.replace(self.config.generator, holdout_fold=self.k, seed=self.config.seed)
        if self.config.expression_judge:
            cfg = dataclasses.replace(cfg, expression_classifier=str(self._judge()))
        last = run / "checkpoints" / "last.pt"
        # The checkpoint says how far the run got, not metrics.jsonl: a run stopped after logging
        # an epoch and before saving it has to train that epoch again.
        if last.exists() and load_checkpoint(last)["epoch"] >= cfg.epochs:
            return run
        log.info("%s: training FERSNet (%d epochs)", self.name, cfg.epochs)
        train(self.split_manifest, run, cfg, resume=last.exists(), overwrite=not last.exists())
        return run

    def _balanced(self) -> Path:
        out = self.dir / "balanced"
        if (out / "manifest.parquet").exists():
            return out / "manifest.parquet"
        # The last epoch's generator: validation accuracy picks the best recogniser (best.pt),
        # not the best synthesizer, and synthesis keeps improving after recognition peaks.
        ckpt = self._generator_run() / "checkpoints" / "last.pt"
        cfg = dataclasses.replace(
            self.config.balance, splits=("train",), holdout_folds=() if self.k is None else (self.k,)
        )
        if self.config.judge:
            cfg = dataclasses.replace(cfg, judge_checkpoint=str(self._judge()))
        log.info("%s: balancing the training subjects", self.name)
        device = None if self.config.generator.device == "auto" else self.config.generator.device
        return balance(self.split_manifest, ckpt, out, cfg, device=device).manifest

    def _judge(self) -> Path:
        """``judge.pt``: the ``real`` recipe with seed + 1, trained on the fold's training subjects."""
        self._condition("judge", lambda: self._fit(self.pixels[self.train_rows], self.labels[self.train_rows], 1))
        return self.dir / "judge.pt"

    # ---- conditions

    def _fit(
        self, x: torch.Tensor, y: np.ndarray, r: int = 0, weights: torch.Tensor | None = None
    ) -> tuple[DownstreamClassifier, dict[str, Any]]:
        """The downstream recipe with its seed + ``r``; ``weights``: rows drawn in proportion to
        them, as many draws per epoch as they sum to (a weighted balanced manifest), and the
        recorded ``train_counts`` are their per-class sums, which ``oversample`` then matches."""
        config = dataclasses.replace(self.config.downstream, seed=self.config.downstream.seed + r)
        epoch_size = None if weights is None else int(round(float(weights.sum())))
        result = fit(
            x,
            y,
            self.pixels[self.val_rows],
            self.labels[self.val_rows],
            config,
            num_classes=len(self.m.classes),
            sample_weights=weights,
            epoch_size=epoch_size,
        )
        counts = np.bincount(y, weights=None if weights is None else weights.numpy(), minlength=len(self.m.classes))
        return result.model, {
            "best_epoch": result.best_epoch,
            "history": result.history,
            "seed": config.seed,
            "train_counts": dict(zip(self.m.classes, np.rint(counts).astype(int).tolist())),
            **({"train_rows": len(y)} if weights is not None else {}),
        }

    def _oversample(self, r: int) -> tuple[DownstreamClassifier, dict[str, Any]]:
        index, missing = self._oversample_index(r)
        y = self.labels[self.train_rows]
        model, info = self._fit(self.pixels[self.train_rows][index], y[index], r)
        return model, info | ({"not_oversampled": missing} if missing else {})

    def _oversample_index(self, r: int) -> tuple[np.ndarray, list[str]]:
        """Positions in ``train_rows`` of the oversampled training set (repeats included) and the
        classes that could not be oversampled; for seed offset ``r``, the same draw for every
        condition that uses it."""
        y = self.labels[self.train_rows]
        real = dict(zip(self.m.classes, np.bincount(y, minlength=len(self.m.classes)).tolist()))
        fes = self.dir / "fes.json"
        if fes.exists():  # the same per-class counts as the synthetic condition reached
            wanted = Targets(real, {c: int(n) for c, n in json.loads(fes.read_text())["train_counts"].items()})
        else:
            b = self.config.balance
            wanted = resolve_targets(
                real,
                target_per_class=b.target_per_class,
                sampling_strategy=b.sampling_strategy,
                targets=b.targets,
                undersample=False,
            )
        # A class without a real training image cannot be oversampled (synthesis can still make
        # it from other classes' faces); it is recorded, so the report can say why counts differ.
        extra = wanted.to_generate
        targets = {k: real[c] + extra[c] for k, c in enumerate(self.m.classes) if real[c]}
        missing = [c for c in self.m.classes if not real[c] and extra[c] > 0]
        return random_oversample(y, targets, self.config.seed + r), missing

    def _mixed(self, r: int) -> tuple[DownstreamClassifier, dict[str, Any]]:
        """Each class's shortfall filled half by synthetic images, half by real repeats: what
        synthesis adds when it only has to supply part of the new images. The synthetic half is
        the first of each class in the balanced manifest, which follows balance's plan (round-robin
        over subjects, so the half still spans them). A class without real training images keeps
        all its synthetic ones, as it cannot be oversampled."""
        balanced = self._balanced_train()
        synthetic = balanced.manifest.df["origin"].to_numpy()[balanced.rows] != "real"
        y = self.labels[self.train_rows]
        chosen, targets = [], {}
        for k in range(len(self.m.classes)):
            mine = np.flatnonzero(synthetic & (balanced.labels == k))  # positions in manifest (= plan) order
            n_real = int((y == k).sum())
            keep = mine[: len(mine) // 2] if n_real else mine
            chosen.append(keep)
            if n_real:
                targets[k] = n_real + len(mine) - len(keep)
        index, syn = random_oversample(y, targets, self.config.seed + r), np.concatenate(chosen)
        x = torch.cat([self.pixels[self.train_rows][index], balanced.pixels[syn]])
        model, info = self._fit(x, np.concatenate([y[index], balanced.labels[syn]]), r)
        return model, info | {"n_synthetic": len(syn)}

    def _record(self, name: str, r: int = 0) -> Path:
        """Where a condition's record is cached: the first seed's beside the model, others in ``seeds/``."""
        return self.dir / f"{name}.json" if r == 0 else self.dir / "seeds" / f"{name}-{r}.json"

    def _condition(
        self,
        name: str,
        make: Callable[[], tuple[DownstreamClassifier, dict[str, Any]]],
        r: int = 0,
        test_x: torch.Tensor | None = None,
        save: bool = True,
    ) -> dict[str, Any]:
        """Train (``make``), score on the test fold (``test_x``: its images at the model's size,
        default the downstream size) and cache one condition of this fold. Only the first seed's
        model is kept (the synthesis report uses ``real.pt``); other seeds keep their record."""
        path = self._record(name, r)
        if path.exists():
            return json.loads(path.read_text())
        start = time.perf_counter()
        model, info = make()
        probs = predict_proba(model, self.pixels[self.test_rows] if test_x is None else test_x)
        report = classification_report(self.labels[self.test_rows], probs.argmax(1), self.m.classes, self.scored)
        record = {
            "condition": name,
            "fold": self.k,
            "test": report,
            "n_train": int(sum(info["train_counts"].values())),
            "n_val": int(len(self.val_rows)),
            "n_test": int(len(self.test_rows)),
            "seconds": time.perf_counter() - start,
            **info,
        }
        if save and r == 0:
            save_classifier(model, self.dir / f"{name}.pt", self.m.classes)
        path.parent.mkdir(exist_ok=True)
        atomic_write_text(path, json.dumps(jsonable(record), indent=1))
        log.info(
            "%s %-10s accuracy %.3f  macro-F1 %.3f  (%d training images, %.0f s%s)",
            self.name,
            name,
            report["accuracy"],
            report["macro_f1"],
            record["n_train"],
            record["seconds"],
            f", seed offset {r}" if r else "",
        )
        return record

    def _load_classifier(self, name: str) -> DownstreamClassifier:
        return load_classifier(self.dir / f"{name}.pt", device=resolve_device(self.config.downstream.device))[0]

    def _fersnet_branch(self) -> None:
        path = self.dir / "fersnet.json"
        if path.exists():
            return
        gen = load_generator(self._generator_run() / "checkpoints" / "best.pt")
        data = ManifestDataset(self.m, rows=self.test_rows, image_size=gen.image_size)
        pred = gen.classify(data.pixels).argmax(1).numpy()
        report = classification_report(data.labels, pred, self.m.classes, self.scored)
        record = {
            "condition": "fersnet",
            "fold": self.k,
            "test": report,
            "n_test": int(len(self.test_rows)),
            "checkpoint_epoch": gen.epoch,
            "checkpoint_sha256": gen.checkpoint_sha256,
        }
        atomic_write_text(path, json.dumps(jsonable(record), indent=1))

    def _fersnet_fine_tuned(self, name: str, r: int = 0) -> None:
        """FERSNet's FER branch (the ``fersnet`` checkpoint) fine-tuned at a tenth of the
        downstream learning rate, with the downstream schedule and validation-based epoch
        selection. ``fersnet+fes``, the paper's recipe: on the balanced training set, real +
        synthetic. ``fersnet+oversample``, its control: on the real training images repeated to
        the same per-class counts (``oversample``'s draw). The model is not saved (a FERSNet copy
        is not a downstream classifier file); the record names the checkpoint it started from.
        ``r``: the seed offset, as for the other conditions."""
        if self._record(name, r).exists():
            return
        gen = load_generator(self._generator_run() / "checkpoints" / "best.pt", device="cpu")
        size = gen.image_size

        def at_size(rows: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
            return self._pixels_at(size)[rows], self.labels[rows]

        def training_set() -> tuple[torch.Tensor, np.ndarray]:
            if name == "fersnet+fes":
                train = self._balanced_train(size)
                return train.pixels, train.labels
            index, _ = self._oversample_index(r)
            x, y = at_size(self.train_rows)
            return x[index], y[index]

        def fine_tune() -> tuple[DownstreamClassifier, dict[str, Any]]:
            x, y = training_set()
            d = self.config.downstream
            config = dataclasses.replace(d, lr=d.lr / 10, image_size=size, seed=d.seed + r)
            result = fit(x, y, *at_size(self.val_rows), config, num_classes=len(self.m.classes), init=gen.recogniser())
            counts = np.bincount(y, minlength=len(self.m.classes))
            return result.model, {
                "best_epoch": result.best_epoch,
                "history": result.history,
                "lr": config.lr,
                "seed": config.seed,
                "train_counts": dict(zip(self.m.classes, counts.tolist())),
                "init_checkpoint_epoch": gen.epoch,
                "init_checkpoint_sha256": gen.checkpoint_sha256,
            }

        self._condition(name, fine_tune, r, test_x=at_size(self.test_rows)[0], save=False)

    # ---- synthesis quality

    def _synthesis(self) -> None:
        path = self.dir / "synthesis.json"
        # The AU model and the judges only add scores: a record made with others is made again.
        made_with = {
            "au_checkpoint_sha256": file_sha256(self.config.au_checkpoint) if self.config.au_checkpoint else None,
            "judges_run": list(self.config.judges),
        }
        if path.exists() and {k: json.loads(path.read_text()).get(k) for k in made_with} == made_with:
            return
        syn = self._synthetic(self.config.downstream.image_size)
        if len(syn) == 0:
            record = {"fold": self.k, "n_synthetic": 0, **made_with}
        else:
            cas = self._condition("synthetic-only", lambda: self._fit(syn.pixels, syn.labels))
            record = synthesis_quality(
                self._load_classifier("real"),
                self.m,
                syn,
                real_train=(
                    self.pixels[self.train_rows],
                    self.labels[self.train_rows],
                    self._subjects(self.train_rows),
                ),
                real_val=(self.pixels[self.val_rows], self.labels[self.val_rows]),
                real_test=(self.pixels[self.test_rows], self.labels[self.test_rows]),
                au_checkpoint=self.config.au_checkpoint,
                judges=self.config.judges,
                train_rows=self.train_rows,
                device=resolve_device(self.config.downstream.device).type,
            )
            real = json.loads((self.dir / "real.json").read_text())["test"]
            record.update(
                {
                    "fold": self.k,
                    **made_with,
                    "classification_accuracy_score": {
                        "accuracy": cas["test"]["accuracy"],
                        "macro_f1": cas["test"]["macro_f1"],
                        "real_accuracy": real["accuracy"],
                        "real_macro_f1": real["macro_f1"],
                    },
                }
            )
        atomic_write_text(path, json.dumps(jsonable(record), indent=1))

    def _subjects(self, rows: np.ndarray) -> list[str]:
        return self.m.df["subject_id"].iloc[rows].astype(str).tolist()


# --------------------------------------------------------------------------------------------
# aggregation and the report


def _fold_number(path: Path) -> int | None:
    name = path.name
    return int(name[5:]) if name.startswith("fold-") and name[5:].isdigit() and path.is_dir() else None


def _split_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The records of one split folder by name; further seeds of a condition in its ``seeds``
    list, which they join only beside its first seed's record."""
    records = {p.stem: json.loads(p.read_text()) for p in folder.glob("*.json")}
    for p in sorted((folder / "seeds").glob("*.json")):
        extra = json.loads(p.read_text())
        if extra.get("condition") in records:
            records[extra["condition"]].setdefault("seeds", []).append(extra)
    return records


def _fold_records(out: Path) -> dict[int, dict[str, Any]]:
    folds: dict[int, dict[str, Any]] = {}
    for folder in sorted(out.iterdir(), key=lambda p: (_fold_number(p) is None, _fold_number(p) or 0)):
        k = _fold_number(folder)
        if k is not None and (records := _split_records(folder)):
            folds[k] = records
    return folds


def _seed_records(folder: Path) -> dict[int, dict[str, Any]]:
    """The cross-dataset split's records by seed offset, each seed a unit of the comparison: the
    first seed's unit also holds the records without seeds (FERSNet's branch, the synthesis)."""
    seeds: dict[int, dict[str, Any]] = {0: {}}
    for name, record in _split_records(folder).items():
        seeds[0][name] = {k: v for k, v in record.items() if k != "seeds"}
        for extra in record.get("seeds", ()):
            seeds.setdefault(extra["seed"] - record["seed"], {})[name] = extra
    return dict(sorted(seeds.items())) if seeds[0] else {}


def aggregate(out: Path, m: Manifest, config: EvaluateConfig) -> dict[str, Any]:
    """Summarise every fold present in ``out``: ``results.json``, ``report.md``, ``recall.png``."""
    counts = np.bincount(m.df["label"].to_numpy(dtype=np.int64), minlength=len(m.classes))
    minority = [c for c, n in zip(m.classes, counts) if n < np.median(counts)]
    folds = _fold_records(out)
    protocol = _protocol(m, config, minority) | {"evaluated_folds": sorted(folds)}
    synthesis = synthesis_summary(
        {k: r["synthesis"] for k, r in folds.items() if "synthesis" in r},
        m.classes,
        {k: r["real"]["test"] for k, r in folds.items() if "real" in r},
    )
    return _summarise(out, folds, "fold", protocol, synthesis, config)


def _aggregate_cross(out: Path, split: CrossSplit, fold: _Fold, config: EvaluateConfig) -> dict[str, Any]:
    """Summarise the cross-dataset split: its downstream seeds are the units compared."""
    a = split.train
    counts = np.bincount(a.df["label"].to_numpy(dtype=np.int64), minlength=len(a.classes))
    # The imbalance balancing answers is A's; only scored classes have a test recall.
    minority = [c for c, n in zip(a.classes, counts) if n < np.median(counts) and c in split.scored]
    data = split.describe()
    data["test"] |= split.test.record()
    data["train"] = {
        "n_images": int(len(a.df)),
        "n_subjects": int(a.df["subject_id"].nunique()),
        "n_train_subjects": fold.n_subjects["train"],
        "n_validation_subjects": fold.n_subjects["validation"],
        "n_train_images": int(len(fold.train_rows)),
        "n_validation_images": int(len(fold.val_rows)),
    }
    protocol = {k: v for k, v in _protocol(a, config, minority).items() if k != "folds"} | {
        "mode": "cross-dataset",
        "validation": f"{config.val_fraction:.0%} of the training dataset's subjects (subject-grouped, stratified; its "
        "folds and splits are not used), used for every model choice; the test dataset only for the final score",
        "cross_dataset": data,
        "scored_classes": split.scored,
        "image_size": f"every image of both datasets is resized to {config.downstream.image_size}×"
        f"{config.downstream.image_size} px when decoded (shorter side, then a centre crop), whatever its "
        "stored size",
    }
    seeds = _seed_records(out / CROSS_FOLDER)
    first = seeds.get(0, {})
    synthesis = synthesis_summary(
        {CROSS_FOLDER: first["synthesis"]} if "synthesis" in first else {},
        a.classes,
        {CROSS_FOLDER: first["real"]["test"]} if "real" in first else {},
    )
    return _summarise(out, seeds, "seed", protocol, synthesis, config)


def _summarise(
    out: Path,
    units: dict[int, dict[str, Any]],
    unit: str,
    protocol: dict[str, Any],
    synthesis: dict[str, Any],
    config: EvaluateConfig,
) -> dict[str, Any]:
    """``results.json``, ``report.md`` and ``recall.png`` from the records of each ``unit``: a test
    fold (its seeds averaged), or with one split a downstream seed. Scores cover the protocol's
    ``scored_classes`` (default every class)."""
    classes, minority = protocol["classes"], protocol["minority_classes"]
    scored = protocol.get("scored_classes", classes)
    names = [c for c in (*CONDITIONS, "synthetic-only") if any(c in r for r in units.values())]
    summary: dict[str, Any] = {}
    for name in names:
        reports = {k: fold_scores(r[name]) for k, r in units.items() if name in r}
        summary[name] = {
            f"{unit}s": sorted(reports),
            **(
                {"seeds_per_fold": sorted({1 + len(r[name].get("seeds", ())) for r in units.values() if name in r})}
                if unit == "fold"
                else {}
            ),
            "accuracy": mean_std([r["accuracy"] for r in reports.values()]),
            "macro_f1": mean_std([r["macro_f1"] for r in reports.values()]),
            "minority_recall": mean_std(
                [float(np.mean([r["recall"][c] for c in minority])) for r in reports.values()] if minority else []
            ),
            "recall": {c: mean_std([r["recall"][c] for r in reports.values()]) for c in scored},
        }
    comparisons: dict[str, Any] = {}
    for name, base in COMPARISONS:
        if name in summary and base in summary:
            paired = [k for k in units if name in units[k] and base in units[k]]
            comparisons[f"{name}_vs_{base}"] = {
                metric: paired_comparison(
                    [fold_metric(units[k][name], metric, minority) for k in paired],
                    [fold_metric(units[k][base], metric, minority) for k in paired],
                    unit,
                )
                for metric in ("accuracy", "macro_f1", *(("minority_recall",) if minority else ()))
            } | {f"{unit}s": paired}
    if unit == "fold":
        protocol["downstream"]["seeds_per_fold"] = max(
            (n for s in summary.values() for n in s["seeds_per_fold"]), default=1
        )
        fewest = min(
            (min(summary[n]["seeds_per_fold"]) for n in ("fes", "real", "oversample") if n in summary), default=1
        )
    else:
        protocol["downstream"]["seeds"] = max((len(s["seeds"]) for s in summary.values()), default=1)
        fewest = 1  # not read: each unit is one seed
    results = {
        "protocol": protocol,
        "conditions": summary,
        "comparisons": comparisons,
        f"per_{unit}": {str(k): {name: fold_scores(r[name]) for name in names if name in r} for k, r in units.items()},
        "synthesis": synthesis,
        "verdict": verdict(comparisons, fewest, unit),
        "seconds": {str(k): {name: fold_seconds(r[name]) for name in names if name in r} for k, r in units.items()},
        "provenance": provenance("evaluate", jsonable(config.key())),
    }
    atomic_write_text(out / "results.json", json.dumps(jsonable(results), indent=1))
    plot_recall(results, scored, out / "recall.png")
    atomic_write_text(out / "report.md", render_report(results, classes))
    return results


def _protocol(m: Manifest, config: EvaluateConfig, minority: Sequence[str]) -> dict[str, Any]:
    d = config.downstream
    return {
        "manifest": str(m.path),
        "manifest_sha256": file_sha256(m.path),
        "classes": m.classes,
        "n_images": int(len(m.df)),
        "n_subjects": int(m.df["subject_id"].nunique()),
        "folds": manifest_folds(m),
        "minority_classes": list(minority),
        "validation": f"{config.val_fraction:.0%} of the training subjects (subject-grouped, stratified), "
        "used for every model choice; the test fold only for the final score",
        "downstream": {
            "model": d.model,
            "epochs": d.epochs,
            "batch_size": d.batch_size,
            "lr": d.lr,
            "image_size": d.image_size,
            "augment": d.augment,
            "seed": d.seed,
            "selection": "best validation macro-F1 epoch",
        },
        "generator": {
            "preset": config.generator.preset,
            "epochs": config.generator.epochs,
            "loss": dataclasses.asdict(config.generator.loss),
            "expression_loss_judge": EXPRESSION_JUDGE if config.expression_judge else "FERSNet's own FER branch",
            "checkpoint": "last epoch (synthesis); best validation epoch for the fersnet condition",
        },
        "balance": {
            k: v
            for k, v in config.balance.to_dict().items()
            if k
            in (
                "target_per_class",
                "sampling_strategy",
                "targets",
                "min_confidence",
                "max_attempts",
                "seed",
                "min_judge_confidence",
                "source_order",
            )
        }
        | {"judge": config.judge},
        "judges": list(config.judges),
        "seed": config.seed,
    }
