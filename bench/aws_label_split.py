"""AWS-Net's setting on the demo data: emotion labels for half the training subjects, AU labels
for the other half. Does adaptive weights sharing (aws) beat the single-task networks (none) and
the other sharing strategies (hard, cross-stitch)?

Full default demo set (981 images, 64x64, cached under /tmp/fesaug-bench/aws), fold 0 held out;
the training subjects split 50/50 by subject (``emotion_fraction=0.5, au_fraction=0.5``); one
``train_multitask`` run per sharing kind, same epochs and seed; ``best.pt`` (chosen on the
validation subjects, which keep both labels) evaluated on fold 0, where every row has both labels.

    OMP_NUM_THREADS=1 .venv/bin/python bench/aws_label_split.py            # ~6-10 min on 2 shared cores
    .venv/bin/python bench/aws_label_split.py --epochs 5 --jobs 1          # quick look

Writes bench/results/aws_label_split.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from record import RESULTS, command, machine, machine_line, write_results
from sklearn.metrics import f1_score

from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.models import au_metrics, count_parameters
from fesaug.multitask.config import MultiTaskConfig
from fesaug.multitask.data import au_occurrence
from fesaug.multitask.training import load_emotion_au, train_multitask
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table

SHARINGS = ("none", "hard", "cross-stitch", "aws")
CACHE = Path("/tmp/fesaug-bench/aws")


def _one_thread() -> None:
    torch.set_num_threads(1)


def test_metrics(checkpoint: Path, manifest_path: Path, fold: int) -> dict:
    """Emotion accuracy / macro-F1 and AU mean F1 (+ per AU) of ``checkpoint`` on fold ``fold``."""
    model = load_emotion_au(checkpoint, device="cpu")
    manifest = read_manifest(manifest_path)
    df = manifest.df
    rows = np.flatnonzero(((df["fold"] == fold).fillna(False) & (df["origin"] == "real")).to_numpy(dtype=bool))
    faces = ManifestDataset(manifest, rows=rows, image_size=model.image_size)
    emotion, aus = model.predict(faces.pixels)
    pred = emotion.argmax(1).numpy()
    au = au_metrics(aus, au_occurrence(manifest, faces.rows))
    return {
        "test_images": len(rows),
        "emotion_acc": round(float((pred == faces.labels).mean()), 4),
        "emotion_macro_f1": round(float(f1_score(faces.labels, pred, average="macro", zero_division=0)), 4),
        "au_mean_f1": round(au["mean_f1"], 4),
        "au_f1": {str(a): round(float(f), 4) for a, f in zip(model.au_ids, au["f1"])},
    }


def run_one(sharing: str, manifest: Path, runs: Path, epochs: int, seed: int, fold: int) -> dict:
    config = MultiTaskConfig(
        model={"sharing": sharing},
        epochs=epochs,
        seed=seed,
        holdout_fold=fold,
        device="cpu",
        emotion_fraction=0.5,
        au_fraction=0.5,
    )
    t0 = time.perf_counter()
    result = train_multitask(manifest, runs / sharing, config, overwrite=True)
    wall = time.perf_counter() - t0
    best = result.metrics[result.best_epoch - 1]
    net = load_emotion_au(result.best_checkpoint, device="cpu").net
    return {
        "sharing": sharing,
        "wall_s": round(wall, 1),
        "parameters": count_parameters(net),
        "best_epoch": result.best_epoch,
        "mean_epoch_s": round(float(np.mean([m["seconds"] for m in result.metrics])), 2),
        "val": {k: best[k] for k in ("val_emotion_acc", "val_emotion_macro_f1", "val_au_mean_f1")},
        "test_best": test_metrics(result.best_checkpoint, manifest, fold),
        "test_last": test_metrics(result.last_checkpoint, manifest, fold),
        "subjects": {
            "train": len(result.split.train_subjects),
            "val": len(result.split.val_subjects),
            "heldout": len(result.split.heldout_subjects),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fold", type=int, default=0, help="held-out test fold")
    ap.add_argument("--jobs", type=int, default=2, help="runs in parallel, one thread each")
    ap.add_argument("--sharing", default=",".join(SHARINGS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--report-only", action="store_true", help="rewrite the .md from the existing .json")
    args = ap.parse_args()
    if args.report_only:
        (args.out / "aws_label_split.md").write_text(
            report(json.loads((args.out / "aws_label_split.json").read_text()))
        )
        return
    start = time.perf_counter()
    manifest = CACHE / "demo" / "manifest.parquet"
    if not manifest.exists():
        make_demo_dataset(CACHE / "demo")
    m = read_manifest(manifest)

    sharings = args.sharing.split(",")
    with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn"), initializer=_one_thread) as pool:
        futures = {
            s: pool.submit(run_one, s, manifest, CACHE / "runs", args.epochs, args.seed, args.fold) for s in sharings
        }
        runs = []
        for f in futures.values():
            runs.append(f.result())
            print(json.dumps({k: runs[-1][k] for k in ("sharing", "wall_s", "best_epoch", "test_best")}), flush=True)

    result = {
        "benchmark": "aws_label_split",
        "dataset": {
            "name": "demo (default)",
            "images": len(m.df),
            "subjects": int(m.df["subject_id"].nunique()),
            "image_size": 64,
            "au_ids": m.meta["au_ids"],
            "cache": str(CACHE),
        },
        "protocol": {
            "heldout_fold": args.fold,
            "val_fraction": 0.15,
            "emotion_fraction": 0.5,
            "au_fraction": 0.5,
            "epochs": args.epochs,
            "seed": args.seed,
            "batch_size": 32,
            "lr": 1e-3,
            "weight_decay": 5e-4,
            "model": "EmotionAUNet, widths (16, 32, 64, 128), BatchNorm",
            "selection": "best.pt: validation mean of emotion macro-F1 and AU mean F1",
            "jobs": args.jobs,
            "threads_per_job": 1,
        },
        "runs": runs,
        "machine": machine(),
        "versions": package_versions(),
        "command": command("OMP_NUM_THREADS=1"),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_results("aws_label_split", result, report(result), args.out)
    print(report(result))


def report(r: dict) -> str:
    p, runs = r["protocol"], {x["sharing"]: x for x in r["runs"]}
    table = "\n".join(
        markdown_table(
            [
                "sharing",
                "parameters",
                "test emotion acc (best.pt)",
                "emotion macro-F1",
                "AU mean F1",
                "macro-F1 (last.pt)",
                "AU F1 (last.pt)",
                "best epoch",
                "wall s",
            ],
            [
                [
                    s,
                    f"{x['parameters']:,}",
                    f"{x['test_best']['emotion_acc']:.3f}",
                    f"{x['test_best']['emotion_macro_f1']:.3f}",
                    f"{x['test_best']['au_mean_f1']:.3f}",
                    f"{x['test_last']['emotion_macro_f1']:.3f}",
                    f"{x['test_last']['au_mean_f1']:.3f}",
                    x["best_epoch"],
                    f"{x['wall_s']:.0f}",
                ]
                for s, x in runs.items()
            ],
        )
    )
    return f"""# AWS-Net label split on the demo data

