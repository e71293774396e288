"""One split of an evaluation (a test fold, or the cross-dataset split) and the data its
conditions train on, each piece cached in the split's folder.

:class:`Fold` holds who is trained on, validated on and tested on (``split.parquet``: every model
of the fold reads that one file), the images decoded once per size, and the fold's FERSNet, its
balanced set and its judge, each made on first use and reused by every condition and seed.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fesaug.balance.run import balance
from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import Manifest, read_manifest, relative_image_root, write_manifest
from fesaug.data.splits import split_subjects
from fesaug.evaluate.config import EvaluateConfig
from fesaug.synthesis.checkpoint import load_checkpoint
from fesaug.synthesis.training import train
from fesaug.utils.provenance import provenance

log = logging.getLogger(__name__)


class Fold:
    """One split of ``m``: ``k`` the test fold, or None for the cross-dataset input (its ``test``
    split is the test set and no fold is held out, :mod:`fesaug.evaluate.cross_dataset`).
    ``pixels``: every image of ``m`` at the downstream size, decoded on first call and shared by
    the folds. ``scored``: the classes the test set can score (default all)."""

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
        self.memo: dict[Any, Any] = {}  # what a condition derives once per fold (e.g. the exact faces)

    # ---- the split and its images

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
        evaluation = {"input_manifest": str(self.m.path), "holdout_fold": self.k}
        evaluation |= {"val_fraction": self.config.val_fraction, "seed": self.config.seed}
        meta = {
            **self.m.inherited_meta(),
            "provenance": provenance("evaluate", {"fold": self.k}),
            "input_provenance": self.m.meta.get("provenance"),
            "evaluation": evaluation,
        }
        self.dir.mkdir(parents=True, exist_ok=True)
        root = relative_image_root(path, self.m.image_root)
        return write_manifest(df, path, classes=self.m.classes, meta=meta, overwrite=True, image_root=root)

    @property
    def pixels(self) -> torch.Tensor:
        """Every image of the manifest at the downstream size (decoded once, shared by the folds)."""
        return self._pixels()

    def pixels_at(self, size: int) -> torch.Tensor:
        """Every image of the manifest at ``size`` (FERSNet's may differ from the downstream one),
        decoded once per fold and size."""
        if size == self.config.downstream.image_size:
            return self.pixels
        if size not in self._pixels_by_size:
            self._pixels_by_size[size] = ManifestDataset(self.m, image_size=size).pixels
        return self._pixels_by_size[size]

    def subjects(self, rows: np.ndarray) -> list[str]:
        return self.m.df["subject_id"].iloc[rows].astype(str).tolist()

    # ---- the balanced set (read once per fold: fes, mixed and the synthesis report share it)

    def balanced_manifest(self) -> Manifest:
        if self._balanced_read is None:
            self._balanced_read = read_manifest(self.balanced())
        return self._balanced_read

    def balanced_train(self, size: int | None = None) -> ManifestDataset:
        """The balanced training rows (real + synthetic) at ``size`` (default the downstream
        size), decoded once per fold and size."""
        size = size or self.config.downstream.image_size
        if size not in self._balanced_data:
            b = self.balanced_manifest()
            rows = np.flatnonzero((b.df["split"] == "train").to_numpy())
            self._balanced_data[size] = ManifestDataset(b, rows=rows, image_size=size)
        return self._balanced_data[size]

    def balanced_weights(self) -> torch.Tensor | None:
        """The balanced training rows' ``weight`` column, or None when the run wrote none."""
        train = self.balanced_train()
        return train.weights if "weight" in train.manifest.df.columns else None

    def synthetic(self, image_size: int | None) -> ManifestDataset:
        return ManifestDataset(self.balanced_manifest(), origins=("synthetic",), image_size=image_size)

    # ---- FERSNet, the balanced set and the judge (cached by train() and balance() themselves)

    def generator_run(self) -> Path:
        """The fold's FERSNet run (``fersnet/``), trained here unless finished."""
        run = self.dir / "fersnet"
        cfg = dataclasses.replace(self.config.generator, holdout_fold=self.k, seed=self.config.seed)
        if self.config.expression_judge:
            cfg = dataclasses.replace(cfg, expression_classifier=str(self.judge()))
        last = run / "checkpoints" / "last.pt"
        # The checkpoint says how far the run got, not metrics.jsonl: a run stopped after logging
        # an epoch and before saving it has to train that epoch again.
        if last.exists() and load_checkpoint(last)["epoch"] >= cfg.epochs:
            return run
        log.info("%s: training FERSNet (%d epochs)", self.name, cfg.epochs)
        train(self.split_manifest, run, cfg, resume=last.exists(), overwrite=not last.exists())
        return run

    def balanced(self) -> Path:
        """The fold's balanced manifest (``balanced/``), made here unless finished."""
        out = self.dir / "balanced"
        if (out / "manifest.parquet").exists():
            return out / "manifest.parquet"
        # The last epoch's generator: validation accuracy picks the best recogniser (best.pt),
        # not the best synthesizer, and synthesis keeps improving after recognition peaks.
        ckpt = self.generator_run() / "checkpoints" / "last.pt"
        holdout = () if self.k is None else (self.k,)
        cfg = dataclasses.replace(self.config.balance, splits=("train",), holdout_folds=holdout)
        if self.config.judge:
            cfg = dataclasses.replace(cfg, judge_checkpoint=str(self.judge()))
        log.info("%s: balancing the training subjects", self.name)
        device = None if self.config.generator.device == "auto" else self.config.generator.device
        return balance(self.split_manifest, ckpt, out, cfg, device=device).manifest

    def judge(self) -> Path:
        """``judge.pt``: the ``real`` recipe with seed + 1, trained on the fold's training subjects:
        the classifier that gates (``--judge``) or teaches (``--expression-judge``) is not the
        ``real`` classifier that scores the synthetic faces."""
        from fesaug.evaluate.runner import train_judge  # the runner trains every classifier of a fold

        return train_judge(self)
