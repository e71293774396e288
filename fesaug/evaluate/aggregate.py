"""Summarise an evaluation: every finished fold (or the cross-dataset split's seeds) into
``results.json``, ``report.md`` and ``recall.png``: mean ± std over folds, paired comparisons
(:data:`fesaug.evaluate.conditions.COMPARISONS`), the verdict and the synthesis scores."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fesaug.data.manifest import Manifest
from fesaug.data.splits import manifest_folds
from fesaug.evaluate.conditions import COMPARISONS, REGISTRY
from fesaug.evaluate.config import EvaluateConfig
from fesaug.evaluate.cross_dataset import CrossSplit
from fesaug.evaluate.fold import Fold
from fesaug.evaluate.outdir import CROSS_FOLDER, fold_number
from fesaug.evaluate.records import FOLD_RECORD
from fesaug.evaluate.report import EXPRESSION_JUDGE, plot_recall, render_report
from fesaug.evaluate.stats import fold_metric, fold_scores, fold_seconds, mean_std, paired_comparison, verdict
from fesaug.evaluate.synthesis_scores import synthesis_summary
from fesaug.utils.files import atomic_write_text, file_sha256
from fesaug.utils.provenance import provenance
from fesaug.utils.runlog import jsonable


def split_records(folder: Path) -> dict[str, dict[str, Any]]:
    """The records of one split folder by name; further seeds of a condition in its ``seeds``
    list, which they join only beside its first seed's record."""
    records = {p.stem: _read(p) for p in folder.glob("*.json")}
    for p in sorted((folder / "seeds").glob("*.json")):
        extra = _read(p)
        if extra.get("condition") in records:
            records[extra["condition"]].setdefault("seeds", []).append(extra)
    return records


def _read(path: Path) -> dict[str, Any]:
    return FOLD_RECORD.read(json.loads(path.read_text()), where=str(path))


def fold_records(out: Path) -> dict[int, dict[str, Any]]:
    folds: dict[int, dict[str, Any]] = {}
    for folder in sorted(out.iterdir(), key=lambda p: (fold_number(p) is None, fold_number(p) or 0)):
        k = fold_number(folder)
        if k is not None and (records := split_records(folder)):
            folds[k] = records
    return folds


def seed_records(folder: Path) -> dict[int, dict[str, Any]]:
    """The cross-dataset split's records by seed offset, each seed a unit of the comparison: the
    first seed's unit also holds the records without seeds (FERSNet's branch, the synthesis)."""
    seeds: dict[int, dict[str, Any]] = {0: {}}
    for name, record in split_records(folder).items():
        seeds[0][name] = {k: v for k, v in record.items() if k != "seeds"}
        for extra in record.get("seeds", ()):
            seeds.setdefault(extra["seed"] - record["seed"], {})[name] = extra
    return dict(sorted(seeds.items())) if seeds[0] else {}


def aggregate(out: Path, m: Manifest, config: EvaluateConfig) -> dict[str, Any]:
    """Summarise every fold present in ``out``: ``results.json``, ``report.md``, ``recall.png``."""
    counts = np.bincount(m.df["label"].to_numpy(dtype=np.int64), minlength=len(m.classes))
    minority = [c for c, n in zip(m.classes, counts) if n < np.median(counts)]
    folds = fold_records(out)
    protocol = _protocol(m, config, minority) | {"evaluated_folds": sorted(folds)}
    synthesis = synthesis_summary(
        {k: r["synthesis"] for k, r in folds.items() if "synthesis" in r},
        m.classes,
        {k: r["real"]["test"] for k, r in folds.items() if "real" in r},
    )
    return _summarise(out, folds, "fold", protocol, synthesis, config)


def aggregate_cross(out: Path, split: CrossSplit, fold: Fold, config: EvaluateConfig) -> dict[str, Any]:
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
    seeds = seed_records(out / CROSS_FOLDER)
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
    names = [c for c in (*REGISTRY, "synthetic-only") if any(c in r for r in units.values())]
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
        "gap_closed": gap_closed(units, unit),
        "retune_head": retune_summary(units, names),
        "synthesis": synthesis,
        "verdict": verdict(comparisons, fewest, unit),
        "seconds": {str(k): {name: fold_seconds(r[name]) for name in names if name in r} for k, r in units.items()},
        "provenance": provenance("evaluate", jsonable(config.key())),
    }
    atomic_write_text(out / "results.json", json.dumps(jsonable(results), indent=1))
    plot_recall(results, scored, out / "recall.png")
    atomic_write_text(out / "report.md", render_report(results, classes))
    return results


# The synthetic conditions whose share of the oversample → truth gap is reported.
GAP_CONDITIONS = ("fes", "mixed", "truth-half")
# Below this difference (macro-F1, half a point) a unit's truth and oversample are too close for a share.
MIN_GAP = 0.005


def gap_closed(units: dict[int, dict[str, Any]], unit: str) -> dict[str, Any]:
    """For each synthetic condition, how much of the gap between ``oversample`` and ``truth`` it
    closes on test macro-F1: (condition − oversample) / (truth − oversample), overall from the
    means over the units all three ran on, and per unit. Empty without ``truth`` and ``oversample``."""
    out: dict[str, Any] = {}
    for name in GAP_CONDITIONS:
        paired = [k for k, r in units.items() if all(c in r for c in (name, "oversample", "truth"))]
        if not paired:
            continue
        f1 = {c: [fold_metric(units[k][c], "macro_f1", ()) for k in paired] for c in (name, "oversample", "truth")}
        per = {
            str(k): (x - o) / (t - o) if abs(t - o) >= MIN_GAP else None
            for k, x, o, t in zip(paired, f1[name], f1["oversample"], f1["truth"])
        }
        gain, ceiling = (
            float(np.mean(f1[name]) - np.mean(f1["oversample"])),
            float(np.mean(f1["truth"]) - np.mean(f1["oversample"])),
        )
        out[name] = {
            "overall": gain / ceiling if abs(ceiling) >= MIN_GAP else None,
            "minus_oversample": gain,
            "truth_minus_oversample": ceiling,
            f"per_{unit}": per,
            f"{unit}s": paired,
        }
    return out


def retune_summary(units: dict[int, dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """With ``--retune-head``: per condition, test macro-F1 with the trained last layer and with
    the one the run kept (means over units of each unit's seed mean), and the share of trainings
    whose layer the re-tune replaced. Empty when no record was re-tuned."""
    out: dict[str, Any] = {}
    for name in names:
        seeds = {k: [r[name], *r[name].get("seeds", ())] for k, r in units.items() if name in r}
        if not seeds or not all("retune_head" in s for ss in seeds.values() for s in ss):
            continue
        trained = [float(np.mean([s["retune_head"]["test_before"]["macro_f1"] for s in ss])) for ss in seeds.values()]
        kept = [float(np.mean([s["test"]["macro_f1"] for s in ss])) for ss in seeds.values()]
        applied = [s["retune_head"]["applied"] for ss in seeds.values() for s in ss]
        out[name] = {
            "trained_macro_f1": mean_std(trained),
            "kept_macro_f1": mean_std(kept),
            "applied_share": float(np.mean(applied)),
        }
    return out


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
