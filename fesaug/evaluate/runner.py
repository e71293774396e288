"""Run a fold: train, score and cache every selected condition for every downstream seed, score
FERSNet's own branch, and score the synthetic images.

Every condition (:mod:`fesaug.evaluate.conditions`) is trained the same way: the downstream
recipe (:func:`fesaug.evaluate.downstream.fit`) with the fold's validation subjects choosing the
epoch, seed ``seed + r`` for seed offset ``r``; it is then scored once on the test rows and its
record cached (``fold-k/<name>.json``, further seeds in ``fold-k/seeds/``). Seeds train one
after another: on a CPU, several seeds as one grouped network
(:func:`~fesaug.evaluate.downstream.fit_seeds`) are slower per image than one at a time
(``bench/results/downstream_throughput.md``). A cached record is never computed again, so an
interrupted fold resumes at the first missing piece.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fesaug.evaluate.conditions import REGISTRY, Condition, TrainingSet, run_order
from fesaug.evaluate.downstream import (
    DownstreamClassifier,
    classification_report,
    fit,
    load_classifier,
    predict_proba,
    save_classifier,
)
from fesaug.evaluate.fold import Fold
from fesaug.evaluate.records import FOLD_RECORD
from fesaug.evaluate.retune import retune_head
from fesaug.evaluate.synthesis_scores import synthesis_quality
from fesaug.synthesis.generator import load_generator
from fesaug.utils.devices import resolve_device
from fesaug.utils.files import atomic_write_text, file_sha256
from fesaug.utils.runlog import jsonable

log = logging.getLogger(__name__)

Trained = tuple[DownstreamClassifier, dict[str, Any]]


def run_fold(fold: Fold) -> None:
    """Every selected condition for every downstream seed, then FERSNet's branch and the synthesis report."""
    config = fold.config
    offsets = list(range(config.downstream_seeds))  # r: a seed's offset from the configured one
    # The synthesis report scores synthetic faces with the first seed's real classifier.
    selected = {*config.conditions, *(["real"] if config.synthesis else [])}
    for condition in run_order(selected):
        if condition.data is not None:
            run_condition(fold, condition, offsets if condition.name in config.conditions else [0])
    if "fersnet" in config.conditions:
        fersnet_branch(fold)
    if config.synthesis:
        synthesis(fold)


def run_condition(fold: Fold, condition: Condition, offsets: Sequence[int] = (0,)) -> list[dict[str, Any]]:
    """Train and score one condition for each seed offset in ``offsets`` (cached); one record per offset."""
    if condition.fine_tune:
        return [_fine_tuned(fold, condition, r) for r in offsets]
    assert condition.data is not None
    data = condition.data
    return [
        score_and_record(fold, condition.name, lambda r=r: _train(fold, lambda: data(fold, r, _size(fold)), r), r)
        for r in offsets
    ]


def train_judge(fold: Fold) -> Path:
    """``judge.pt``: the ``real`` recipe with seed + 1 (see :meth:`Fold.judge`)."""
    real = REGISTRY["real"].data
    score_and_record(fold, "judge", lambda: _train(fold, lambda: real(fold, 1, _size(fold)), 1))
    return fold.dir / "judge.pt"


def record_path(fold: Fold, name: str, r: int = 0) -> Path:
    """Where a condition's record is cached: the first seed's beside the model, others in ``seeds/``."""
    return fold.dir / f"{name}.json" if r == 0 else fold.dir / "seeds" / f"{name}-{r}.json"


