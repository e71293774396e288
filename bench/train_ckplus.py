"""FERSNet on CK+48: the subject-independent 10-fold protocol, FER branch accuracy per fold.

For each recipe, sharing mode and test fold k: `fesaug train --holdout-fold k --config RECIPE`
(model selection on a validation split of the training subjects; fold k is never seen), then the
best checkpoint's FER branch classifies every image of fold k, once as it is and once averaged
with the mirror image (`Generator.classify(flip=True)`), and the validation faces the same two
ways. Choose a recipe on the validation columns only; the test columns are the final score.
Runs go in parallel, one thread each (faster than two threads per run on a small shared CPU).
Each finished fold is cached in WORK/<recipe>-<sharing>-f<k>/, so an interrupted benchmark
resumes; the folds recorded in bench/results/fersnet_ckplus.json count as finished too, so a fresh
clone (whose WORK is empty) resumes the benchmark where the committed results stop and its report
keeps them.

    .venv/bin/python bench/train_ckplus.py --epochs 20 --sharing convflu --folds all
    .venv/bin/python bench/train_ckplus.py --recipe recognition=bench/recipes/recognition.yaml --folds 0,1
    .venv/bin/python bench/train_ckplus.py --import-evaluate eval-ck --folds all

`--import-evaluate` takes the generators a `fesaug evaluate` run trained (fold-K/fersnet/: the
same `fesaug train --holdout-fold K` with validation subjects from the training subjects, the
default recipe) as the runs of recipe `today`, instead of training them again.

Issue #19's per-lever breakdown runs each lever of the recognition recipe alone on today's defaults
(`bench/recipes/lever_*.yaml`; the length lever with `--epochs 45`); the report pairs every run,
fold by fold, with the run it changes one thing of (`reference_run`).

Results: bench/results/fersnet_ckplus.json and .md (every recipe and mode found in WORK).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from record import PYTHON, REPO, RESULTS, machine, machine_line, write_results

from fesaug.evaluate.stats import paired_comparison
from fesaug.utils.tables import markdown_table

CKPLUS = REPO.parent / "shared" / "data" / "ckplus48"
LAST_EPOCHS = 5
BASE_RECIPE, BASE_SHARING = "today", "convflu"  # what the other runs change
RECORDED = RESULTS / "fersnet_ckplus.json"  # this benchmark's committed results


def fold_key(r: dict) -> tuple:
    """What makes two fold records the same measurement; the recipe file relative to the
    repository, as records name it, so they match on any clone."""
    return r.get("recipe", "today"), r["config"] and repo_path(Path(r["config"])), r["sharing"], r["epochs"], r["fold"]


def recorded_folds(path: Path = RECORDED) -> dict[tuple, dict]:
    """The fold records of the committed results, by :func:`fold_key`. Checkpoints stay on the
    machine that trained them; these records travel with the repository."""
    if not path.exists():
        return {}
    runs = json.loads(path.read_text())["runs"].values()
    return {fold_key(r): r for s in runs for r in s["per_fold"]}


def run_fold(
    manifest: Path, work: Path, recipe: str, config: Path | None, sharing: str, fold: int, epochs: int, seed: int
) -> dict:
    run = work / f"{recipe}-{sharing}-f{fold}"
    done = run / "fold_result.json"
    if done.exists():
        return load_fold_result(done)
    key = fold_key(
        {"recipe": recipe, "config": config and str(config), "sharing": sharing, "epochs": epochs, "fold": fold}
    )
    if key in (recorded := recorded_folds()):
        return recorded[key]
    cmd = [
        sys.executable,
        "-m",
        "fesaug",
        "train",
        "--manifest",
        str(manifest),
        "--out",
        str(run),
        "--holdout-fold",
        str(fold),
        "--sharing",
        sharing,
        "--epochs",
        str(epochs),
        "--seed",
        str(seed),
        "--device",
        "cpu",
    ]
    cmd += ["--config", str(config)] if config else []
    resume = (run / "checkpoints" / "last.pt").exists()
    subprocess.run(
        cmd + (["--resume"] if resume else ["--overwrite"]),
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        stdout=subprocess.DEVNULL,
    )
    result = {
        "recipe": recipe,
        "config": repo_path(config) if config else None,
        "sharing": sharing,
        "fold": fold,
        "train_command": " ".join(cmd),
        **evaluate(manifest, run, fold),
    }
    done.write_text(json.dumps(result, indent=2))
    return result


def repo_path(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it, so records read the same on any clone."""
    path = path.resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def last_epochs_val_acc(metrics: list[dict], n: int = LAST_EPOCHS) -> float:
    """Mean validation accuracy over the last ``n`` epochs. The best epoch's accuracy is the
    maximum of a noisy curve, so it flatters a recipe whose curve is noisier (no averaging of the
    weights, a higher learning rate); a mean over the last epochs compares recipes on even terms."""
    return float(np.mean([r["val_fer_acc"] for r in metrics[-n:]]))


