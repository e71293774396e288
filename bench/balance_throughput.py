"""Balance throughput: `fesaug balance` end to end against the generator alone, and peak memory
for a small and a ~10x larger number of synthetic images (memory must not grow with the count).

    .venv/bin/python bench/balance_throughput.py                   # T = 300 and 2000 per class
    .venv/bin/python bench/balance_throughput.py --small 300 --large 3000 --threads 2

Setup (cached under --work, not timed): the default demo dataset (981 images, 64x64) and a
1-epoch `cpu`-preset checkpoint; image quality does not matter for throughput.
Generator alone: `synthesize` + `classify` (what the quality gate runs per candidate) on batches
of 64 uint8 images in inference mode, after warm-up; median over repeats.
End to end: `balance(..., BalanceConfig(min_confidence=0, target_per_class=T, batch_size=64))`,
each target in a fresh subprocess (`--case T`) whose peak RSS is its own VmHWM.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from record import RESULTS, command, machine, machine_line, write_results

from fesaug.utils.tables import markdown_table

BATCH = 64


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    return float("nan")


def setup(work: Path) -> tuple[Path, Path]:
    """The demo manifest and a checkpoint, made once and reused."""
    from fesaug.data.demo import make_demo_dataset
    from fesaug.synthesis.training import TrainConfig, train

    manifest, ckpt = work / "demo" / "manifest.parquet", work / "run" / "checkpoints" / "last.pt"
    if not manifest.exists():
        make_demo_dataset(work / "demo", size=64, overwrite=True)
    if not ckpt.exists():
        train(
            manifest,
            work / "run",
            TrainConfig().updated({"epochs": 1, "holdout_fold": 0}, where="bench"),
            overwrite=True,
        )
    return manifest, ckpt


def generator_alone(manifest: Path, ckpt: Path, batches: int = 4, repeats: int = 7) -> dict:
    from fesaug.data.datasets import ManifestDataset
    from fesaug.synthesis.generator import load_generator

    gen = load_generator(ckpt, device="cpu")
    x = ManifestDataset(manifest, image_size=gen.image_size).pixels[:BATCH]
    targets = torch.randint(0, len(gen.classes), (BATCH,), generator=torch.Generator().manual_seed(0))

    def step() -> None:
        fakes = gen.synthesize(x, targets, batch_size=BATCH)
        gen.classify(fakes, batch_size=BATCH)[torch.arange(BATCH), targets].tolist()

    with torch.inference_mode():
        for _ in range(3):
            step()
        rates = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(batches):
                step()
            rates.append(batches * BATCH / (time.perf_counter() - start))
    return {
        "images_per_s": statistics.median(rates),
        "images_per_s_all": [round(r, 1) for r in rates],
        "batch": BATCH,
        "batches_per_repeat": batches,
        "repeats": repeats,
    }


def run_case(work: Path, target: int) -> dict:
    """One end-to-end balance run (in its own process); printed as one JSON line."""
    import fesaug.balance.run as fb

    manifest, ckpt = setup(work)
    finish, seen = fb.finish, {}

    def finish_probe(*a, **k):  # peak RSS of the generation loop, before the manifest is written
        seen["peak_rss_generation_mib"] = status_mib("VmHWM")
        return finish(*a, **k)

    fb.finish = finish_probe
    rss_before = status_mib("VmRSS")
    start = time.perf_counter()
    r = fb.balance(
        manifest,
        ckpt,
        work / f"out-{target}",
        fb.BalanceConfig(min_confidence=0.0, target_per_class=target, batch_size=BATCH),
        overwrite=True,
        device="cpu",
    )
    wall = time.perf_counter() - start
    n = sum(r.generated.values())
    return {
        "target_per_class": target,
        "synthesized": n,
        "attempts": sum(r.attempts.values()),
        "wall_s": wall,
        "balance_seconds": r.seconds,
        "images_per_s": n / wall,
        "rss_before_mib": rss_before,
        **seen,
        "peak_rss_mib": status_mib("VmHWM"),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/fesaug-bench/balance"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--small", type=int, default=300, help="target per class of the small case")
    p.add_argument("--large", type=int, default=2000, help="target per class of the large case")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    p.add_argument("--case", type=int, default=None, help=argparse.SUPPRESS)  # internal: one end-to-end run
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.case is not None:
        print(json.dumps(run_case(args.work, args.case)))
        return

    from fesaug.utils.provenance import package_versions

    t0 = time.perf_counter()
    manifest, ckpt = setup(args.work)
    setup_s = time.perf_counter() - t0
    before = generator_alone(manifest, ckpt)
    cases = []
    for target in (args.small, args.large):
        cmd = [
            sys.executable,
            __file__,
            "--work",
            str(args.work),
            "--threads",
            str(args.threads),
            "--case",
            str(target),
        ]
        done = subprocess.run(cmd, check=False, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"case {target} failed:\n{done.stderr[-3000:]}")
        case = json.loads(done.stdout.strip().splitlines()[-1])
        cases.append(case)
    # Bracket the end-to-end runs: the shared cores' speed drifts, so average before and after.
    after = generator_alone(manifest, ckpt)
    gen = {"images_per_s": (before["images_per_s"] + after["images_per_s"]) / 2, "before": before, "after": after}
    for case in cases:
        case["ratio_to_generator"] = case["images_per_s"] / gen["images_per_s"]
    small, large = cases
    result = {
        "benchmark": "fesaug balance end to end vs generator alone (synthesize + classify), peak RSS vs image count",
        "machine": machine(),
        "versions": package_versions(),
        "threads": torch.get_num_threads(),
        "command": command(),
        "parameters": {
            "dataset": "make_demo_dataset(size=64), 981 images",
            "checkpoint": "cpu preset, 1 epoch, holdout_fold 0",
            "min_confidence": 0.0,
            "batch_size": BATCH,
            "device": "cpu",
            "small": args.small,
            "large": args.large,
        },
        "setup_seconds": setup_s,
        "generator_alone": gen,
        "end_to_end": cases,
        "synthesized_ratio": large["synthesized"] / small["synthesized"],
        "peak_rss_ratio": large["peak_rss_mib"] / small["peak_rss_mib"],
        # The images the large case adds over their extra time: the steady-state rate, without the
        # fixed cost (loading, decoding the sources, writing the manifest) both cases pay.
        "marginal_images_per_s": (large["synthesized"] - small["synthesized"]) / (large["wall_s"] - small["wall_s"]),
    }
    table = report(result)
    write_results("balance_throughput_cpu", result, table, args.out)
    print(table)


def report(r: dict) -> str:
    gen, (small, large) = r["generator_alone"], r["end_to_end"]
    alone = (
        f"generator alone (synthesize + classify, batch {BATCH}; before {gen['before']['images_per_s']:.0f}, "
        f"after {gen['after']['images_per_s']:.0f})"
    )
    rows = [[alone, "–", f"{gen['images_per_s']:.0f}", "1.00", "–", "–", "–"]]
    rows += [
        [
            f"`balance()`, target {c['target_per_class']}/class",
            c["synthesized"],
            f"{c['images_per_s']:.0f}",
            f"{c['ratio_to_generator']:.2f}",
            f"{c['wall_s']:.1f}",
            f"{c['peak_rss_generation_mib']:.0f}",
            f"{c['peak_rss_mib']:.0f}",
        ]
        for c in (small, large)
    ]
    header = [
        "what",
        "synthesized",
        "images/s",
        "of generator",
        "wall s",
        "peak RSS before manifest, MiB",
        "peak RSS, MiB",
    ]
    table = "\n".join(markdown_table(header, rows, align="lrrrrrr"))
    marginal = r["marginal_images_per_s"]
    fixed = small["wall_s"] - small["synthesized"] / marginal
    b, a = gen["before"]["images_per_s"], gen["after"]["images_per_s"]
    drift = (
        f"\n**Warning:** the generator ran at {b:.0f} images/s before and {a:.0f} after the end-to-end runs; "
        "the machine's speed changed under another load, so the ratios above are unreliable.\n"
        if abs(a - b) > 0.15 * max(a, b)
        else ""
    )
    return (
        f"# Balance throughput (CPU)\n\n`{r['command']}` on {machine_line(r['machine'])}, "
        f"{r['threads']} torch threads, torch {r['versions'].get('torch')}, fesaug {r['versions']['fesaug']}. "
        "Demo dataset (981 images, 64x64), 1-epoch `cpu`-preset checkpoint, `min_confidence=0`, `batch_size=64`, "
        "each `balance()` in a fresh process.\n\n"
        f"{table}\n\n"
        f"{r['synthesized_ratio']:.1f}x the images costs x{r['peak_rss_ratio']:.2f} the peak RSS "
        f"({small['peak_rss_mib']:.0f} → {large['peak_rss_mib']:.0f} MiB); the process already holds "
        f"{small['rss_before_mib']:.0f} MiB before `balance()` starts (torch, pandas, pyarrow). The extra images "
        "of the "
        f"large case came at {marginal:.0f} images/s ({marginal / gen['images_per_s']:.2f} of the generator alone).\n\n"
        f"**What it means.** Once a fixed cost is paid (≈{fixed:.1f} s here, the small case's wall time less its "
        "images at the marginal rate: loading the checkpoint, decoding the source images, writing manifest, card and "
        f"histogram), `balance()` synthesizes at {marginal / gen['images_per_s']:.0%} of the generator alone: the "
        "generator (FERSNet synthesis + its FER branch as the quality gate) is the cost, and the per-chunk Python "
        "(source jitter, row bookkeeping) and PNG encoding on two writer threads are small or overlap it. Peak RSS "
        "is mostly what the process holds before `balance()` starts; during generation it stays flat in the number "
        "of images (differences are allocator noise, tens of MiB), and writing the manifest, which holds every "
        "synthetic row at once, adds a few KiB per image. *Caveat:* 2 shared, noisy cores; other processes (tests, "
        "training) may have run at the same time, so take differences of ~10% in rates and ~50 MiB in RSS as "
        "noise. The generator is timed before and after the end-to-end runs to bracket the drift.\n" + drift
    )


if __name__ == "__main__":
    main()
