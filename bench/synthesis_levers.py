"""Issue #35's lever runs: each synthesis recipe against oversampling and the truth ceiling.

The first recipe is the reference: one ``fesaug evaluate`` run on the demo set with the conditions
``real``, ``oversample``, ``fes``, ``truth`` and ``truth-half`` (``truth``: the exact counterfactuals
of the sources balance uses, what a perfect generator earns). Every other recipe trains ``fes`` only
and is paired, fold by fold, with the reference's ``oversample`` and ``truth``: neither depends on
how synthetic faces are made or gated, only on the per-class counts, which every recipe here keeps
(a recipe whose ``fes`` falls short of its targets is flagged). So each row says how much of the gap
between oversampling and the truth the recipe's synthetic faces close. Recipes that leave the
generator as it is reuse one set of trained generators (``--generators``, an earlier evaluation of
the same manifest: ``--generators-from``); the others train their own.

The decision rule is fixed before any test fold is looked at: a recipe is chosen by its mean
*validation* macro-F1 of ``fes`` minus that of ``oversample`` (each condition's best validation
epoch, averaged over downstream seeds, paired per fold). Test numbers are reported for every recipe.

    OMP_NUM_THREADS=1 .venv/bin/python bench/synthesis_levers.py --manifest demo/manifest.parquet \\
        --generators /work/runs/demo-gen --work /work/runs/levers \\
        --recipe 'defaults=' --recipe 'soft=--synthetic-labels soft --intensity 0.5..1.5' \\
        --name synthesis_levers_demo

Resumable: each recipe's evaluation caches its folds; a finished recipe only aggregates again.
Writes ``bench/results/<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from record import write_results

from fesaug.evaluate.aggregate import fold_records
from fesaug.evaluate.stats import fold_metric, paired_comparison
from fesaug.utils.tables import markdown_table

CONDITIONS = "real,oversample,fes,truth,truth-half"  # the reference's; the other recipes train fes only
FESAUG = str(Path(sys.executable).with_name("fesaug"))


def run_recipe(name: str, extra: str, args: argparse.Namespace, reference: bool) -> Path:
    """One recipe's ``fesaug evaluate`` (resumes what an earlier run of it cached)."""
    out = args.work / name
    cmd = [
        FESAUG, "evaluate", "--manifest", str(args.manifest), "--out", str(out), "--device", "cpu",
        "--generator-epochs", str(args.generator_epochs), "--conditions", CONDITIONS if reference else "fes",
        "--downstream-seeds", str(args.seeds), "--no-synthesis", "--judges", "none",
        *shlex.split(args.downstream), *shlex.split(extra),
    ]  # fmt: skip
    if args.generators and "--generator-config" not in extra:
        cmd += ["--generators-from", str(args.generators)]
    if args.folds != "all":
        cmd += ["--folds", args.folds]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args.work.mkdir(parents=True, exist_ok=True)
    with open(args.work / f"{name}.log", "a") as log:
        subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    return out


def best_validation(run: Path, condition: str) -> dict[str, float]:
    """Per fold, ``condition``'s best validation macro-F1 (the epoch fit kept), averaged over its seeds."""

    def best(path: Path) -> float:
        return max(h["val_macro_f1"] for h in json.loads(path.read_text())["history"])

    out = {}
    for fold in sorted(run.glob("fold-*/"), key=lambda p: int(p.name[5:])):
        first = fold / f"{condition}.json"
        if first.exists():
            out[fold.name[5:]] = float(np.mean([best(first), *map(best, (fold / "seeds").glob(f"{condition}-*.json"))]))
    return out


def per_fold(run: Path, condition: str) -> dict[str, float]:
    """Per fold, ``condition``'s test macro-F1, averaged over its downstream seeds."""
    return {str(k): fold_metric(r[condition], "macro_f1", ()) for k, r in fold_records(run).items() if condition in r}


def summarise(name: str, extra: str, run: Path, ref: Path) -> dict:
    """A recipe's ``fes`` against the reference's ``oversample`` and ``truth``, paired per fold; a
    recipe that changes the training of every condition (``--retune-head``) also trains its own
    ``oversample`` and ``truth``, which it is compared with instead."""
    base = run if per_fold(run, "oversample") else ref
    ceiling = run if per_fold(run, "truth") else ref
    fes, over, truth = per_fold(run, "fes"), per_fold(base, "oversample"), per_fold(ceiling, "truth")
    folds = sorted(set(fes) & set(over) & set(truth), key=int)
    val_fes, val_over = best_validation(run, "fes"), best_validation(base, "oversample")
    gain = float(np.mean([fes[k] for k in folds]) - np.mean([over[k] for k in folds]))
    gap = float(np.mean([truth[k] for k in folds]) - np.mean([over[k] for k in folds]))
    records, reference = fold_records(run), fold_records(ref)
    short = {k: r["fes"].get("not_oversampled") for k, r in records.items() if "fes" in r}
    for k, r in records.items():  # a gate that rejects faces no other source replaces leaves a class short
        wanted = reference.get(k, {}).get("fes", {}).get("train_counts", {})
        got = r.get("fes", {}).get("train_counts", {})
        below = [f"{c} {got[c]}/{n}" for c, n in wanted.items() if c in got and got[c] < n]
        if below:
            short[k] = f"short of the reference's counts ({', '.join(below)})"

    return {
        "name": name,
        "args": extra,
        "folds": folds,
        "validation_fes_minus_oversample": paired_comparison([val_fes[k] for k in folds], [val_over[k] for k in folds]),
        "test_fes": float(np.mean([fes[k] for k in folds])),
        "fes_vs_oversample": paired_comparison([fes[k] for k in folds], [over[k] for k in folds]),
        "fes_vs_truth": paired_comparison([fes[k] for k in folds], [truth[k] for k in folds]),
        "gap_closed": gain / gap if abs(gap) >= 0.005 else None,
        "gap_closed_per_fold": {
            k: (fes[k] - over[k]) / (truth[k] - over[k]) if abs(truth[k] - over[k]) >= 0.005 else None for k in folds
        },
        "own_oversample": base is run and run != ref,
        "train_counts_per_fold": {k: r["fes"]["train_counts"] for k, r in records.items() if "fes" in r},
        "flags": [f"fold {k}: {v}" for k, v in short.items() if v],
        "command": json.loads((run / "results.json").read_text())["provenance"]["command"],
    }