def training_seconds(metrics: list[dict]) -> float:
    """The fold's training time, every epoch's, over all the sessions that resumed it (the time
    of the process that finished it is only the last part)."""
    return round(sum(r["epoch_seconds"] for r in metrics), 1)


def load_fold_result(path: Path) -> dict:
    """A cached fold's result, with what older records lack or recorded otherwise recomputed from
    its metrics (the validation mean over the last epochs; the training time, once the last
    session's wall time under the name ``wall_s``)."""
    from fesaug.utils.runlog import read_metrics

    r = json.loads(path.read_text())
    r.setdefault("train_s", r.pop("wall_s", None))
    if (path.parent / "metrics.jsonl").exists():
        metrics = read_metrics(path.parent / "metrics.jsonl")
        r |= {"val_acc_last_epochs": last_epochs_val_acc(metrics), "train_s": training_seconds(metrics)}
    return r


def import_evaluated(manifest: Path, work: Path, evaluated: Path, fold: int) -> dict | None:
    """A finished fold generator of a `fesaug evaluate` folder as a run of recipe `today`."""
    from fesaug.synthesis.training import run_config
    from fesaug.utils.runlog import read_metrics

    run = evaluated / f"fold-{fold}" / "fersnet"
    if not (run / "checkpoints" / "best.pt").exists():
        return None
    config, metrics = run_config(run), read_metrics(run / "metrics.jsonl")
    if len(metrics) < config.epochs:
        return None
    sharing = config.model.get("sharing", "convflu")
    command = json.loads((run / "provenance.json").read_text())["command"]
    result = {
        "recipe": "today",
        "config": None,
        "sharing": sharing,
        "fold": fold,
        "train_command": f"{command} (its fold-{fold}/fersnet)",
        **evaluate(manifest, run, fold),
    }
    out = work / f"today-{sharing}-f{fold}"
    out.mkdir(parents=True, exist_ok=True)
    (out / "fold_result.json").write_text(json.dumps(result, indent=2))
    return result


def evaluate(manifest: Path, run: Path, fold: int) -> dict:
    """The FER branch of ``run``'s best.pt on its validation subjects and on test fold ``fold``,
    each as it is and mirrored; the epochs trained and the best one."""
    import torch

    from fesaug import load_generator
    from fesaug.data.datasets import ManifestDataset
    from fesaug.data.manifest import read_manifest
    from fesaug.evaluate.downstream import classification_report
    from fesaug.utils.runlog import read_metrics

    torch.set_num_threads(1)
    m = read_manifest(manifest)
    gen = load_generator(run / "checkpoints" / "best.pt", device="cpu")
    real = m.df["origin"].to_numpy() == "real"
    rows = {
        "test": np.flatnonzero(m.df["fold"].to_numpy() == fold),
        "val": np.flatnonzero(m.df["subject_id"].isin(gen.validation_subjects).to_numpy() & real),
    }
    scores: dict = {}
    for part, idx in rows.items():
        data = ManifestDataset(m, rows=idx, image_size=gen.image_size)
        for suffix, flip in (("", False), ("_flip", True)):
            report = classification_report(
                data.labels, gen.classify(data.pixels, flip=flip).argmax(1).numpy(), m.classes
            )
            scores[f"{part}_acc{suffix}"] = report["accuracy"]
            if part == "test":
                scores[f"test_recall{suffix}"] = {c: report["recall"][c] for c in m.classes if report["support"][c]}
        scores[f"{part}_images"] = int(len(idx))
    metrics = read_metrics(run / "metrics.jsonl")
    best = [r for r in metrics if r.get("best")][-1]  # the epoch best.pt was saved from
    return {
        **scores,
        "epochs": int(gen.config["epochs"]),
        "best_epoch": best["epoch"],
        "best_val_fer_acc": best.get("val_fer_acc"),
        "val_acc_last_epochs": last_epochs_val_acc(metrics),
        "train_s": training_seconds(metrics),
        "train_images_per_s": float(np.median([r["images_per_s"] for r in metrics if "images_per_s" in r])),
    }


