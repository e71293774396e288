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
recipe found in ``--out`` to ``bench/results/NAME.{json,md}``.
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
from record import command, machine, machine_line, versions_line, write_results

from fesaug.data.datasets import ManifestDataset
from fesaug.data.manifest import read_manifest
from fesaug.data.splits import manifest_folds, split_subjects
from fesaug.evaluate.downstream import DownstreamConfig, classification_report, fit, predict_proba
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table


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


def run_one(manifest: Path, out: Path, name: str, changes: dict, k: int, seed: int) -> dict:
    path = out / name / f"fold-{k}-seed-{seed}.json"
    if path.exists():
        return json.loads(path.read_text())
    m = read_manifest(manifest)
    split = split_subjects(m, k, 0.15, 0)
    test_rows = np.flatnonzero((m.df["fold"] == k).to_numpy())
    config = DownstreamConfig(**{"device": "cpu", **changes, "seed": seed})
    data = ManifestDataset(m, image_size=config.image_size)
    labels = data.labels
    start = time.perf_counter()
    result = fit(
        data.pixels[split.train_rows],
        labels[split.train_rows],
        data.pixels[split.val_rows],
        labels[split.val_rows],
        config,
        num_classes=len(m.classes),
    )
    seconds = time.perf_counter() - start
    test = classification_report(
        labels[test_rows], predict_proba(result.model, data.pixels[test_rows]).argmax(1), m.classes
    )
    record = {
        "recipe": name,
        "changes": changes,
        "config": dataclasses.asdict(config),
        "fold": k,
        "seed": seed,
        "best_epoch": result.best_epoch,
        "val_macro_f1": max(h["val_macro_f1"] for h in result.history),
        "test_accuracy": test["accuracy"],
        "test_macro_f1": test["macro_f1"],
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    tmp.replace(path)
    print(
        f"{name} fold {k} seed {seed}: val macro-F1 {record['val_macro_f1']:.3f}  test acc "
        f"{record['test_accuracy']:.3f} "
        f"macro-F1 {record['test_macro_f1']:.3f}  ({seconds:.0f} s)",
        flush=True,
    )
    return record


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
            }
        )
    return rows


def table(rows: list[dict]) -> list[str]:
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
    header = ["recipe", "settings", "folds", "seeds", "val macro-F1", "test accuracy", "test macro-F1", "s per fit"]
    return markdown_table(
        header,
        [
            [
                r["recipe"],
                ", ".join(f"{k}={r['config'].get(k)}" for k in varying),
                f"{len(r['folds'])} ({','.join(map(str, r['folds']))})",
                len(r["seeds"]),
                f"{r['val_macro_f1'][0]:.3f} ± {r['val_macro_f1'][1]:.3f}",
                f"{r['test_accuracy'][0]:.3f} ± {r['test_accuracy'][1]:.3f}",
                f"{r['test_macro_f1'][0]:.3f} ± {r['test_macro_f1'][1]:.3f}",
                f"{r['seconds_per_fit']:.0f}",
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
    parser.add_argument("--write", metavar="NAME", help="also write bench/results/NAME.{json,md}")
    parser.add_argument("--note", default="", help="a paragraph for the written table")
    args = parser.parse_args()
    m = read_manifest(args.manifest)
    folds = manifest_folds(m) if args.folds == "all" else [int(f) for f in args.folds.split(",")]
    for text in args.recipe:
        name, changes = parse_recipe(text)
        for k in folds:
            for seed in range(args.seeds):
                run_one(args.manifest, args.out, name, changes, k, seed)
    rows = summarise(args.out)
    print("\n".join(table(rows)))
    if args.write:
        result = {
            "note": args.note,
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
            *table(r["recipes"]),
            "",
        ]
    )


if __name__ == "__main__":
    main()
