"""Compare several ``fesaug evaluate`` runs (recipes) on validation first, then report test.

A recipe must be chosen without looking at the test folds, so for each run this reads, per fold
and condition, the downstream model's best *validation* macro-F1 (the epoch ``fit`` kept) next
to the test scores of ``results.json``. The run with the best mean validation macro-F1 of
``fes`` is the one a user could have picked; the table shows every run's test numbers anyway.

    python bench/compare_evaluations.py --run default=eval-ck --run e80=eval-ck-e80 \\
        --out bench/results/evaluate_ckplus --machine "one H100, 10 fold processes"

``--earlier FILE.json`` adds the recipes of an earlier comparison (its ``runs``). When the runs
did not all finish the same folds, a second table compares them on the folds they share, paired
per fold, so a recipe run on fewer folds (e.g. on a CPU) is not compared with other folds' luck.

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from record import write_results

from fesaug.evaluate.report import EXPRESSION_JUDGE
from fesaug.evaluate.stats import paired_comparison
from fesaug.utils.tables import markdown_table

TARGETS = (
    "fes macro-F1 >= real + 2 points and >= oversample + 1 point; minority recall >= real + 5 points; "
    "synthetic images recognised as their target by the real classifier >= 90 %"
)


def _validation(run: Path, condition: str) -> dict[str, float]:
    """Per fold, the best validation macro-F1 of ``condition``, averaged over its downstream seeds."""

    def best(path: Path) -> float:
        return max(h["val_macro_f1"] for h in json.loads(path.read_text())["history"])

    folds = sorted(run.glob("fold-*/"), key=lambda p: int(p.name[5:]))
    return {
        f.name[5:]: float(
            np.mean([best(f / f"{condition}.json"), *map(best, (f / "seeds").glob(f"{condition}-*.json"))])
        )
        for f in folds
        if (f / f"{condition}.json").exists()
    }


def _seed_macro_f1(run: Path, condition: str) -> dict[str, list[float]]:
    """Per fold, the test macro-F1 of each downstream seed of ``condition`` (first seed first)."""
    out = {}
    for f in sorted(run.glob("fold-*/"), key=lambda p: int(p.name[5:])):
        paths = [f / f"{condition}.json", *sorted((f / "seeds").glob(f"{condition}-*.json"))]
        if paths[0].exists():
            out[f.name[5:]] = [json.loads(p.read_text())["test"]["macro_f1"] for p in paths]
    return out


def summarise(name: str, run: Path) -> dict:
    results = json.loads((run / "results.json").read_text())
    settings = json.loads((run / "evaluate.json").read_text())
    conds = results["conditions"]
    seeds = max(results["conditions"]["fes"].get("seeds_per_fold", [1]))
    if seeds > 1:  # fes's scores are means over seeds per fold: say so wherever the recipe is named
        name = f"{name} [{seeds} downstream seeds]"
    out = {
        "name": name,
        "command": results["provenance"]["command"],
        "settings": settings["config"],
        "protocol": results["protocol"],
        "folds": [int(k) for k in results["per_fold"]],
        "validation_per_fold": {c: _validation(run, c) for c in ("real", "oversample", "fes", "mixed") if c in conds},
        "test": {
            c: {m: conds[c][m] for m in ("accuracy", "macro_f1", "minority_recall")} | {"recall": conds[c]["recall"]}
            for c in conds
        },
        "comparisons": results["comparisons"],
        "per_fold": results["per_fold"],
        "synthesis": results["synthesis"],
        "seconds": results["seconds"],
        "versions": results["provenance"]["versions"],
    }
    out["validation_macro_f1"] = {c: float(np.mean(list(v.values()))) for c, v in out["validation_per_fold"].items()}
    if seeds > 1:
        out["seed_macro_f1"] = {c: _seed_macro_f1(run, c) for c in ("real", "oversample", "fes", "mixed") if c in conds}
    out["sibling_trained"] = results["protocol"]["generator"].get("expression_loss_judge") == EXPRESSION_JUDGE
    fes, real, over = (conds[c]["macro_f1"]["mean"] for c in ("fes", "real", "oversample"))
    out["targets"] = {
        "fes_vs_real_macro_f1": fes - real >= 0.02,
        "fes_vs_oversample_macro_f1": fes - over >= 0.01,
        "minority_recall_vs_real": conds["fes"]["minority_recall"]["mean"] - conds["real"]["minority_recall"]["mean"]
        >= 0.05,
        "recognised_90": (results["synthesis"].get("recognised") or {}).get("mean", 0) >= 0.90,
    }
    return out


def _recognised(run: dict) -> str:
    stat = run["synthesis"].get("recognised")
    return "–" if not stat else f"{stat['mean'] * 100:.1f} %"


def _ms(stat: dict | None) -> str:
    if not stat or stat.get("mean") is None:  # runs made before a score existed
        return "–"
    return f"{stat['mean'] * 100:.1f} ± {stat['std'] * 100:.1f}"


def _machines(runs: list[dict], machine: str) -> list[str]:
    def text(r: dict) -> str:
        return f"{r.get('machine') or machine}. Versions: {', '.join(f'{k} {v}' for k, v in r['versions'].items())}"

    if len({text(r) for r in runs}) == 1:
        return [f"Machine: {text(runs[0])}."]
    return [
        "Machines (scores of different machines and versions differ even for `real`; compare recipes by "
        "their paired differences):",
        "",
        *[f"- {r['name']}: {text(r)}." for r in runs],
    ]


def _synthesis_row(r: dict) -> list[str]:
    s = r["synthesis"]
    if not s.get("recognised"):  # run with --no-synthesis
        return [r["name"], "–", "not scored (`--no-synthesis`)", "–", "–", "–"]
    cas, fr, mem = s["classification_accuracy_score"], s["frechet"], s["memorisation"]
    real_test = f"{_ms(s.get('real_test_recognised'))}{' %' if s.get('real_test_recognised') else ''}"
    return [
        r["name"],
        s["n_synthetic"],
        f"{_ms(s['recognised'])} % ({real_test})",
        f"{_ms(cas['accuracy'])} / {_ms(cas['macro_f1'])} %",
        f"{fr['synthetic_vs_train']['mean']:.1f} ({fr['validation_vs_train']['mean']:.1f})",
        f"{mem['near_copies']} ({mem['share']['mean'] * 100:.1f} %)",
    ]


def render(runs: list[dict], machine: str, dataset: str = "CK+48") -> str:
    # Validation means over different folds are not comparable: no choice then.
    same_folds = len({tuple(r["folds"]) for r in runs}) == 1
    chosen = max(runs, key=lambda r: r["validation_macro_f1"]["fes"]) if same_folds else None
    lines = [
        f"# fesaug evaluate on {dataset}: {len(runs)} recipe(s)",
        "",
        *_machines(runs, machine),
        "",
    ]
    rows = []
    for r in runs:
        v, t, c = r["validation_macro_f1"], r["test"], r["comparisons"]
        d_real, d_over = c["fes_vs_real"]["macro_f1"], c["fes_vs_oversample"]["macro_f1"]
        rows.append(
            [
                f"{r['name']}{' (chosen on validation)' if r is chosen else ''}",
                f"{v['real'] * 100:.1f} / {v['oversample'] * 100:.1f} / {v['fes'] * 100:.1f}",
                _ms(t["real"]["macro_f1"]),
                _ms(t["oversample"]["macro_f1"]),
                _ms(t["fes"]["macro_f1"]),
                f"{d_real['mean_difference'] * 100:+.1f} ({d_real['wins']}/{d_real['losses']}, p "
                f"{d_real['wilcoxon_p']:.3f})",
                f"{d_over['mean_difference'] * 100:+.1f} ({d_over['wins']}/{d_over['losses']}, p "
                f"{d_over['wilcoxon_p']:.3f})",
                f"{t['real']['minority_recall']['mean'] * 100:.1f} → {t['fes']['minority_recall']['mean'] * 100:.1f}",
                f"{_recognised(r)}{' †' if r.get('sibling_trained') else ''}",
                f"{sum(r['targets'].values())}/4",
            ]
        )
    header = [
        "recipe",
        "val macro-F1 real / oversample / fes",
        "test macro-F1 real",
        "oversample",
        "fes",
        "fes − real",
        "fes − oversample",
        "minority recall real → fes",
        "recognised",
        "targets met",
    ]
    lines += markdown_table(header, rows)
    lines += ["", f"Targets: {TARGETS}."]
    if any(r.get("sibling_trained") for r in runs):
        lines += [
            "",
            "† The generator was trained against a classifier of the same recipe and data as the `real` classifier "
            "that counts this share (another seed): it measures how well fooling one transfers to the other, "
            "not realism; the classification accuracy score below is the check.",
        ]
    lines += [
        "",
        "Synthesis quality (mean ± std over folds):",
        "",
    ]
    lines += markdown_table(
        [
            "recipe",
            "synthetic images",
            "recognised by `real` (its real test faces)",
            "classification accuracy score (acc / macro-F1)",
            "Fréchet synthetic vs train (real val vs train)",
            "near-copies of another subject",
        ],
        [_synthesis_row(r) for r in runs],
    )
    scored = [r for r in runs if r["synthesis"].get("per_class")]
    if scored:
        lines += [
            "",
            f"Recognised per target class (%, {scored[0]['name']}): "
            + ", ".join(
                f"{c} {e['recognised']['mean'] * 100:.0f}"
                for c, e in scored[0]["synthesis"]["per_class"].items()
                if e["n"]
            ),
        ]
    lines += ["", "The command that wrote each run's results.json (the last process to aggregate it):", ""]
    lines += [f"- {r['name']}: `{r['command']}`" for r in runs]
    return "\n".join(lines) + "\n"


def on_folds(run: dict, folds: list[int]) -> dict:
    """Test macro-F1 of real / oversample / fes, the paired fes comparisons and the validation
    macro-F1 of fes (None for comparisons recorded before it was kept per fold) on ``folds`` only."""
    per = [run["per_fold"][str(k)] for k in folds]
    f1 = {c: [p[c]["macro_f1"] for p in per] for c in ("real", "oversample", "fes")}
    val = run.get("validation_per_fold", {}).get("fes", {})
    return {
        "folds": folds,
        "macro_f1": {c: float(np.mean(v)) for c, v in f1.items()},
        "validation_fes": float(np.mean([val[str(k)] for k in folds])) if all(str(k) in val for k in folds) else None,
        "fes_vs_real": paired_comparison(f1["fes"], f1["real"]),
        "fes_vs_oversample": paired_comparison(f1["fes"], f1["oversample"]),
    }


def render_common(runs: list[dict], folds: list[int]) -> str:
    lines = [
        f"## On the folds every run finished ({', '.join(map(str, folds))})",
        "",
    ]

    def diff(d: dict) -> str:
        p = "–" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.3f}"
        return f"{d['mean_difference'] * 100:+.1f} ({d['wins']}/{d['losses']}, p {p})"

    rows = []
    for r in runs:
        c = r["common_folds"]
        val = "–" if c.get("validation_fes") is None else f"{c['validation_fes'] * 100:.1f}"
        f1 = c["macro_f1"]
        rows.append(
            [
                r["name"],
                val,
                f"{f1['real'] * 100:.1f}",
                f"{f1['oversample'] * 100:.1f}",
                f"{f1['fes'] * 100:.1f}",
                diff(c["fes_vs_real"]),
                diff(c["fes_vs_oversample"]),
            ]
        )
    header = ["recipe", "val macro-F1 fes", "test macro-F1 real", "oversample", "fes", "fes − real", "fes − oversample"]
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def render_fine_tuning(runs: list[dict]) -> str:
    """The paper's recipe (FERSNet's FER branch fine-tuned on real + synthetic) next to the branch
    itself and to the same fine-tuning on oversampled real faces, for the runs that have them."""
    having = [r for r in runs if "fersnet+fes" in r["test"]]
    if not having:
        return ""
    names = ("fersnet", "fersnet+fes", "fersnet+oversample")
    lines = [
        "## The paper's recipe: fine-tuning FERSNet's FER branch",
        "",
    ]
    rows = []
    for r in having:

        def diff(key: str, r: dict = r) -> str:
            c = r["comparisons"].get(key)
            if not c:
                return "–"
            d, p = c["macro_f1"], c["macro_f1"]["wilcoxon_p"]
            return (
                f"{d['mean_difference'] * 100:+.1f} ({d['wins']}/{d['losses']} of {len(c['folds'])}, "
                f"p {'–' if p is None else f'{p:.3f}'})"
            )

        folds = " / ".join(str(r["test"][n]["macro_f1"]["n"]) if n in r["test"] else "0" for n in names)
        rows.append(
            [
                r["name"],
                folds,
                *(_ms(r["test"][n]["macro_f1"]) if n in r["test"] else "–" for n in names),
                diff("fersnet+fes_vs_fersnet"),
                diff("fersnet+fes_vs_fersnet+oversample"),
            ]
        )
    header = [
        "recipe",
        "folds",
        "test macro-F1 fersnet",
        "fersnet+fes",
        "fersnet+oversample",
        "fersnet+fes − fersnet",
        "fersnet+fes − fersnet+oversample",
    ]
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def render_mixed(runs: list[dict]) -> str:
    """``mixed`` (half of each shortfall synthetic, half real repeats) next to ``oversample`` and
    ``fes``, with the validation score that could have chosen between them."""
    having = [r for r in runs if "mixed" in r["test"]]
    if not having:
        return ""
    lines = [
        "## Half synthetic, half repeated: the `mixed` condition",
        "",
    ]
    rows = []
    for r in having:
        v, t, c = r["validation_macro_f1"], r["test"], r["comparisons"]

        def diff(key: str, c: dict = c) -> str:
            d = c[key]["macro_f1"]
            p = "–" if d["wilcoxon_p"] is None else f"{d['wilcoxon_p']:.3f}"
            return f"{d['mean_difference'] * 100:+.1f} ({d['wins']}/{d['losses']}, p {p})"

        rows.append(
            [
                r["name"],
                t["mixed"]["macro_f1"]["n"],
                f"{v['oversample'] * 100:.1f} / {v['fes'] * 100:.1f} / {v['mixed'] * 100:.1f}",
                _ms(t["mixed"]["macro_f1"]),
                diff("mixed_vs_real"),
                diff("mixed_vs_oversample"),
                " / ".join(f"{t[n]['minority_recall']['mean'] * 100:.1f}" for n in ("oversample", "fes", "mixed")),
            ]
        )
    header = [
        "recipe",
        "folds",
        "val macro-F1 oversample / fes / mixed",
        "test macro-F1 mixed",
        "mixed − real",
        "mixed − oversample",
        "minority recall oversample / fes / mixed",
    ]
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def render_seed_spread(runs: list[dict]) -> str:
    """How far one fold's test macro-F1 moves when only the downstream seed changes."""
    having = [r for r in runs if r.get("seed_macro_f1")]
    if not having:
        return ""
    lines = [
        "## Seed spread: the same fold, data and recipe, another downstream seed",
        "",
    ]
    rows = []
    for r in having:
        for c, folds in r["seed_macro_f1"].items():
            spread = {k: max(v) - min(v) for k, v in folds.items()}
            worst = max(spread, key=spread.get)
            per_seed = " / ".join(f"{x * 100:.1f}" for x in folds[worst])
            rows.append(
                [
                    r["name"],
                    c,
                    "/".join(map(str, sorted({len(v) for v in folds.values()}))),
                    f"{np.mean(list(spread.values())) * 100:.1f}",
                    f"{spread[worst] * 100:.1f} (fold {worst}: {per_seed})",
                ]
            )
    header = [
        "recipe",
        "condition",
        "seeds per fold",
        "mean range within a fold",
        "largest range (fold: macro-F1 per seed)",
    ]
    lines += markdown_table(header, rows)
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--out", required=True, type=Path, help="path without extension")
    parser.add_argument("--machine", default="")
    parser.add_argument("--dataset", default="CK+48", help="the data the runs evaluated, for the title")
    parser.add_argument("--note", type=Path, help="Markdown appended to the table (protocol, conclusions)")
    parser.add_argument(
        "--earlier",
        type=Path,
        action="append",
        default=[],
        metavar="FILE.json",
        help="an earlier comparison whose recipes are added (their machine is in that file)",
    )
    args = parser.parse_args()
    runs = [summarise(*item.split("=", 1)[:1], Path(item.split("=", 1)[1])) for item in args.run]
    for path in args.earlier:
        earlier = json.loads(path.read_text())
        runs += [r | {"machine": r.get("machine", earlier["machine"])} for r in earlier["runs"]]
    for r in runs[: len(args.run)]:
        r["machine"] = args.machine
    common = sorted(set.intersection(*(set(r["folds"]) for r in runs)))
    uneven = any(r["folds"] != common for r in runs)
    for r in runs:
        r["common_folds"] = on_folds(r, common)
    extra = [
        part
        for part in (
            render_common(runs, common) if uneven else "",
            render_seed_spread(runs),
            render_mixed(runs),
            render_fine_tuning(runs),
        )
        if part
    ]
    text = (
        render(runs, args.machine, args.dataset)
        + "".join(f"\n{part}" for part in extra)
        + (f"\n{args.note.read_text()}" if args.note else "")
    )
    write_results(args.out.stem, {"machine": args.machine, "targets": TARGETS, "runs": runs}, text, args.out.parent)
    print(text)


if __name__ == "__main__":
    main()