def score_and_record(
    fold: Fold,
    name: str,
    make: Callable[[], Trained],
    r: int = 0,
    test_x: torch.Tensor | None = None,
    save: bool = True,
) -> dict[str, Any]:
    """Train (``make``), score on the test rows (``test_x``: their images at the model's size,
    default the downstream size) and cache one condition of the fold. Only the first seed's
    model is kept (the synthesis report uses ``real.pt``); other seeds keep their record."""
    path = record_path(fold, name, r)
    if path.exists():
        return FOLD_RECORD.read(json.loads(path.read_text()), where=str(path))
    start = time.perf_counter()
    model, info = make()
    probs = predict_proba(model, fold.pixels[fold.test_rows] if test_x is None else test_x)
    report = classification_report(fold.labels[fold.test_rows], probs.argmax(1), fold.m.classes, fold.scored)
    record = {
        "condition": name,
        "fold": fold.k,
        "test": report,
        "n_train": int(sum(info["train_counts"].values())),
        "n_val": int(len(fold.val_rows)),
        "n_test": int(len(fold.test_rows)),
        "seconds": time.perf_counter() - start,
        **info,
    }
    if save and r == 0:
        save_classifier(model, fold.dir / f"{name}.pt", fold.m.classes)
    path.parent.mkdir(exist_ok=True)
    atomic_write_text(path, json.dumps(FOLD_RECORD.stamp(jsonable(record)), indent=1))
    # One plain line per finished training, so a long run logged to a file shows it is alive.
    log.info(
        "%s %-18s seed %d  accuracy %.3f  macro-F1 %.3f  (%d training images, %.0f s)",
        fold.name, name, fold.config.downstream.seed + r, report["accuracy"], report["macro_f1"], record["n_train"],
        record["seconds"],
    )  # fmt: skip
    return record


def _size(fold: Fold) -> int:
    return fold.config.downstream.image_size


def _train(fold: Fold, data: Callable[[], TrainingSet], r: int) -> Trained:
    """The downstream recipe with its seed + ``r`` on ``data()``; with weights, rows are drawn in
    proportion to them, as many draws per epoch as they sum to (a weighted balanced manifest), and
    the recorded ``train_counts`` are their per-class sums, which ``oversample`` then matches."""
    ts = data()
    config = dataclasses.replace(fold.config.downstream, seed=fold.config.downstream.seed + r)
    epoch_size = None if ts.weights is None else int(round(float(ts.weights.sum())))
    val_x, val_y = fold.pixels[fold.val_rows], fold.labels[fold.val_rows]
    n_classes = len(fold.m.classes)
    result = fit(
        ts.x, ts.y, val_x, val_y, config,
        num_classes=n_classes, sample_weights=ts.weights, epoch_size=epoch_size, soft_targets=ts.targets,
    )  # fmt: skip
    weights = None if ts.weights is None else ts.weights.numpy()
    counts = np.rint(np.bincount(ts.y, weights=weights, minlength=n_classes)).astype(int)
    info: dict[str, Any] = {
        "best_epoch": result.best_epoch,
        "history": result.history,
        "seed": config.seed,
        "train_counts": dict(zip(fold.m.classes, counts.tolist())),
        **({"train_rows": len(ts.y)} if ts.weights is not None else {}),
    }
    if ts.targets is not None:  # the training rows' mean mass on their own class (1: all hard labels)
        info["soft_label_mass"] = float(ts.targets.gather(1, torch.as_tensor(ts.y)[:, None]).mean())
    if fold.config.retune_head:
        real_x, real_y = fold.pixels[fold.train_rows], fold.labels[fold.train_rows]
        # The trained layer's test scores too, so one run shows what the re-tune changed on each network.
        test_y = fold.labels[fold.test_rows]
        trained = predict_proba(result.model, fold.pixels[fold.test_rows]).argmax(1)
        before = classification_report(test_y, trained, fold.m.classes, fold.scored)
        info["retune_head"] = retune_head(result.model, real_x, real_y, val_x, val_y) | {"test_before": before}
    return result.model, info | ts.info


