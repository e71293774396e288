"""Colour end to end on the demo dataset, beside gray (issue #39), and FERSNet's training
throughput at the colour presets' sizes.

1. For the gray demo set and the same set in colour (``fesaug demo-data --color``): ``fesaug
   train`` (fold 0 held out) → ``fesaug balance`` → ``fesaug audit`` → ``fesaug
   evaluate-synthesis`` on fold 0, each through the CLI as a user runs it. Recorded: the exact-truth
   scores of the evaluation's synthetic faces against the demo's counterfactuals (L1, PSNR, SSIM,
   beside copying the input unchanged), the share a real-data classifier recognises as their
   target, the judges, what balance made and the audit's problems.
2. Throughput: ``fesaug train`` for two epochs at 64 px (``cpu`` preset), 96 px (``rgb96``) and
   112 px (``rgb112``), gray and colour, on demo sets rendered at that size; the images/s of the
   second epoch (``metrics.jsonl``; the first pays for start-up), data loading included.

Small epochs: this checks that colour works end to end and what it costs, not how good a
generator gets (bench/results/synthesis_recipes_demo.md measures that).

    OMP_NUM_THREADS=1 .venv/bin/python bench/colour_demo.py [--epochs 3] [--downstream-epochs 20]
        [--work /tmp/colour-demo] [--keep-end-to-end]

Writes bench/results/colour_demo.json and colour_demo.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from record import RESULTS, command, machine, machine_line, versions_line, write_results

from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table

KINDS = {"gray": [], "colour": ["--color"]}
SIZES = {64: "cpu", 96: "rgb96", 112: "rgb112"}
# Throughput sets: CK+'s proportions at about a third of its size, so an epoch at 112 px stays short.
THROUGHPUT_COUNTS = "anger=45,contempt=18,disgust=59,fear=25,happy=69,sadness=28,surprise=83"


def fesaug(*args: object, log: list[str]) -> float:
    """Run ``fesaug ARGS`` (this checkout's) and return its wall time; the command is logged."""
    argv = [str(a) for a in args]
    log.append(shlex.join(["fesaug", *argv]))
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "fesaug", *argv], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"fesaug {shlex.join(argv)} failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def last_epoch(run: Path) -> dict[str, Any]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]


def end_to_end(work: Path, kind: str, epochs: int, downstream_epochs: int) -> dict[str, Any]:
    """Demo data → train → balance → audit → evaluate-synthesis, in gray or colour."""
    root, log = work / kind, []
    data, run, balanced, ev = root / "data", root / "run", root / "balanced", root / "eval"
    seconds = {
        "data": fesaug("demo-data", "--out", data, "--seed", 0, "--overwrite", *KINDS[kind], log=log),
        "train": fesaug(
            "train", "--manifest", data / "manifest.parquet", "--out", run, "--epochs", epochs,
            "--holdout-fold", 0, "--overwrite", log=log,
        ),
        "balance": fesaug(
            "balance", "--manifest", data / "manifest.parquet", "--checkpoint", run / "checkpoints" / "best.pt",
            "--out", balanced, "--overwrite", log=log,
        ),
    }  # fmt: skip
    fesaug("audit", balanced / "manifest.parquet", "--format", "json", log=log)
    seconds["evaluate"] = fesaug(
        "evaluate-synthesis", "--manifest", data / "manifest.parquet", "--out", ev, "--folds", 0,
        "--generator-epochs", epochs, "--epochs", downstream_epochs, "--overwrite", log=log,
    )  # fmt: skip
    from fesaug.audit.report import audit
    from fesaug.data.manifest import read_manifest

    out = read_manifest(balanced / "manifest.parquet")
    synthesis = json.loads((ev / "results.json").read_text())["synthesis"]
    return {
        "channels": out.channels,
        "commands": log,
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "train_last_epoch": {k: last_epoch(run)[k] for k in ("epoch", "images_per_s", "val_fer_acc")},
        "balance": {"generated": out.meta["balance"]["generated"], "acceptance": out.meta["balance"]["acceptance"]},
        "audit_problems": [p.kind for p in audit(out).problems],
        "ground_truth": synthesis["ground_truth"],
        "recognised": synthesis.get("recognised"),
        "real_test_recognised": synthesis.get("real_test_recognised"),
        "judges": synthesis.get("judges"),
    }


def throughput(work: Path, size: int, kind: str) -> dict[str, Any]:
    root, log = work / "throughput" / f"{kind}-{size}", []
    fesaug(
        "demo-data", "--out", root / "data", "--size", size, "--counts", THROUGHPUT_COUNTS, "--seed", 0,
        "--overwrite", *KINDS[kind], log=log,
    )  # fmt: skip
    fesaug(
        "train", "--manifest", root / "data" / "manifest.parquet", "--out", root / "run", "--preset",
        SIZES[size], "--epochs", 2, "--holdout-fold", 0, "--overwrite", log=log,
    )  # fmt: skip
    epoch = last_epoch(root / "run")
    return {
        "load_average_1min": round(os.getloadavg()[0], 2),  # other work on the machine, at the end of the run
        "size": size,
        "preset": SIZES[size],
        "kind": kind,
        "images_per_s": epoch["images_per_s"],
        "train_seconds": epoch["train_seconds"],
        "commands": log,
    }


