"""Issue #35's lever runs: each synthesis recipe against oversampling and the truth ceiling.

Every recipe is one ``fesaug evaluate`` run on the demo set with the conditions ``real``,
``oversample``, ``fes``, ``truth`` and ``truth-half`` (``truth``: the exact counterfactuals of the
sources balance uses, what a perfect generator earns), so each row says how much of the gap between
oversampling and the truth the recipe's synthetic faces close. Recipes that leave the generator as
it is reuse one set of trained generators (``--generators``, an earlier evaluation of the same
manifest: ``--generators-from``); the others train their own.

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

from fesaug.evaluate.stats import paired_comparison
from fesaug.utils.tables import markdown_table

CONDITIONS = "real,oversample,fes,truth,truth-half"
FESAUG = str(Path(sys.executable).with_name("fesaug"))


def run_recipe(name: str, extra: str, args: argparse.Namespace) -> Path:
    """One recipe's ``fesaug evaluate`` (resumes what an earlier run of it cached)."""
    out = args.work / name
    cmd = [
        FESAUG, "evaluate", "--manifest", str(args.manifest), "--out", str(out), "--device", "cpu",
        "--generator-epochs", str(args.generator_epochs), "--conditions", CONDITIONS,
        "--downstream-seeds", str(args.seeds), "--no-synthesis", "--judges", "none", *shlex.split(extra),
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


def summarise(name: str, extra: str, run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    val = {c: best_validation(run, c) for c in CONDITIONS.split(",")}
    folds = sorted(set(val["fes"]) & set(val["oversample"]))
    val_diff = paired_comparison([val["fes"][k] for k in folds], [val["oversample"][k] for k in folds])
    c, test = results["comparisons"], results["conditions"]
    return {
        "name": name,
        "args": extra,
        "command": results["provenance"]["command"],
        "folds": folds,
        "validation_macro_f1": {k: float(np.mean(list(v.values()))) for k, v in val.items() if v},
        "validation_fes_minus_oversample": val_diff,
        "test_macro_f1": {k: s["macro_f1"] for k, s in test.items()},
        "fes_vs_oversample": c["fes_vs_oversample"]["macro_f1"],
        "truth_vs_oversample": c["truth_vs_oversample"]["macro_f1"],
        "truth_half_vs_oversample": c["truth-half_vs_oversample"]["macro_f1"],
        "gap_closed": results["gap_closed"],
        "versions": results["provenance"]["versions"],
    }


def _pm(d: dict) -> str:
    p = "–" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.2f}"
    return f"{d['mean_difference'] * 100:+.1f} ({d['wins']}/{d['losses']}, p {p})"


def render(rows: list[dict], machine: str) -> str:
    chosen = max(rows, key=lambda r: r["validation_fes_minus_oversample"]["mean_difference"])
    table = [
        [
            f"{r['name']}{' (chosen on validation)' if r is chosen else ''}",
            f"`{r['args']}`" if r["args"] else "today's defaults",
            _pm(r["validation_fes_minus_oversample"]),
            f"{r['test_macro_f1']['oversample']['mean'] * 100:.1f}",
            f"{r['test_macro_f1']['fes']['mean'] * 100:.1f}",
            f"{r['test_macro_f1']['truth']['mean'] * 100:.1f}",
            _pm(r["fes_vs_oversample"]),
            _pm(r["truth_vs_oversample"]),
            "–" if r["gap_closed"]["fes"]["overall"] is None else f"{r['gap_closed']['fes']['overall']:.0%}",
            _pm(r["truth_half_vs_oversample"]),
        ]
        for r in rows
    ]
    header = ["recipe", "arguments", "val fes − oversample", "test oversample", "fes", "truth", "fes − oversample"]
    header += ["truth − oversample", "gap closed by fes", "truth-half − oversample"]
    return "\n".join(
        [
            "# Synthesis levers on the demo set: how much of the gap to the truth ceiling each recipe closes",
            "",
            f"Machine: {machine}. Versions: {', '.join(f'{k} {v}' for k, v in rows[0]['versions'].items())}.",
            "",
            "Protocol: `fesaug evaluate` on the demo set (its 5 subject-independent folds), conditions "
            f"{CONDITIONS}, the downstream classifier's defaults, macro-F1 in points (folds won/lost, two-sided "
            "Wilcoxon p). Rule fixed before the test folds were read: the recipe with the highest mean validation "
            "macro-F1 of `fes` minus `oversample` is chosen; every recipe's test numbers are shown.",
            "",
            *markdown_table(header, table, align="llrrrrrrrr"),
            "",
            "Commands:",
            "",
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
    ap.add_argument("--generator-epochs", type=int, default=30)
    ap.add_argument("--folds", default="all")
    ap.add_argument("--jobs", type=int, default=1, help="recipes evaluated at once (one thread each)")
    ap.add_argument("--machine", default="2-core CPU box (no GPU), one thread per process")
    ap.add_argument("--name", default="synthesis_levers_demo", help="results file name in bench/results/")
    args = ap.parse_args()
    recipes = [r.partition("=")[::2] for r in args.recipe]
    with ThreadPoolExecutor(args.jobs) as pool:
        runs = list(pool.map(lambda r: run_recipe(r[0], r[1], args), recipes))
    rows = [summarise(name, extra, run) for (name, extra), run in zip(recipes, runs)]
    write_results(args.name, {"machine": args.machine, "recipes": rows}, render(rows, args.machine))


if __name__ == "__main__":
    main()