def _fine_tuned(fold: Fold, condition: Condition, r: int) -> dict[str, Any]:
    """FERSNet's FER branch (the ``fersnet`` checkpoint) fine-tuned at a tenth of the downstream
    learning rate, with the downstream schedule and validation-based epoch selection, at the
    generator's image size. The model is not saved (a FERSNet copy is not a downstream classifier
    file); the record names the checkpoint it started from."""
    if record_path(fold, condition.name, r).exists():
        return score_and_record(fold, condition.name, _never, r)
    gen = load_generator(fold.generator_run() / "checkpoints" / "best.pt", device="cpu")
    size = gen.image_size

    def fine_tune() -> Trained:
        ts = condition.data(fold, r, size)
        d = fold.config.downstream
        config = dataclasses.replace(d, lr=d.lr / 10, image_size=size, seed=d.seed + r)
        val = fold.pixels_at(size)[fold.val_rows], fold.labels[fold.val_rows]
        result = fit(
            ts.x, ts.y, *val, config, num_classes=len(fold.m.classes), init=gen.recogniser(), soft_targets=ts.targets
        )
        counts = np.bincount(ts.y, minlength=len(fold.m.classes))
        info = {
            "best_epoch": result.best_epoch,
            "history": result.history,
            "lr": config.lr,
            "seed": config.seed,
            "train_counts": dict(zip(fold.m.classes, counts.tolist())),
            "init_checkpoint_epoch": gen.epoch,
            "init_checkpoint_sha256": gen.checkpoint_sha256,
        }
        return result.model, info | ts.info

    test_x = fold.pixels_at(size)[fold.test_rows]
    return score_and_record(fold, condition.name, fine_tune, r, test_x=test_x, save=False)


def _never() -> Trained:
    raise AssertionError("a cached record is read, never trained again")


def fersnet_branch(fold: Fold) -> None:
    """Score FERSNet's own FER branch (its validation-selected ``best.pt``) on the test rows."""
    path = fold.dir / "fersnet.json"
    if path.exists():
        return
    gen = load_generator(fold.generator_run() / "checkpoints" / "best.pt")
    pixels = fold.pixels_at(gen.image_size)[fold.test_rows]
    pred = gen.classify(pixels).argmax(1).numpy()
    report = classification_report(fold.labels[fold.test_rows], pred, fold.m.classes, fold.scored)
    record = {
        "condition": "fersnet",
        "fold": fold.k,
        "test": report,
        "n_test": int(len(fold.test_rows)),
        "checkpoint_epoch": gen.epoch,
        "checkpoint_sha256": gen.checkpoint_sha256,
    }
    atomic_write_text(path, json.dumps(FOLD_RECORD.stamp(jsonable(record)), indent=1))


def synthesis(fold: Fold) -> None:
    """The fold's synthesis report (``synthesis.json``, :func:`synthesis_quality`)."""
    path = fold.dir / "synthesis.json"
    config = fold.config
    # The AU model and the judges only add scores: a record made with others is made again.
    made_with = {
        "au_checkpoint_sha256": file_sha256(config.au_checkpoint) if config.au_checkpoint else None,
        "judges_run": list(config.judges),
    }
    if path.exists() and {k: json.loads(path.read_text()).get(k) for k in made_with} == made_with:
        return
    syn = fold.synthetic(config.downstream.image_size)
    if len(syn) == 0:
        record = {"fold": fold.k, "n_synthetic": 0, **made_with}
    else:
        cas = score_and_record(
            fold, "synthetic-only", lambda: _train(fold, lambda: TrainingSet(syn.pixels, syn.labels), 0)
        )
        real_model = load_classifier(fold.dir / "real.pt", device=resolve_device(config.downstream.device))[0]
        record = synthesis_quality(
            real_model,
            fold.m,
            syn,
            real_train=(fold.pixels[fold.train_rows], fold.labels[fold.train_rows], fold.subjects(fold.train_rows)),
            real_val=(fold.pixels[fold.val_rows], fold.labels[fold.val_rows]),
            real_test=(fold.pixels[fold.test_rows], fold.labels[fold.test_rows]),
            au_checkpoint=config.au_checkpoint,
            judges=config.judges,
            train_rows=fold.train_rows,
            device=resolve_device(config.downstream.device).type,
        )
        real = json.loads((fold.dir / "real.json").read_text())["test"]
        record |= {"fold": fold.k, **made_with}
        record["classification_accuracy_score"] = {
            "accuracy": cas["test"]["accuracy"],
            "macro_f1": cas["test"]["macro_f1"],
            "real_accuracy": real["accuracy"],
            "real_macro_f1": real["macro_f1"],
        }
    atomic_write_text(path, json.dumps(FOLD_RECORD.stamp(jsonable(record)), indent=1))
