"""The end of a balance run: the manifest (real + synthetic rows), its footer, card and histogram.

Every synthetic row has ``origin="synthetic"``, its ``parent_id``, ``source_label``, target
``label``, the parent's ``subject_id``/``split``/``fold``, ``generator`` (the checkpoint's
sha256), ``seed``, ``confidence`` and ``source_transform``. The footer records the resolved
counts, acceptance rates and, under ``generator_training``, which folds and subjects the
generator saw, so that ``fesaug audit`` can flag synthetic images used against a test fold the
generator was trained on.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd

from fesaug.audit.report import audit, plot_report
from fesaug.balance.card import dataset_card
from fesaug.balance.config import BalanceResult
from fesaug.balance.plan import Plan
from fesaug.data.manifest import Manifest, read_manifest, relative_image_root, working_set, write_manifest
from fesaug.utils.files import atomic_write_text
from fesaug.utils.provenance import provenance

WORK_DIR = ".fesaug-balance"
OUTPUTS = ("manifest.parquet", "README.md", "histogram.png", "images", WORK_DIR)


def part_path(out: Path, chunk: int) -> Path:
    """Where chunk ``chunk``'s part file is (its presence means the chunk is done)."""
    return out / WORK_DIR / "parts" / f"chunk-{chunk:06d}.json"


def finish(plan: Plan, out: Path, n_chunks: int, start: float, *, resumed: int) -> BalanceResult:
    """Gather the parts into the manifest; write the card and histogram before it, the manifest last."""
    m, cfg = plan.manifest, plan.config
    parts = [json.loads(part_path(out, i).read_text()) for i in range(n_chunks)]
    synthetic = sorted((r for p in parts for r in p["rows"]), key=lambda r: (r["label"], r["slot"]))
    result = _result(plan, out, parts, synthetic, resumed)
    real = m.df.drop(index=m.df.index[plan.removed_rows]).reset_index(drop=True)
    root, real_images = relocate(m, real, out, embed=cfg.embed_images)
    real = real.assign(image=real_images)
    syn = synthetic_frame(plan, synthetic, out, root)
    df = pd.concat([real, syn], ignore_index=True) if len(syn) else real
    if cfg.weighted:
        balanced = working_set(df, cfg.splits, plan.holdout_folds)
        df["weight"] = row_weights(df, plan.targets, cfg.synthetic_weight, balanced=balanced, classes=m.classes)
        result.weighted = weighted_counts(df, m.classes, balanced)
    if cfg.soft:
        result.mean_target_mass = mean_target_mass(df, m.classes)
    meta = footer(plan, result)
    manifest_path = out / "manifest.parquet"
    image_root = "." if cfg.embed_images else relative_image_root(manifest_path, root)
    # Written beside the work files first and renamed last: the manifest marks a finished run,
    # so the card and histogram must exist before it does.
    staged = out / WORK_DIR / "manifest.parquet"
    write_manifest(df, staged, classes=m.classes, meta=meta, overwrite=True, image_root=image_root)
    report = audit(read_manifest(staged), target=max(plan.targets.values()), check_images=False)
    result.problems = [p.message for p in report.problems]
    plot_report(report, out / "histogram.png")
    atomic_write_text(out / "README.md", dataset_card(result, plan, meta, report.held_out))
    os.replace(staged, manifest_path)
    shutil.rmtree(out / WORK_DIR, ignore_errors=True)
    result.seconds = time.perf_counter() - start
    return result


def _result(
    plan: Plan, out: Path, parts: list[dict[str, Any]], synthetic: list[dict[str, Any]], resumed: int
) -> BalanceResult:
    m = plan.manifest
    attempts = dict.fromkeys(m.classes, 0)
    passed: dict[str, dict[str, int]] = {}
    for p in parts:
        for c, n in p["attempts"].items():
            attempts[c] += n
        for gate, counts in p["passed"].items():
            for c, n in counts.items():
                passed.setdefault(gate, dict.fromkeys(m.classes, 0))[c] += n
    labels = m.df["label"].to_numpy(dtype=np.int64)
    generated = {c: sum(1 for r in synthetic if r["label"] == k) for k, c in enumerate(m.classes)}
    removed = {c: int((labels[plan.removed_rows] == k).sum()) for k, c in enumerate(m.classes)}
    shortfall = {c: plan.to_synthesize[c] - generated[c] for c in m.classes}
    t = plan.targets
    return BalanceResult(
        out, out / "manifest.parquet", dict(t.counts), dict(t), plan.to_synthesize, generated, removed, attempts,
        shortfall, 0.0, resumed, gate_passed=passed,
    )  # fmt: skip


