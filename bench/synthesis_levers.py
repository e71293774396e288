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
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from record import write_results

from fesaug.data.manifest import read_manifest
from fesaug.evaluate.aggregate import fold_records
from fesaug.evaluate.stats import paired_comparison
from fesaug.utils.files import atomic_write_text
from fesaug.utils.tables import markdown_table

CONDITIONS = "real,oversample,fes,truth,truth-half"  # the reference's; the other recipes train fes only
FESAUG = str(Path(sys.executable).with_name("fesaug"))


def evaluate_command(name: str, extra: str, args: argparse.Namespace, reference: bool) -> list[str]:
    """One recipe's ``fesaug evaluate`` (it resumes what an earlier run of it cached)."""
    cmd = [
        FESAUG, "evaluate", "--manifest", str(args.manifest), "--out", str(args.work / name), "--device", "cpu",
        "--generator-epochs", str(args.generator_epochs),
        "--conditions", args.reference_conditions if reference else "fes",
        "--downstream-seeds", str(args.seeds),
        *(["--judges", args.reference_synthesis] if reference and args.reference_synthesis else
          ["--no-synthesis", "--judges", "none"]),
        *shlex.split(args.downstream), *shlex.split(extra),
    ]  # fmt: skip
    if args.generators and "--generator-config" not in extra:
        cmd += ["--generators-from", str(args.generators)]
    return cmd


def run_recipes(recipes: list[tuple[str, str]], args: argparse.Namespace) -> list[Path]:
    """Every recipe's evaluation, one process per (recipe, fold) and ``--jobs`` at a time (one
    thread each: the fold processes of one ``--out`` each hold their own fold's lock), the
    reference's folds first since they train the most; then one call per recipe over all its
    folds, which only aggregates what the fold processes cached."""
    folds = (
        args.folds.split(",")
        if args.folds != "all"
        else sorted({str(int(k)) for k in read_manifest(args.manifest).df["fold"].dropna()}, key=int)
    )
    commands = [evaluate_command(name, extra, args, reference=i == 0) for i, (name, extra) in enumerate(recipes)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    args.work.mkdir(parents=True, exist_ok=True)

    lock = threading.Lock()

    def run(name: str, cmd: list[str], fold: str | None) -> None:
        suffix = f"-fold-{fold}" if fold is not None else ""
        start = time.perf_counter()
        with open(args.work / f"{name}{suffix}.log", "a") as log:
            log.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(cmd)}\n")
            log.flush()
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        # Each finished process's wall time, kept across invocations (an interrupted one resumes from its
        # cached trainings): their sum over the jobs at a time is the comparison's cost on that many cores.
        with lock:
            path = args.work / "tasks.json"
            tasks = json.loads(path.read_text()) if path.exists() else []
            tasks.append({"recipe": name, "fold": fold, "jobs": args.jobs, "seconds": time.perf_counter() - start})
            atomic_write_text(path, json.dumps(tasks, indent=1))

    tasks = [(name, cmd + ["--folds", k], k) for (name, _), cmd in zip(recipes, commands) for k in folds]
    with ThreadPoolExecutor(args.jobs) as pool:
        list(pool.map(lambda t: run(*t), tasks))
    for (name, _), cmd in zip(recipes, commands):
        run(name, cmd + ["--folds", ",".join(folds)], None)
    return [args.work / name for name, _ in recipes]


def _seeds(record: dict) -> list[dict]:
    return [record, *record.get("seeds", ())]


def _test(seed: dict, view: str) -> dict:
    """A seed's test scores: ``retuned``, what the run kept (the re-tuned layer where validation chose
    it); ``trained``, the trained layer's, recorded beside the re-tune (or the only ones without it)."""
    return seed["retune_head"]["test_before"] if view == "trained" and "retune_head" in seed else seed["test"]


def _val(seed: dict, view: str) -> float:
    """A seed's validation macro-F1 of the model ``view`` scores (the re-tune keeps its layer only
    where validation rose, so the kept model's score is the larger one)."""
    trained = max(h["val_macro_f1"] for h in seed["history"])
    retune = seed.get("retune_head")
    if view == "trained" or not retune or not retune.get("applied"):
        return trained
    return max(trained, retune["val_macro_f1_after"])


def has_view(run: Path, view: str) -> bool:
    """Whether ``run`` re-tuned its last layers (so both views exist) or, for ``trained``, at all ran."""
    return view == "trained" or any("retune_head" in r for f in fold_records(run).values() for r in f.values())


def per_fold(run: Path, condition: str, view: str = "trained", validation: bool = False) -> dict[str, float]:
    """Per fold, ``condition``'s test (or best validation) macro-F1 in ``view``, averaged over its seeds."""
    out = {}
    for k, records in fold_records(run).items():
        if condition in records:
            seeds = _seeds(records[condition])
            values = [_val(s, view) if validation else _test(s, view)["macro_f1"] for s in seeds]
            out[str(k)] = float(np.mean(values))
    return out