def render(r: dict[str, Any]) -> str:
    e2e, tp = r["end_to_end"], r["throughput"]
    rows = []
    for kind, res in e2e.items():
        g = res["ground_truth"]
        rows.append(
            [
                kind,
                f"{g['synthetic']['l1']['mean']:.2f}",
                f"{g['synthetic']['psnr']['mean']:.2f}",
                f"{g['synthetic']['ssim']['mean']:.3f}",
                f"{g['copy_input']['l1']['mean']:.2f}",
                f"{g['copy_input']['psnr']['mean']:.2f}",
                f"{g['copy_input']['ssim']['mean']:.3f}",
                f"{100 * res['recognised']['mean']:.1f}" if res.get("recognised") else "–",
                f"{100 * res['real_test_recognised']['mean']:.1f}" if res.get("real_test_recognised") else "–",
                sum(res["balance"]["generated"].values()),
                ", ".join(res["audit_problems"]) or "none",
            ]
        )
    steps = [
        [kind, *(res["seconds"][k] for k in ("data", "train", "balance", "evaluate"))] for kind, res in e2e.items()
    ]
    speed = {(t["size"], t["kind"]): t for t in tp}
    tp_rows = [
        [f"{size}×{size}", preset, *(speed[size, kind]["images_per_s"] for kind in KINDS)]
        for size, preset in SIZES.items()
    ]
    lines = [
        "# Colour end to end on the demo dataset, beside gray",
        "",
        f"`{r['command']}` on {machine_line(r['machine'])}; {versions_line(r['versions'])}."
        + (
            f" The end-to-end part is that of an earlier run, `{r['end_to_end_command']}`, on the same machine."
            if r.get("end_to_end_command", r["command"]) != r["command"]
            else ""
        ),
        "",
        f"Demo set (CK+'s 981 faces, 64 px, seed 0), gray and colour (`fesaug demo-data --color`: the same "
        f"faces painted). `fesaug train` {r['epochs']} epochs holding out fold 0 → `fesaug balance` → `fesaug audit`"
        f" → `fesaug evaluate-synthesis --folds 0` (its own generator, {r['epochs']} epochs; downstream classifier "
        f"{r['downstream_epochs']} epochs). Protocol: subject-independent folds, the test fold (0) only for the final "
        "scores, model choice on validation subjects.",
        "",
        "## Exact truth: the evaluation's synthetic faces against the demo's counterfactuals (fold 0)",
        "",
        "L1 in levels of 255 (over every channel in colour), PSNR in dB, SSIM (colour: the mean over the "
        "channels); *copy* is the input returned unchanged, the trivial baseline. *recognised*: share of the "
        "synthetic faces the fold's real-data classifier gives their target (beside its real test faces of those "
        "classes).",
        "",
        *markdown_table(
            [
                "images",
                "L1",
                "PSNR",
                "SSIM",
                "copy L1",
                "copy PSNR",
                "copy SSIM",
                "recognised %",
                "real test faces recognised %",
                "balance made",
                "audit problems",
            ],
            rows,
        ),  # fmt: skip
        "",
        "Seconds per step:",
        "",
        *markdown_table(["images", "demo-data", "train", "balance", "evaluate-synthesis"], steps),
        "",
        "## Training throughput (images/s, `fesaug train`, second epoch, data loading included)",
        "",
        f"Demo sets of {THROUGHPUT_COUNTS.replace(',', ', ')} faces rendered at each size, fold 0 held out, "
        f"batch 32, {r['machine'].get('threads', '?')} thread(s). The machine was shared: its 1-minute load "
        f"average at the end of each run was {min(t['load_average_1min'] for t in tp)}–"
        f"{max(t['load_average_1min'] for t in tp)} on {r['machine'].get('cpu_count')} CPUs, so read the numbers "
        "against each other (gray against colour at one size) more than as absolutes.",
        "",
        *markdown_table(["image", "preset", *(f"{k} images/s" for k in KINDS)], tp_rows),
        "",
        "Commands:",
        "",
        "```text",
        *(c for res in e2e.values() for c in res["commands"]),
        *(c for t in tp for c in t["commands"]),
        "```",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="FERSNet epochs (train and the evaluation's)")
    parser.add_argument("--downstream-epochs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("/tmp/colour-demo"))
    parser.add_argument(
        "--keep-end-to-end",
        action="store_true",
        help="reuse the end-to-end part of bench/results/colour_demo.json and measure the throughput again",
    )
    args = parser.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads()))
    earlier = json.loads((RESULTS / "colour_demo.json").read_text()) if args.keep_end_to_end else {}
    result = {
        "command": command("OMP_NUM_THREADS=1"),
        "machine": machine(threads),
        "versions": package_versions(),
        "epochs": args.epochs,
        "downstream_epochs": args.downstream_epochs,
        "end_to_end_command": earlier.get("end_to_end_command", earlier.get("command")) or command("OMP_NUM_THREADS=1"),
        "end_to_end": earlier.get("end_to_end")
        or {kind: end_to_end(args.work, kind, args.epochs, args.downstream_epochs) for kind in KINDS},
        "throughput": [throughput(args.work, size, kind) for size in SIZES for kind in KINDS],
    }
    write_results("colour_demo", result, render(result))
    print(render(result))


if __name__ == "__main__":
    main()