def synthetic_frame(plan: Plan, synthetic: list[dict[str, Any]], out: Path, root: Path) -> pd.DataFrame:
    """The synthetic rows as manifest rows, their images referenced from ``root`` (or embedded)."""
    syn = pd.DataFrame(synthetic)
    if not len(syn):
        return syn
    cfg = plan.config
    prefix = PurePosixPath(Path(os.path.relpath(out.resolve(), root)).as_posix())
    syn["image"] = [
        {"bytes": (out / p).read_bytes(), "path": p} if cfg.embed_images else {"bytes": None, "path": str(prefix / p)}
        for p in syn["path"]
    ]
    syn = syn.drop(columns=["path", "slot"]).assign(
        label_name=[plan.manifest.classes[k] for k in syn["label"]],
        origin="synthetic",
        generator=plan.generator.checkpoint_sha256,
        seed=cfg.seed,
    )
    syn["attempt"] = syn["attempt"].astype("Int64")
    return syn


def row_weights(
    df: pd.DataFrame,
    targets: Mapping[str, int],
    synthetic_weight: float,
    *,
    balanced: np.ndarray,
    classes: Sequence[str],
) -> np.ndarray:
    """The ``weight`` column of a weighted balance run: each balanced synthetic row counts
    ``synthetic_weight``, and the real rows of each class share what the class still lacks of its
    target equally (at least 1 each), so the weights of a class sum to its target; rows the run
    did not balance (other splits, held-out folds) count 1. A sampler drawing rows in proportion
    to these weights, or a loss weighted by them, sees each class as often as a set of that many
    images would (:meth:`fesaug.data.datasets.ManifestDataset.weights`)."""
    weights = np.ones(len(df), dtype=np.float64)
    labels = df["label"].to_numpy(dtype=np.int64)
    synthetic = (df["origin"] == "synthetic").to_numpy(dtype=bool)
    weights[balanced & synthetic] = synthetic_weight
    for k, c in enumerate(classes):
        real = balanced & ~synthetic & (labels == k)
        n_real, n_syn = int(real.sum()), int((balanced & synthetic & (labels == k)).sum())
        if n_real:
            weights[real] = max(1.0, (targets[c] - synthetic_weight * n_syn) / n_real)
    return weights


def weighted_counts(df: pd.DataFrame, classes: Sequence[str], balanced: np.ndarray) -> dict[str, float]:
    labels, weights = df["label"].to_numpy(dtype=np.int64), df["weight"].to_numpy(dtype=np.float64)
    return {c: round(float(weights[balanced & (labels == k)].sum()), 3) for k, c in enumerate(classes)}


def mean_target_mass(df: pd.DataFrame, classes: Sequence[str]) -> dict[str, float | None]:
    """Per class, the mean ``target_mass`` of its synthetic rows (None without any)."""
    syn = df[df["origin"] == "synthetic"]
    means = syn.groupby("label")["target_mass"].mean() if "target_mass" in syn.columns else pd.Series(dtype=float)
    return {c: (round(float(means[k]), 4) if k in means.index else None) for k, c in enumerate(classes)}


def relocate(m: Manifest, real: pd.DataFrame, out: Path, *, embed: bool) -> tuple[Path, list[dict[str, Any]]]:
    """The output's image root and the real rows' ``image`` structs relative to it.

    Referenced images stay where they are: the root becomes the deepest folder holding both
    them and ``out``, so one relative root serves real and synthetic rows alike.
    """
    images = real["image"].tolist()
    referenced = [Path(m.image_root, im["path"]).resolve().parent for im in images if im.get("bytes") is None]
    if embed:
        positions = {sid: i for i, sid in enumerate(m.df["sample_id"].tolist())}
        structs = [
            {"bytes": m.image_bytes(positions[sid]), "path": im.get("path")} if im.get("bytes") is None else im
            for sid, im in zip(real["sample_id"].tolist(), images)
        ]
        return out.resolve(), structs
    root = Path(os.path.commonpath([str(out.resolve()), *map(str, referenced)])) if referenced else out.resolve()
    structs = [
        im
        if im.get("bytes") is not None
        else {"bytes": None, "path": Path(os.path.relpath(Path(m.image_root, im["path"]).resolve(), root)).as_posix()}
        for im in images
    ]
    return root, structs