`{r["command"]}` — {r["wall_s"]:.0f} s wall ({p["jobs"]} runs at a time, 1 thread each; {machine_line(r["machine"])}),
fesaug {r["versions"]["fesaug"]}, torch {r["versions"]["torch"]}.

Protocol: default demo set ({r["dataset"]["images"]} images, {r["dataset"]["subjects"]} subjects, 64x64, 16 AUs); fold
{p["heldout_fold"]} held out as the test set ({runs[next(iter(runs))]["test_best"]["test_images"]} images, every one with
both labels). Validation subjects ({p["val_fraction"]:.0%}) are carved from the rest and keep both labels; the remaining
training subjects are split 50/50 by subject: one half keeps only its emotion labels, the other only its AU labels.
{p["model"]}; {p["epochs"]} epochs, batch {p["batch_size"]}, Adam lr {p["lr"]}, weight decay {p["weight_decay"]}, flips,
seed {p["seed"]}; {p["selection"]}. `none` = two independent networks, i.e. the single-task baselines (each sees only its
own half of the training subjects); `hard` = one shared encoder; `cross-stitch` and `aws` = two networks with sharing units.

{table}

{conclusion(runs, p["epochs"])}
"""


def conclusion(runs: dict, epochs: int) -> str:
    if not {"aws", "none"} <= set(runs):
        return ""
    b = {s: x["test_best"] for s, x in runs.items()}
    others = [s for s in runs if s not in ("aws", "none")]

    def margin(key: str, other: str) -> str:
        return f"{b['aws'][key] - b[other][key]:+.3f}"

    def verdict(other: str) -> str:
        wins = [b["aws"][k] > b[other][k] for k in ("emotion_macro_f1", "au_mean_f1")]
        return {
            (True, True): "better on both tasks",
            (False, False): "worse on both tasks",
            (True, False): "better on emotions but worse on AUs",
            (False, True): "better on AUs but worse on emotions",
        }[tuple(wins)]

    vs_others = "; ".join(
        f"vs {s}: macro-F1 {margin('emotion_macro_f1', s)}, AU F1 {margin('au_mean_f1', s)}" for s in others
    )
    rank = sorted(runs, key=lambda s: -(b[s]["emotion_macro_f1"] + b[s]["au_mean_f1"]) / 2)
    noise = max(
        abs(x["test_best"][k] - x["test_last"][k]) for x in runs.values() for k in ("emotion_macro_f1", "au_mean_f1")
    )
    return (
        f"**Result.** Here `aws` is {verdict('none')} than the single-task baselines (`none`) and "
        f"{'; '.join(f'{verdict(s)} than `{s}`' for s in others)}. Against `none` it changes test emotion macro-F1 by "
        f"{margin('emotion_macro_f1', 'none')} (accuracy {margin('emotion_acc', 'none')}) and AU mean F1 by "
        f"{margin('au_mean_f1', 'none')}; {vs_others}. Ranked by the mean of the two F1 scores: {', '.join(rank)}. "
        f"The same run's best.pt and last.pt differ by up to {noise:.3f} in one of the two F1 scores, a rough "
        "measure of "
        "the noise in single numbers here. "
        "Caveats: one seed, one fold ({n} test images, so one image is {pct:.1%} accuracy), synthetic demo faces "
        "whose AU "
        "occurrences follow from the expression (its AU prototype times the frame's intensity, with small jitter), "
        "so the "
        "two tasks are far more tightly coupled than on real data, which favours sharing; small CPU-sized networks "
        "trained "
        "for {epochs} epochs; differences of a few "
        "points are within seed-to-seed noise until repeated over seeds and folds. The sharing units are our "
        "reconstruction from the paper's abstract (see fesaug.models.sharing.AWSUnit)."
    ).format(n=b["aws"]["test_images"], pct=1 / b["aws"]["test_images"], epochs=epochs)


if __name__ == "__main__":
    main()