def report(work: Path, parallel: int) -> None:
    import torch

    # What WORK holds replaces the committed record of the same fold (it may be a rerun).
    results = recorded_folds() | {fold_key(r): r for r in map(load_fold_result, work.glob("*/fold_result.json"))}
    runs: dict[str, list[dict]] = {}
    for r in results.values():
        runs.setdefault(f"{r.get('recipe', 'today')} / {r['sharing']}", []).append(r)
    summary = {
        "benchmark": "FERSNet FER branch on CK+48, subject-independent 10-fold (StratifiedGroupKFold, seed 0)",
        "protocol": (
            "7 classes (anger, contempt, disgust, fear, happy, sadness, surprise), 981 images of 118 subjects, "
            "48x48 crops upscaled to 64x64 (cpu preset); per test fold k: train with --holdout-fold k, select "
            "best.pt on a validation split of the training subjects (15 %), score its FER branch on those "
            "validation faces (for choosing a recipe) and on every image of fold k (the result); seed 0, no "
            "pre-training"
        ),
        "machine": machine(threads=1) | {"runs_in_parallel": parallel},
        "torch": torch.__version__,
        "paper": "97.35% (ICPR 2020 Table: CK+ 7 classes, 10-fold, no pre-training, 96x96)",
        "runs": {},
    }
    for name, rs in sorted(runs.items()):
        rs = sorted(rs, key=lambda r: r["fold"])
        summary["runs"][name] = {
            "recipe": rs[0].get("recipe", "today"),
            "config": rs[0]["config"] and repo_path(Path(rs[0]["config"])),
            "sharing": rs[0]["sharing"],
            "epochs": rs[0]["epochs"],
            "folds": [r["fold"] for r in rs],
            **{
                f"mean_{key}": float(np.mean([r[key] for r in rs]))
                for key in ("val_acc", "val_acc_flip", "val_acc_last_epochs", "test_acc", "test_acc_flip")
                if all(key in r for r in rs)
            },
            "std_test_acc": float(np.std([r["test_acc"] for r in rs])),
            "mean_train_s": float(np.mean([r["train_s"] for r in rs])),
            "median_train_images_per_s": float(np.median([r["train_images_per_s"] for r in rs])),
            "mean_recall": {
                c: float(
                    np.average(
                        [r["test_recall"][c] for r in rs if c in r["test_recall"]],
                        weights=[r["test_images"] for r in rs if c in r["test_recall"]],
                    )
                )
                for c in rs[0]["test_recall"]
            },
            "per_fold": rs,
        }
    # Means over different folds do not compare (a fold's difficulty moves accuracy by points):
    # the same statistics over the folds every run covers. A run still under way would shrink those
    # to its few folds: they are the folds of the runs that cover the most, and a run that does not
    # cover them all is left out of that table (the paired table has it).
    most = max((len(s["folds"]) for s in summary["runs"].values()), default=0)
    covering = [set(s["folds"]) for s in summary["runs"].values() if len(s["folds"]) == most]
    common = sorted(set.intersection(*covering)) if covering else []
    summary["common_folds"] = common
    for s in summary["runs"].values():
        if not set(common) <= set(s["folds"]):
            continue
        on_common = [r for r in s["per_fold"] if r["fold"] in common]
        s["on_common_folds"] = {
            key: float(np.mean([r[key] for r in on_common]))
            for key in ("val_acc", "val_acc_last_epochs", "test_acc", "test_acc_flip")
            if on_common and all(key in r for r in on_common)
        }
    summary["paired"] = paired_differences(summary["runs"])
    text = render(summary)
    write_results("fersnet_ckplus", summary, text)
    print(text)