def reference_summary(ref: Path) -> dict:
    test = json.loads((ref / "results.json").read_text())
    c = test["comparisons"]
    return {
        "test_macro_f1": {k: s["macro_f1"] for k, s in test["conditions"].items()},
        "truth_vs_oversample": c["truth_vs_oversample"]["macro_f1"],
        "truth_half_vs_oversample": c["truth-half_vs_oversample"]["macro_f1"],
        "validation_macro_f1": {
            k: float(np.mean(list(best_validation(ref, k).values()))) for k in CONDITIONS.split(",")
        },
        "versions": test["provenance"]["versions"],
        "command": test["provenance"]["command"],
    }


def _pm(d: dict) -> str:
    p = "–" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.2f}"
    return f"{d['mean_difference'] * 100:+.1f} ({d['wins']}/{d['losses']}, p {p})"


def render(rows: list[dict], ref: dict, args: argparse.Namespace) -> str:
    chosen = max(rows, key=lambda r: r["validation_fes_minus_oversample"]["mean_difference"])
    t = ref["test_macro_f1"]
    table = [
        [
            f"{r['name']}{' (chosen on validation)' if r is chosen else ''}",
            f"`{r['args']}`" if r["args"] else "today's defaults",
            _pm(r["validation_fes_minus_oversample"]),
            f"{r['test_fes'] * 100:.1f}",
            _pm(r["fes_vs_oversample"]),
            "–" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}",
            ", ".join("–" if v is None else f"{v:.0%}" for v in r["gap_closed_per_fold"].values()),
            "; ".join([*(["against its own oversample and truth"] if r.get("own_oversample") else []), *r["flags"]]),
        ]
        for r in rows
    ]
    header = ["recipe", "arguments", "val fes − oversample", "test fes", "fes − oversample", "gap closed"]
    header += ["per fold", "flags"]
    return "\n".join(
        [
            "# Synthesis levers on the demo set: how much of the gap to the truth ceiling each recipe closes",
            "",
            f"Machine: {args.machine}. Versions: {', '.join(f'{k} {v}' for k, v in ref['versions'].items())}.",
            "",
            f"Protocol: `fesaug evaluate` on the demo set, folds {', '.join(rows[0]['folds'])}, "
            f"{args.seeds} downstream seeds per fold, downstream `{args.downstream}`; macro-F1 in points (folds "
            "won/lost, two-sided Wilcoxon p). Reference run (the first recipe): test macro-F1 "
            f"real {t['real']['mean'] * 100:.1f}, oversample {t['oversample']['mean'] * 100:.1f}, "
            f"truth {t['truth']['mean'] * 100:.1f} ({_pm(ref['truth_vs_oversample'])} over oversample), "
            f"truth-half {t['truth-half']['mean'] * 100:.1f} ({_pm(ref['truth_half_vs_oversample'])}). "
            "Every recipe's `fes` is paired per fold with the reference's `oversample` and `truth`. Rule fixed "
            "before the test folds were read: the recipe with the highest mean validation macro-F1 of `fes` minus "
            "the reference's `oversample` is chosen; every recipe's test numbers are shown.",
            "",
            *markdown_table(header, table, align="llrrrrll"),
            "",
            "Commands:",
            "",
            f"- reference: `{ref['command']}`",
            *[f"- {r['name']}: `{r['command']}`" for r in rows],
            "",
        ]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True, help="folder for the recipes' evaluations")
    ap.add_argument("--generators", type=Path, help="an evaluation of the same manifest whose generators to reuse")
    ap.add_argument("--recipe", action="append", required=True, metavar="NAME=ARGS")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--downstream", default="", help="downstream options for every run, e.g. '--image-size 48 --epochs 30'"
    )
    ap.add_argument("--generator-epochs", type=int, default=30)
    ap.add_argument("--folds", default="all")
    ap.add_argument("--jobs", type=int, default=1, help="recipes evaluated at once (one thread each)")
    ap.add_argument("--machine", default="2-core CPU box (no GPU), one thread per process")
    ap.add_argument("--name", default="synthesis_levers_demo", help="results file name in bench/results/")
    args = ap.parse_args()
    recipes = [r.partition("=")[::2] for r in args.recipe]
    ref = run_recipe(*recipes[0], args, reference=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = [ref, *pool.map(lambda r: run_recipe(r[0], r[1], args, reference=False), recipes[1:])]
    rows = [summarise(name, extra, run, ref) for (name, extra), run in zip(recipes, runs)]
    reference = reference_summary(ref)
    result = {"machine": args.machine, "downstream": args.downstream, "reference": reference, "recipes": rows}
    write_results(args.name, result, render(rows, reference, args))


if __name__ == "__main__":
    main()