def footer(plan: Plan, r: BalanceResult) -> dict[str, Any]:
    """The balanced manifest's footer: the input's, plus how this run made it (``balance``) and what
    the generator saw (``generator_training``, for ``fesaug audit``'s leakage check)."""
    m, gen, cfg = plan.manifest, plan.generator, plan.config
    return {
        **m.inherited_meta(),
        "provenance": provenance("balance", cfg.to_dict()),
        "input_provenance": m.meta.get("provenance"),
        "balance": _run_record(plan, r)
        | _weights_record(r)
        | _gate_records(plan)
        | {
            "gate_passed": r.gate_passed,
            "gate_pass_rates": r.gate_pass_rates,
        },
        "generator_training": {
            gen.checkpoint_sha256: {
                "folds": gen.training_folds,
                # Validation subjects chose the weights, so they count as seen.
                "subjects": sorted(set(gen.training_subjects) | set(gen.validation_subjects)),
            }
        },
        "holdout_folds": plan.holdout_folds,
    }


def _run_record(plan: Plan, r: BalanceResult) -> dict[str, Any]:
    m, gen, cfg = plan.manifest, plan.generator, plan.config
    return {
        "input_manifest": str(m.path),
        "input_manifest_sha256": plan.key["manifest_sha256"],
        "checkpoint": str(gen.checkpoint),
        "checkpoint_sha256": gen.checkpoint_sha256,
        "checkpoint_epoch": gen.epoch,
        "splits": list(cfg.splits),
        "holdout_folds": plan.holdout_folds,
        "output_size": plan.output_size,
        "counts_before": r.counts_before,
        "targets": r.targets,
        "to_generate": r.to_generate,
        "generated": r.generated,
        "removed": r.removed,
        "shortfall": r.shortfall,
        "attempts": r.attempts,
        "acceptance": r.acceptance,
        "min_confidence": cfg.min_confidence,
        "max_attempts": cfg.max_attempts,
        "seed": cfg.seed,
        "source_order": cfg.source_order,
        "judge": "the checkpoint's FER branch",
        "intensity": None if cfg.intensity is None else list(cfg.intensity),
        "class_intensity": {plan.manifest.classes[k]: g for k, g in plan.gains.items()},
        **({"intensity_calibration": plan.calibration} if plan.calibration is not None else {}),
        "synthetic_share": cfg.synthetic_share,
        "synthetic_weight": cfg.synthetic_weight,
        "synthetic_labels": cfg.synthetic_labels,
        **(
            {
                "soft_label_source": cfg.soft_label_source,
                "soft_gamma": cfg.soft_gamma,
                "mean_target_mass": r.mean_target_mass,
            }
            if cfg.soft
            else {}
        ),
    }


def _weights_record(r: BalanceResult) -> dict[str, Any]:
    if r.weighted is None:
        return {}
    return {
        "weighted": r.weighted,
        "weights": "each synthetic row counts synthetic_weight; a class's real rows share the rest of its "
        "target (at least 1 each); rows outside the balanced splits and folds count 1",
    }


def _gate_records(plan: Plan) -> dict[str, Any]:
    """What each optional gate was, for the footer (absent gates are left out)."""
    cfg, gates, out = plan.config, plan.gates, {}
    if gates.au_checker is not None:
        out["au_check"] = {
            "checkpoint": cfg.au_checkpoint,
            "checkpoint_sha256": plan.key["au_checkpoint_sha256"],
            "min_au_consistency": cfg.min_au_consistency,
            "au_ids": gates.au_checker.au_ids,
            "prototypes": "fesaug.data.au.EMOTION_AU_PROTOTYPES",
        }
    if gates.judge is not None:
        out["judge_check"] = {
            "checkpoint": cfg.judge_checkpoint,
            "checkpoint_sha256": plan.key["judge_checkpoint_sha256"],
            "min_judge_confidence": cfg.min_judge_confidence,
            "min_judge_margin": cfg.min_judge_margin,
        }
    if gates.identity is not None:
        out["identity_check"] = {
            "model": "dlib face-recognition ResNet v1 (fesaug.judges.identity)",
            "max_identity_distance": cfg.max_identity_distance,
        }
    if gates.external is not None:
        out["external_check"] = {
            "judge": cfg.external_judge,
            "min_external_confidence": cfg.min_external_confidence,
            "not_judged": [c for c in plan.manifest.classes if not gates.external.known(c)],
        }
    return out