def reference_run(name: str, runs: dict[str, dict]) -> str | None:
    """The run ``name`` is measured against: the same recipe with ConvFLU when it changes the
    sharing (does selective sharing help?), else today's defaults with ConvFLU (what does the
    recipe, or its one lever, do?)."""
    s = runs[name]
    ref = f"{s['recipe']} / {BASE_SHARING}" if s["sharing"] != BASE_SHARING else f"{BASE_RECIPE} / {BASE_SHARING}"
    return ref if ref != name and ref in runs else None


def paired_differences(runs: dict[str, dict]) -> dict[str, dict]:
    """Each run minus its :func:`reference_run`, fold by fold on the folds both cover: a fold's
    difficulty moves accuracy by points, so only paired differences say what a change did."""
    out = {}
    for name in runs:
        ref = reference_run(name, runs)
        if ref is None:
            continue
        a, b = ({r["fold"]: r for r in runs[n]["per_fold"]} for n in (name, ref))
        folds = sorted(set(a) & set(b))
        if not folds:
            continue
        out[name] = {
            "reference": ref,
            "folds": folds,
            **{
                key: paired_comparison([a[k][key] for k in folds], [b[k][key] for k in folds])
                for key in ("val_acc_last_epochs", "test_acc")
            },
        }
    return out