def summarise(name: str, extra: str, run: Path, ref: Path, view: str) -> dict:
    """A recipe's ``fes`` (in ``view``) against the reference's ``oversample`` and ``truth`` in the
    same view, paired per fold; a recipe that trains its own ``oversample`` and ``truth`` is
    compared with those instead."""
    base = run if per_fold(run, "oversample") else ref
    ceiling = run if per_fold(run, "truth") else ref
    fes, over, truth = per_fold(run, "fes", view), per_fold(base, "oversample", view), per_fold(ceiling, "truth", view)
    folds = sorted(set(fes) & set(over), key=int)
    ceiling_known = all(k in truth for k in folds)  # only the demo set has exact counterfactuals
    val_fes = per_fold(run, "fes", view, validation=True)
    val_over = per_fold(base, "oversample", view, validation=True)
    gain = float(np.mean([fes[k] for k in folds]) - np.mean([over[k] for k in folds]))
    gap = float(np.mean([truth[k] for k in folds]) - np.mean([over[k] for k in folds])) if ceiling_known else 0.0
    records, reference = fold_records(run), fold_records(ref)
    short = {k: r["fes"].get("not_oversampled") for k, r in records.items() if "fes" in r}
    for k, r in records.items():  # a gate that rejects faces no other source replaces leaves a class short
        wanted = reference.get(k, {}).get("fes", {}).get("train_counts", {})
        got = r.get("fes", {}).get("train_counts", {})
        below = [f"{c} {got[c]}/{n}" for c, n in wanted.items() if c in got and got[c] < n]
        if below:
            short[k] = f"short of the reference's counts ({', '.join(below)})"

    return {
        "name": name if view == "trained" else f"{name}+crt",
        "args": extra,
        "view": view,
        "folds": folds,
        "validation_fes_minus_oversample": paired_comparison([val_fes[k] for k in folds], [val_over[k] for k in folds]),
        "test_fes": float(np.mean([fes[k] for k in folds])),
        "test_fes_std": float(np.std([fes[k] for k in folds], ddof=1)) if len(folds) > 1 else 0.0,
        "fes_vs_oversample": paired_comparison([fes[k] for k in folds], [over[k] for k in folds]),
        "fes_vs_truth": paired_comparison([fes[k] for k in folds], [truth[k] for k in folds])
        if ceiling_known
        else None,
        "gap_closed": gain / gap if abs(gap) >= 0.005 else None,
        "gap_closed_per_fold": {
            k: (fes[k] - over[k]) / (truth[k] - over[k]) if ceiling_known and abs(truth[k] - over[k]) >= 0.005 else None
            for k in folds
        },
        "own_oversample": base is run and run != ref,
        "train_counts_per_fold": {k: r["fes"]["train_counts"] for k, r in records.items() if "fes" in r},
        "flags": [f"fold {k}: {v}" for k, v in short.items() if v],
        "command": json.loads((run / "results.json").read_text())["provenance"]["command"],
    }


def reference_summary(ref: Path, conditions: list[str]) -> dict:
    """The reference's test and validation macro-F1 per condition, and each condition against
    ``oversample``, in every view it has."""
    test = json.loads((ref / "results.json").read_text())
    out: dict = {"versions": test["provenance"]["versions"], "command": test["provenance"]["command"], "views": {}}
    for view in ("trained", "retuned"):
        if not has_view(ref, view):
            continue
        scores = {c: per_fold(ref, c, view) for c in conditions}
        over = scores.get("oversample", {})
        folds = sorted(over, key=int)
        out["views"][view] = {
            "test_macro_f1": {c: float(np.mean(list(v.values()))) for c, v in scores.items()},
            "test_macro_f1_std": {
                c: float(np.std(list(v.values()), ddof=1)) if len(v) > 1 else 0.0 for c, v in scores.items()
            },
            "validation_macro_f1": {
                c: float(np.mean(list(per_fold(ref, c, view, validation=True).values()))) for c in conditions
            },
            "vs_oversample": {
                c: paired_comparison([v[k] for k in folds], [over[k] for k in folds])
                for c, v in scores.items()
                if c not in ("oversample", "fes") and over
            },
        }
    return out


def _pm(d: dict) -> str:
    p = "–" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.2f}"
    return f"{d['mean_difference'] * 100:+.1f} ({d['wins']}/{d['losses']}, p {p})"


