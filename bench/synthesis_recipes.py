"""Which training recipe makes the best synthetic faces? Measured against exact ground truth.

On the demo dataset every face can be re-rendered with any expression
(:func:`fesaug.data.demo.counterfactual`), so a synthesized image can be compared with what it
should have been. For each recipe (a set of TrainConfig overrides) this trains FERSNet holding
out fold 0, then translates every held-out face to every other class and reports:

* ``l1``: mean absolute error to the ground-truth counterfactual (0..255 scale), and the same
  for the input copied unchanged (``copy_l1``), the trivial baseline a generator must beat;
* ``changed_l1``: the error on the pixels where the expression changes the face
  (|source - truth| > 10), where copying the input scores worst;
* ``judge_accept``: the share the checkpoint's FER branch gives the target >= 0.5 (the
  balance gate's view).

    python bench/synthesis_recipes.py --manifest demo/manifest.parquet --out /tmp/recipes \\
        --epochs 60 --device cuda --recipe base='{}' --recipe noexpr='{"loss": {"expression": 0}}'

Results: ``<out>/<recipe>/synthesis.json`` and a table on stdout (``--report`` only prints).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fesaug import load_generator
from fesaug.data.datasets import ManifestDataset
from fesaug.data.demo import counterfactual
from fesaug.data.manifest import read_manifest
from fesaug.training import TrainConfig, train


def score(manifest: Path, checkpoint: Path, fold: int = 0) -> dict:
    gen = load_generator(checkpoint)
    m = read_manifest(manifest)
    rows = np.flatnonzero(m.df["fold"].to_numpy() == fold)
    data = ManifestDataset(m, rows=rows, image_size=gen.image_size)
    l1, copy_l1, changed, copy_changed, accept, n = [], [], [], [], [], 0
    for k, cls in enumerate(gen.classes):
        keep = np.flatnonzero(data.labels != k)
        src = data.pixels[keep]
        fake = gen.synthesize(src, k).numpy().astype(np.float64)[:, 0]
        probs = gen.classify(gen.synthesize(src, k))[:, k].numpy()
        truth = np.stack([counterfactual(m.df.iloc[int(data.rows[i])], cls) for i in keep]).astype(np.float64)
        s = src.numpy().astype(np.float64)[:, 0]
        mask = np.abs(s - truth) > 10
        l1.append(np.abs(fake - truth).mean(axis=(1, 2)))
        copy_l1.append(np.abs(s - truth).mean(axis=(1, 2)))
        changed.append([np.abs(f - t)[mk].mean() if mk.any() else 0.0 for f, t, mk in zip(fake, truth, mask)])
        copy_changed.append([np.abs(a - t)[mk].mean() if mk.any() else 0.0 for a, t, mk in zip(s, truth, mask)])
        accept.append(probs >= 0.5)
        n += len(keep)
    cat = np.concatenate
    return {
        "pairs": n, "l1": float(cat(l1).mean()), "copy_l1": float(cat(copy_l1).mean()),
        "changed_l1": float(cat(changed).mean()), "copy_changed_l1": float(cat(copy_changed).mean()),
        "judge_accept": float(cat(accept).mean()),
        "judge_accept_per_class": {c: float(a.mean()) for c, a in zip(gen.classes, accept)},
    }


def run_recipe(manifest: Path, out: Path, name: str, overrides: dict, epochs: int, device: str,
               results: Path | None = None) -> dict:
    config = TrainConfig().updated({"epochs": epochs, "holdout_fold": 0, "device": device, **overrides}, where=name)
    start = time.perf_counter()
    result = train(manifest, out / name, config, overwrite=True)
    seconds = time.perf_counter() - start
    scores = {which: score(manifest, result.run_dir / "checkpoints" / f"{which}.pt") for which in ("best", "last")}
    record = {"recipe": name, "overrides": overrides, "epochs": epochs, "device": device, "train_seconds": seconds,
              "best_epoch": result.best_epoch, **scores}
    (out / name / "synthesis.json").write_text(json.dumps(record, indent=2))
    if results is not None:  # a flat copy, e.g. for a remote machine's output folder
        results.mkdir(parents=True, exist_ok=True)
        (results / f"{name}.json").write_text(json.dumps(record, indent=2))
        shutil.copy(result.run_dir / "samples" / f"epoch_{epochs:03d}.png", results / f"{name}.png")
    return record


def report(out: Path) -> None:
    print(f"{'recipe':<14} {'ckpt':<5} {'l1':>6} {'copy':>6} {'chg_l1':>7} {'copy_chg':>8} {'judge':>6}")
    for f in sorted(out.glob("*/synthesis.json")):
        r = json.loads(f.read_text())
        for which in ("best", "last"):
            s = r[which]
            print(f"{r['recipe']:<14} {which:<5} {s['l1']:6.2f} {s['copy_l1']:6.2f} {s['changed_l1']:7.2f} "
                  f"{s['copy_changed_l1']:8.2f} {s['judge_accept']:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--recipe", action="append", default=[], help="NAME=JSON overrides of TrainConfig")
    ap.add_argument("--parallel", action="store_true", help="one process per recipe (e.g. on one GPU)")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--results", type=Path, help="also copy each recipe's scores and last sample grid here")
    args = ap.parse_args()
    if not args.report:
        recipes = dict(r.split("=", 1) for r in args.recipe) or {"base": "{}"}
        if args.parallel and len(recipes) > 1:
            procs = [subprocess.Popen([sys.executable, __file__, "--manifest", str(args.manifest), "--out", str(args.out),
                                       "--epochs", str(args.epochs), "--device", args.device, "--recipe", f"{k}={v}",
                                       *(["--results", str(args.results)] if args.results else [])])
                     for k, v in recipes.items()]
            if any(p.wait() for p in procs):
                sys.exit("a recipe failed")
        else:
            torch.set_num_threads(max(1, torch.get_num_threads()))
            for name, js in recipes.items():
                run_recipe(args.manifest, args.out, name, json.loads(js), args.epochs, args.device, args.results)
    report(args.out)


if __name__ == "__main__":
    main()