def render(summary: dict) -> str:
    m = summary["machine"]
    pct = lambda v: "–" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = [
        "# FERSNet on CK+48 (10-fold, subject-independent)",
        "",
        summary["protocol"] + ".",
        "",
        f"Machine: {machine_line(m)} per run, {m['runs_in_parallel']} runs in parallel; torch {summary['torch']}. "
        f"Paper: {summary['paper']}.",
        "",
        "Accuracy in %; *mirrored*: each face's probabilities averaged with its mirror image's.",
        "",
        f"*Validation, last {LAST_EPOCHS} epochs*: the mean of the validation accuracy over the last {LAST_EPOCHS} "
        "epochs; the best epoch's is the maximum of a noisy curve and flatters a noisier recipe.",
        "",
    ]
    header = ["recipe / sharing", "epochs", "folds", "validation acc (mirrored)"]
    header += [f"validation, last {LAST_EPOCHS} epochs", "test acc ± std (mirrored)", "training per fold"]
    header += ["train images/s"]
    lines += markdown_table(
        header,
        [
            [
                name,
                s["epochs"],
                f"{len(s['folds'])} ({','.join(map(str, s['folds']))})",
                f"{pct(s.get('mean_val_acc'))} ({pct(s.get('mean_val_acc_flip'))})",
                pct(s.get("mean_val_acc_last_epochs")),
                f"{pct(s['mean_test_acc'])} ± {pct(s['std_test_acc'])} ({pct(s.get('mean_test_acc_flip'))})",
                f"{s['mean_train_s']:.0f} s",
                f"{s['median_train_images_per_s']:.0f}",
            ]
            for name, s in summary["runs"].items()
        ],
    )
    if len(summary["runs"]) > 1 and summary["common_folds"]:
        lines += [
            "",
            f"On the folds every run covers ({','.join(map(str, summary['common_folds']))}; a run on fewer "
            "folds is only in the paired table below), the only fair comparison of the rows:",
            "",
        ]
        rows = []
        for name, s in summary["runs"].items():
            if "on_common_folds" not in s:
                continue
            c = s["on_common_folds"]
            keys = ("val_acc", "val_acc_last_epochs", "test_acc", "test_acc_flip")
            rows.append([name, *(pct(c.get(k)) for k in keys)])
        header = ["recipe / sharing", "validation acc", f"validation, last {LAST_EPOCHS} epochs", "test acc"]
        lines += markdown_table([*header, "test acc mirrored"], rows)
    if summary.get("paired"):
        lines += [
            "",
            "Each run minus the run it changes one thing of (the same recipe with ConvFLU, else today's "
            "defaults with ConvFLU), paired over the folds both cover; points of accuracy, folds won/lost, "
            "two-sided Wilcoxon signed-rank p:",
            "",
        ]

        def cell(c: dict) -> str:
            p = "–" if c["wilcoxon_p"] is None else format(c["wilcoxon_p"], ".3f")
            return f"{100 * c['mean_difference']:+.1f} ({c['wins']}/{c['losses']}, p {p})"

        lines += markdown_table(
            ["recipe / sharing", "minus", "folds", f"validation, last {LAST_EPOCHS} epochs", "test acc"],
            [
                [name, d["reference"], len(d["folds"]), cell(d["val_acc_last_epochs"]), cell(d["test_acc"])]
                for name, d in summary["paired"].items()
            ],
        )
    lines += [
        "",
        "Per fold (test accuracy, best epoch by validation accuracy):",
        "",
    ]
    rows = []
    for name, s in summary["runs"].items():
        by_fold = {r["fold"]: r for r in s["per_fold"]}
        rows.append(
            [
                name,
                *(
                    f"{pct(by_fold[k]['test_acc'])} (e{by_fold[k]['best_epoch']})" if k in by_fold else "–"
                    for k in range(10)
                ),
            ]
        )
    lines += markdown_table(["recipe / sharing", *(f"f{k}" for k in range(10))], rows)
    classes = list(next(iter(summary["runs"].values()))["per_fold"][0]["test_recall"])
    lines += [
        "",
        "Test recall per class (mean over the folds run, weighted by fold size):",
        "",
    ]
    lines += markdown_table(
        ["recipe / sharing", *classes],
        [[name, *(pct(s["mean_recall"][c]) for c in classes)] for name, s in summary["runs"].items()],
    )
    lines += [
        "",
        "Recipes (`--config` of `fesaug train`): "
        + "; ".join(
            f"{s['recipe']}: {('`' + s['config'] + '`') if s['config'] else 'the defaults'}"
            for s in {s["recipe"]: s for s in summary["runs"].values()}.values()
        )
        + ".",
        "",
        f"Command per fold: `fesaug train --manifest ck.parquet --out WORK/RECIPE-SHARING-fK --holdout-fold K "
        "--sharing SHARING --epochs N --seed 0 --device cpu [--config RECIPE.yaml]` (then the FER branch of best.pt); "
        f"this table: `{PYTHON} bench/train_ckplus.py --recipe NAME=RECIPE.yaml --sharing convflu,hard,none "
        "--epochs N`.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        action="append",
        default=[],
        metavar="NAME=CONFIG",
        help="a recipe: a name and a fesaug train --config YAML (repeatable; default: today=the defaults)",
    )
    parser.add_argument("--sharing", default="convflu")
    parser.add_argument("--folds", default="all")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fesaug-bench/ckplus"))
    parser.add_argument(
        "--import-evaluate",
        type=Path,
        metavar="DIR",
        help="take the fold generators of this fesaug evaluate folder as recipe `today` (trains nothing)",
    )
    args = parser.parse_args()
    if not CKPLUS.is_dir():
        sys.exit(f"CK+48 not found at {CKPLUS}; this benchmark needs the research-only data beside the checkout")
    recipes = [(r.split("=", 1)[0], Path(r.split("=", 1)[1]).resolve()) for r in args.recipe] or [("today", None)]
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "ck.parquet"
    if not manifest.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "fesaug",
                "ingest",
                str(CKPLUS),
                "--preset",
                "ckplus",
                "--folds",
                "10",
                "--out",
                str(manifest),
            ],
            check=True,
        )
    folds = list(range(10)) if args.folds == "all" else [int(k) for k in args.folds.split(",")]
    if args.import_evaluate:
        for k in folds:
            r = import_evaluated(manifest, args.work, args.import_evaluate, k)
            print(
                f"fold {k}: "
                + ("not finished" if r is None else f"validation acc {r['val_acc']:.3f}, test acc {r['test_acc']:.3f}")
            )
        report(args.work, args.parallel)
        return
    variants = [(name, config, sharing) for name, config in recipes for sharing in args.sharing.split(",")]
    # The first variant on all folds, then the others fold by fold, so a cut-short run still
    # compares every variant on the same folds.
    jobs = [(*variants[0], k) for k in folds] + [(*v, k) for k in folds for v in variants[1:]]
    with ThreadPoolExecutor(args.parallel) as pool:
        for r in pool.map(lambda job: run_fold(manifest, args.work, *job, args.epochs, args.seed), jobs):
            print(
                f"{r['recipe']} / {r['sharing']} fold {r['fold']}: validation acc {r['val_acc']:.3f}, "
                f"test acc {r['test_acc']:.3f} ({r['train_s']:.0f} s of training)",
                flush=True,
            )
    report(args.work, args.parallel)


if __name__ == "__main__":
    main()