def render(rows: list[dict], ref: dict, args: argparse.Namespace, timing: list[dict]) -> str:
    chosen = max(rows, key=lambda r: r["validation_fes_minus_oversample"]["mean_difference"])
    table = [
        [
            f"{r['name']}{' (chosen on validation)' if r is chosen else ''}",
            f"`{r['args']}`" if r["args"] else "today's defaults",
            "re-tuned" if r["view"] == "retuned" else "trained",
            _pm(r["validation_fes_minus_oversample"]),
            f"{r['test_fes'] * 100:.1f} ± {r['test_fes_std'] * 100:.1f}",
            _pm(r["fes_vs_oversample"]),
            "–" if r["gap_closed"] is None else f"{r['gap_closed']:.0%}",
            ", ".join("–" if v is None else f"{v:.0%}" for v in r["gap_closed_per_fold"].values()),
            "; ".join([*(["against its own oversample and truth"] if r.get("own_oversample") else []), *r["flags"]]),
        ]
        for r in rows
    ]
    header = ["recipe", "arguments", "last layer", "val fes − oversample", "test fes ± std", "fes − oversample"]
    header += ["gap closed", "per fold", "flags"]
    reference = []
    for view, v in ref["views"].items():
        t, sd, c = v["test_macro_f1"], v["test_macro_f1_std"], v["vs_oversample"]
        parts = [
            f"{k} {t[k] * 100:.1f} ± {sd[k] * 100:.1f}" + (f" ({_pm(c[k])})" if k in c else "") for k in t if k != "fes"
        ]  # fmt: skip
        reference.append(f"{'re-tuned' if view == 'retuned' else 'trained'} last layer: {', '.join(parts)}")
    return "\n".join(
        [
            f"# Synthesis levers on {args.dataset}: each recipe against oversampling"
            + (" and the truth ceiling" if any(r["gap_closed"] is not None for r in rows) else ""),
            "",
            f"Machine: {args.machine}. Versions: {', '.join(f'{k} {v}' for k, v in ref['versions'].items())}.",
            "",
            f"Protocol: `fesaug evaluate` on {args.dataset}, folds {', '.join(rows[0]['folds'])}, "
            f"{args.seeds} downstream seeds per fold, downstream `{args.downstream or 'defaults'}`; macro-F1 in "
            "points (folds won/lost, two-sided Wilcoxon p). Reference run (the first recipe), test macro-F1 (mean ± "
            "std over folds of each fold's seed mean) with each condition against `oversample`: "
            f"{'; '.join(reference)}. "
            "Every recipe's `fes` is paired per fold with the reference's `oversample` and `truth` whose last layer "
            "was made the same way: as trained, or re-tuned on the real faces (`--retune-head`: both come from the "
            "same networks, the trained layer's test scores are recorded beside the re-tuned ones). Rule fixed "
            "before the test folds were read: the recipe with the highest mean validation macro-F1 of `fes` minus "
            "the paired `oversample` is chosen (a re-tuned layer's validation score is the one it was kept for); "
            "every recipe's test numbers are shown.",
            "",
            *markdown_table(header, table, align="lllrrrrll"),
            "",
            f"Wall time of all the runs: {sum(t['seconds'] for t in timing) / 3600:.2f} h over {len(timing)} "
            f"invocation(s) of this script, with {', '.join(sorted({str(t['jobs']) for t in timing}))} fold "
            "process(es) of one thread at a time (an invocation that found every fold cached only aggregates).",
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
    ap.add_argument("--reference-conditions", default=CONDITIONS, help="the first recipe's conditions")
    ap.add_argument(
        "--reference-synthesis",
        metavar="JUDGES",
        help="the reference run also writes each fold's synthesis report, scored by these judges (e.g. fer2013)",
    )
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--dataset", default="the demo set", help="what the manifest is, for the table's title")
    ap.add_argument(
        "--downstream", default="", help="downstream options for every run, e.g. '--image-size 48 --epochs 30'"
    )
    ap.add_argument("--generator-epochs", type=int, default=30)
    ap.add_argument("--folds", default="all")
    ap.add_argument("--jobs", type=int, default=1, help="fold processes at once (one thread each)")
    ap.add_argument("--machine", default="2-core CPU box (no GPU), one thread per process")
    ap.add_argument("--name", default="synthesis_levers_demo", help="results file name in bench/results/")
    args = ap.parse_args()
    recipes = [r.partition("=")[::2] for r in args.recipe]
    start = time.perf_counter()
    runs = run_recipes(recipes, args)
    ref = runs[0]
    # Each invocation's wall time, kept across resumed invocations: the whole comparison's cost.
    timing_file = args.work / "timing.json"
    timing = json.loads(timing_file.read_text()) if timing_file.exists() else []
    timing.append({"jobs": args.jobs, "seconds": time.perf_counter() - start, "finished": time.strftime("%FT%T")})
    atomic_write_text(timing_file, json.dumps(timing, indent=1))
    rows = [
        summarise(name, extra, run, ref, view)
        for (name, extra), run in zip(recipes, runs)
        for view in ("trained", "retuned")
        if has_view(run, view) and has_view(ref, view)
    ]
    reference = reference_summary(ref, args.reference_conditions.split(","))
    result = {"machine": args.machine, "downstream": args.downstream, "reference": reference, "recipes": rows,
              "timing": timing}  # fmt: skip
    write_results(args.name, result, render(rows, reference, args, timing))


if __name__ == "__main__":
    main()
