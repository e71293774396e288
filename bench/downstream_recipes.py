"""Which downstream recipe makes `fesaug evaluate`'s `real` baseline strong? Per fold, selection on validation.

`fesaug evaluate` compares balancing methods through a downstream classifier trained from scratch;
a weak classifier flatters any augmentation (issue #19). This trains the `real` condition of
`fesaug evaluate` (the fold's training subjects, validation subjects carved the same way:
`split_subjects(m, k, 0.15, seed 0)`) with each recipe and reports, per recipe, the validation
macro-F1 (what a choice may look at) and the test fold's accuracy and macro-F1 (reported, never
used to choose). Each (recipe, fold, seed) is cached as JSON in ``--out``, so an interrupted run
resumes; run two processes with one thread each on a 2-core machine.

    OMP_NUM_THREADS=1 python bench/downstream_recipes.py --manifest ck.parquet --out /tmp/dr --folds 0,1,2 \\
        --recipe defaults= --recipe 'ls01_erase=label_smoothing=0.1,erasing=0.5' --recipe 'e120=epochs=120'

A recipe is ``NAME=[key=value,...]`` over :class:`fesaug.evaluate.downstream.DownstreamConfig` (model,
epochs, lr, batch_size, weight_decay, erasing, label_smoothing). ``--write NAME`` also writes every
recipe found in ``--out`` to ``bench/results/NAME.{json,md}``. ``--trainer`` picks the code that
trains: ``fit`` per seed, ``fit_seeds`` (a fold's seeds at once, issue #36), or ``baseline`` (``fit``
as it was before issue #36, imported from git beside today's), so one table compares them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from baseline_code import BEFORE_36, commit_of, load_module_at
from record import command, machine, machine_line, versions_line, write_results

from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import read_manifest
from fesaug.data.splits import manifest_folds, split_subjects
from fesaug.evaluate.downstream import DownstreamConfig, classification_report, fit, fit_seeds, predict_proba
from fesaug.utils.files import atomic_write_text
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table

BASELINE_REF = BEFORE_36


def parse_recipe(text: str) -> tuple[str, dict]:
    name, _, body = text.partition("=")
    fields = {f.name: f.type for f in dataclasses.fields(DownstreamConfig)}
    changes: dict = {}
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in fields:
            sys.exit(f"Error: recipe {name!r}: unknown setting {key!r}; choose from {', '.join(fields)}")
        default = getattr(DownstreamConfig(), key)
        changes[key] = type(default)(value) if not isinstance(default, bool) else value.lower() in ("1", "true", "yes")
    return name, changes


def run_fold(manifest: Path, out: Path, name: str, changes: dict, k: int, seeds: list[int], trainer: str) -> list[dict]:
    """Every seed of one recipe on fold ``k``, each cached as ``out/NAME/fold-K-seed-S.json``.

    ``trainer``: ``fit`` (one call per seed), ``fit_seeds`` (the missing seeds in one call; the
    seconds recorded per seed are the call's divided by its seeds) or ``baseline`` (``fit`` as
    commit ``BASELINE_REF`` had it, imported beside today's: the code before issue #36)."""
    paths = {seed: out / name / f"fold-{k}-seed-{seed}.json" for seed in seeds}
    missing = [seed for seed in seeds if not paths[seed].exists()]
    if missing:
        m = read_manifest(manifest)
        split = split_subjects(m, k, 0.15, 0)
        test_rows = np.flatnonzero((m.df["fold"] == k).to_numpy())
        config = DownstreamConfig(**{"device": "cpu", **changes})
        data = ManifestDataset(m, image_size=config.image_size)
        labels = data.labels
        inputs = (
            data.pixels[split.train_rows],
            labels[split.train_rows],
            data.pixels[split.val_rows],
            labels[split.val_rows],
        )
        start = time.perf_counter()
        if trainer == "fit_seeds":
            results = fit_seeds(*inputs, config, missing, num_classes=len(m.classes))
        else:
            module = load_module_at(BASELINE_REF, "fesaug/evaluate/downstream.py") if trainer == "baseline" else None
            results = [
                module.fit(
                    *inputs,
                    module.DownstreamConfig(**dataclasses.asdict(config) | {"seed": seed}),
                    num_classes=len(m.classes),
                )
                if module is not None
                else fit(*inputs, dataclasses.replace(config, seed=seed), num_classes=len(m.classes))
                for seed in missing
            ]
        seconds = (time.perf_counter() - start) / len(missing)
        for seed, result in zip(missing, results):
            test = classification_report(
                labels[test_rows], predict_proba(result.model, data.pixels[test_rows]).argmax(1), m.classes
            )
            record = {
                "recipe": name,
                "changes": changes,
                "config": dataclasses.asdict(config) | {"seed": seed},
                "trainer": trainer,
                **({"baseline_ref": commit_of(BASELINE_REF)} if trainer == "baseline" else {}),
                "fold": k,
                "seed": seed,
                "best_epoch": result.best_epoch,
                "val_macro_f1": max(h["val_macro_f1"] for h in result.history),
                "val_curve": [round(h["val_macro_f1"], 5) for h in result.history],
                "test_accuracy": test["accuracy"],
                "test_macro_f1": test["macro_f1"],
                "seconds": round(seconds, 1),
                "threads": torch.get_num_threads(),
            }
            paths[seed].parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(paths[seed], json.dumps(record, indent=1))
            print(
                f"{name} fold {k} seed {seed}: val macro-F1 {record['val_macro_f1']:.3f}  test acc "
                f"{record['test_accuracy']:.3f} macro-F1 {record['test_macro_f1']:.3f}  ({seconds:.0f} s, {trainer})",
                flush=True,
            )
    return [json.loads(paths[seed].read_text()) for seed in seeds]


def summarise(out: Path) -> list[dict]:
    rows = []
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        records = [json.loads(f.read_text()) for f in sorted(folder.glob("fold-*-seed-*.json"))]
        if not records:
            continue
        per_fold: dict[int, list[dict]] = {}
        for r in records:
            per_fold.setdefault(r["fold"], []).append(r)

        def mean_over_folds(key: str, per_fold: dict = per_fold) -> tuple[float, float]:
            values = [np.mean([r[key] for r in rs]) for rs in per_fold.values()]
            return float(np.mean(values)), float(np.std(values))

        rows.append(
            {
                "recipe": folder.name,
                "config": records[0]["config"],
                "folds": sorted(per_fold),
                "seeds": sorted({r["seed"] for r in records}),
                "val_macro_f1": mean_over_folds("val_macro_f1"),
                "test_accuracy": mean_over_folds("test_accuracy"),
                "test_macro_f1": mean_over_folds("test_macro_f1"),
                "seconds_per_fit": float(np.mean([r["seconds"] for r in records])),
                "trainer": records[0].get("trainer", "fit"),
                "val_per_run": {f"{r['fold']}-{r['seed']}": r["val_macro_f1"] for r in records},
            }
        )
    return rows


def paired_difference(row: dict, reference: dict) -> str:
    """Mean ± std over the (fold, seed) runs both have of row's validation macro-F1 minus the reference's."""
    shared = sorted(set(row["val_per_run"]) & set(reference["val_per_run"]))
    if not shared or row is reference:
        return ""
    d = np.array([row["val_per_run"][k] - reference["val_per_run"][k] for k in shared])
    return f"{100 * d.mean():+.2f} ± {100 * d.std():.2f} ({len(d)})"


def table(rows: list[dict], reference: str | None = None) -> list[str]:
    # Each recipe by its recorded settings where the rows differ, not by its changes to the
    # defaults of the day: the defaults move (they are chosen from tables like this one).
    varying = (
        [
            k
            for k in rows[0]["config"]
            if k not in ("seed", "device") and len({json.dumps(r["config"].get(k)) for r in rows}) > 1
        ]
        if rows
        else []
    )
    ref = next((r for r in rows if r["recipe"] == reference), None)
    header = ["recipe", "trainer", "settings", "folds", "seeds", "val macro-F1", "test accuracy", "test macro-F1"]
    header += ["s per fit"] + ([f"val points vs {reference}, paired"] if ref else [])
    return markdown_table(
        header,
        [
            [
                r["recipe"],
                r.get("trainer", "fit"),
                ", ".join(f"{k}={r['config'].get(k)}" for k in varying),
                f"{len(r['folds'])} ({','.join(map(str, r['folds']))})",
                len(r["seeds"]),
                f"{r['val_macro_f1'][0]:.3f} ± {r['val_macro_f1'][1]:.3f}",
                f"{r['test_accuracy'][0]:.3f} ± {r['test_accuracy'][1]:.3f}",
                f"{r['test_macro_f1'][0]:.3f} ± {r['test_macro_f1'][1]:.3f}",
                f"{r['seconds_per_fit']:.0f}",
                *([paired_difference(r, ref)] if ref else []),
            ]
            for r in rows
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--folds", default="all")
    parser.add_argument("--seeds", type=int, default=1, help="downstream seeds per fold (0 .. N-1)")
    parser.add_argument("--recipe", action="append", default=[], metavar="NAME=[key=value,...]")
    parser.add_argument(
        "--trainer",
        choices=["fit", "fit_seeds", "baseline"],
        default="fit",
        help="fit: one call per seed; fit_seeds: a fold's seeds trained at once; baseline: fit as commit "
        f"{BASELINE_REF} (before issue #36) had it",
    )
    parser.add_argument("--write", metavar="NAME", help="also write bench/results/NAME.{json,md}")
    parser.add_argument("--reference", help="a recipe the others are compared with, paired by fold and seed")
    parser.add_argument("--note", default="", help="a paragraph for the written table")
    args = parser.parse_args()
    m = read_manifest(args.manifest)
    folds = manifest_folds(m) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    for text in args.recipe:
        name, changes = parse_recipe(text)
        for k in folds:
            run_fold(args.manifest, args.out, name, changes, k, list(range(args.seeds)), args.trainer)
    rows = summarise(args.out)
    print("\n".join(table(rows, args.reference)))
    if args.write:
        result = {
            "note": args.note,
            "reference": args.reference,
            "manifest": str(args.manifest),
            "machine": machine(),
            "versions": package_versions(),
            "command": command(),
            "recipes": rows,
        }
        write_results(args.write, result, render(result))


def render(r: dict) -> str:
    return "\n".join(
        [
            f"# Downstream recipes for `fesaug evaluate`'s classifier ({Path(r['manifest']).name})",
            "",
            r["note"],
            "",
            "Protocol: the `real` condition of `fesaug evaluate` per test fold k (training subjects of the other "
            "folds, "
            "15 % of them as validation subjects, subject-grouped and stratified, seed 0); each recipe's best "
            "validation "
            "epoch; the test fold scored once. Choose on the validation column only.",
            "",
            f"Machine: {machine_line(r['machine'])}. Versions: {versions_line(r['versions'])}. Command: "
            f"`{r['command']}`",
            "",
            *table(r["recipes"], r.get("reference")),
            "",
        ]
    )


if __name__ == "__main__":
    main()
