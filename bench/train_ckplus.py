"""FERSNet on CK+48: the subject-independent 10-fold protocol, FER branch accuracy per fold.

For each sharing mode and test fold k: `fesaug train --holdout-fold k` (model selection on a
validation split of the training subjects; fold k is never seen), then the best checkpoint's FER
branch classifies every image of fold k. Runs go in parallel, one thread each (faster than two
threads per run on a small shared CPU). Each finished fold is cached in WORK/<sharing>-f<k>/,
so an interrupted benchmark resumes.

    .venv/bin/python bench/train_ckplus.py --epochs 20 --sharing convflu --folds all
    .venv/bin/python bench/train_ckplus.py --epochs 20 --sharing hard,none --folds 0,1,2

Results: bench/results/fersnet_ckplus.json and .md (all modes found in WORK are reported).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from record import PYTHON, REPO, machine, machine_line, write_results

CKPLUS = REPO.parent / "shared" / "data" / "ckplus48"


def run_fold(manifest: Path, work: Path, sharing: str, fold: int, epochs: int, seed: int) -> dict:
    run = work / f"{sharing}-f{fold}"
    done = run / "fold_result.json"
    if done.exists():
        return json.loads(done.read_text())
    cmd = [sys.executable, "-m", "fesaug", "train", "--manifest", str(manifest), "--out", str(run),
           "--holdout-fold", str(fold), "--sharing", sharing, "--epochs", str(epochs), "--seed", str(seed), "--device", "cpu"]
    resume = (run / "checkpoints" / "last.pt").exists()
    start = time.perf_counter()
    subprocess.run(cmd + (["--resume"] if resume else ["--overwrite"]), check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    result = {"sharing": sharing, "fold": fold, "train_command": " ".join(cmd), "wall_s": round(wall, 1),
              **evaluate(manifest, run, fold)}
    done.write_text(json.dumps(result, indent=2))
    return result


def evaluate(manifest: Path, run: Path, fold: int) -> dict:
    import torch

    from fesaug import load_generator
    from fesaug.data.datasets import ManifestDataset
    from fesaug.data.manifest import read_manifest

    torch.set_num_threads(1)
    m = read_manifest(manifest)
    rows = np.flatnonzero(m.df["fold"].to_numpy() == fold)
    gen = load_generator(run / "checkpoints" / "best.pt", device="cpu")
    data = ManifestDataset(m, rows=rows, image_size=gen.image_size)
    images = torch.stack([data[i][0] for i in range(len(data))])
    pred = gen.classify(images).argmax(1).numpy()
    labels = np.asarray(data.labels)
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    best = [r for r in metrics if r.get("best")][-1]  # the epoch best.pt was saved from
    per_class = {c: float((pred[labels == k] == k).mean()) for k, c in enumerate(m.classes) if (labels == k).any()}
    return {
        "test_images": int(len(rows)), "test_acc": float((pred == labels).mean()), "test_recall": per_class,
        "best_epoch": best["epoch"], "best_val_fer_acc": best.get("val_fer_acc"),
        "train_images_per_s": float(np.median([r["images_per_s"] for r in metrics if "images_per_s" in r])),
    }


def report(work: Path, epochs: int, parallel: int) -> None:
    import torch

    results = [json.loads(p.read_text()) for p in sorted(work.glob("*/fold_result.json"))]
    modes = {}
    for r in results:
        modes.setdefault(r["sharing"], []).append(r)
    summary = {
        "benchmark": "FERSNet FER branch on CK+48, subject-independent 10-fold (StratifiedGroupKFold, seed 0)",
        "protocol": ("7 classes (anger, contempt, disgust, fear, happy, sadness, surprise), 981 images of 118 subjects, "
                     "48x48 crops upscaled to 64x64 (cpu preset); per test fold k: train with --holdout-fold k, select "
                     "best.pt on a validation split of the training subjects, test the FER branch on every image of fold k; "
                     f"{epochs} epochs, seed 0, no pre-training"),
        "machine": machine(threads=1) | {"runs_in_parallel": parallel},
        "torch": torch.__version__,
        "paper": "97.35% (ICPR 2020 Table: CK+ 7 classes, 10-fold, no pre-training, 96x96)",
        "modes": {},
    }
    for mode, rs in sorted(modes.items()):
        rs = sorted(rs, key=lambda r: r["fold"])
        accs = [r["test_acc"] for r in rs]
        total = sum(r["test_images"] for r in rs)
        pooled = sum(r["test_acc"] * r["test_images"] for r in rs) / total
        summary["modes"][mode] = {
            "folds": [r["fold"] for r in rs], "mean_acc": float(np.mean(accs)), "std_acc": float(np.std(accs)),
            "pooled_acc": pooled, "mean_wall_s": float(np.mean([r["wall_s"] for r in rs])),
            "median_train_images_per_s": float(np.median([r["train_images_per_s"] for r in rs])),
            "mean_recall": {c: float(np.average([r["test_recall"][c] for r in rs if c in r["test_recall"]],
                                                  weights=[r["test_images"] for r in rs if c in r["test_recall"]]))
                              for c in rs[0]["test_recall"]},
            "per_fold": rs,
        }
    text = render(summary, epochs)
    write_results("fersnet_ckplus", summary, text)
    print(text)


def render(summary: dict, epochs: int) -> str:
    m = summary["machine"]
    lines = ["# FERSNet on CK+48 (10-fold, subject-independent)", "", summary["protocol"] + ".", "",
             f"Machine: {machine_line(m)} per run, {m['runs_in_parallel']} runs in parallel; torch {summary['torch']}. "
             f"Paper: {summary['paper']}.", "",
             "| sharing | folds | mean acc ± std | pooled acc | wall per fold | train images/s |", "|---|---|---|---|---|---|"]
    for mode, s in summary["modes"].items():
        lines.append(f"| {mode} | {len(s['folds'])} ({','.join(map(str, s['folds']))}) | {s['mean_acc']:.3f} ± {s['std_acc']:.3f} | "
                     f"{s['pooled_acc']:.3f} | {s['mean_wall_s']:.0f} s | {s['median_train_images_per_s']:.0f} |")
    lines += ["", "Per fold (test accuracy, best epoch by validation accuracy):", "",
              "| sharing | " + " | ".join(f"f{k}" for k in range(10)) + " |", "|---|" + "---|" * 10]
    for mode, s in summary["modes"].items():
        by_fold = {r["fold"]: r for r in s["per_fold"]}
        lines.append(f"| {mode} | " + " | ".join(
            f"{by_fold[k]['test_acc']:.3f} (e{by_fold[k]['best_epoch']})" if k in by_fold else "–" for k in range(10)) + " |")
    classes = list(next(iter(summary["modes"].values()))["per_fold"][0]["test_recall"])
    lines += ["", "Recall per class (mean over the folds run, weighted by fold size):", "",
              "| sharing | " + " | ".join(classes) + " |", "|---|" + "---|" * len(classes)]
    for mode, s in summary["modes"].items():
        lines.append(f"| {mode} | " + " | ".join(f"{s['mean_recall'][c]:.3f}" for c in classes) + " |")
    command = next(iter(summary["modes"].values()))["per_fold"][0]["train_command"].split(" -m ", 1)[1]
    lines += ["", f"Command per fold: `{command}` (then the FER branch of best.pt on fold k); "
              f"this table: `{PYTHON} bench/train_ckplus.py --epochs {epochs} --sharing {','.join(summary['modes'])}`"]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sharing", default="convflu")
    parser.add_argument("--folds", default="all")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--work", type=Path, default=Path("/tmp/fesaug-bench/ckplus"))
    args = parser.parse_args()
    if not CKPLUS.is_dir():
        sys.exit(f"CK+48 not found at {CKPLUS}; this benchmark needs the research-only data beside the checkout")
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "ck.parquet"
    if not manifest.exists():
        subprocess.run([sys.executable, "-m", "fesaug", "ingest", str(CKPLUS), "--preset", "ckplus", "--folds", "10",
                        "--out", str(manifest)], check=True)
    folds = list(range(10)) if args.folds == "all" else [int(k) for k in args.folds.split(",")]
    modes = args.sharing.split(",")
    # The first mode on all folds, then the others fold by fold, so a cut-short run still
    # compares every mode on the same folds.
    jobs = [(modes[0], k) for k in folds] + [(s, k) for k in folds for s in modes[1:]]
    with ThreadPoolExecutor(args.parallel) as pool:
        for r in pool.map(lambda job: run_fold(manifest, args.work, job[0], job[1], args.epochs, args.seed), jobs):
            print(f"{r['sharing']} fold {r['fold']}: test acc {r['test_acc']:.3f} ({r['wall_s']:.0f} s)", flush=True)
    report(args.work, args.epochs, args.parallel)


if __name__ == "__main__":
    main()
