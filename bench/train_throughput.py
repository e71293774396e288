"""Training throughput of FERSNet + discriminator, and achieved FLOP/s against a peak measured in
the same process (a float32 matrix multiply on the same threads), so the ratio survives a noisy
machine better than either number alone.

    .venv/bin/python bench/train_throughput.py                # cpu preset, batch 32, 64x64
    .venv/bin/python bench/train_throughput.py --preset paper --batch-size 8

One step is what `fesaug train` does per batch: FERSNet forward (translate, cycle back,
classify), `d_steps` discriminator updates and one FERSNet update. FLOPs are counted by
torch.utils.flop_counter over one whole step, backward passes included.

Three variants, timed in turns in the same process (``--repeats`` rounds, rotating order, medians):
``before``, the step and the networks as commit ``--baseline-ref`` had them (read from git and
imported beside today's code); ``after``, today's; and ``after, bf16 autocast``, today's under CPU
bfloat16 autocast, which `fesaug train` does not use on a CPU (it changes the arithmetic; on CUDA,
``amp`` does the same). The profile splits one step of each by operator family.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

import torch
from baseline_code import BEFORE_36, commit_of, load_module_at
from profiling import FAMILIES, profile_split
from record import command, machine, machine_line, write_results
from torch.utils.flop_counter import FlopCounterMode

from fesaug.models import Discriminator, FERSNet
from fesaug.synthesis import runtime, step
from fesaug.synthesis.config import TrainConfig
from fesaug.utils.tables import markdown_table


def matmul_peak(device: torch.device, n: int = 2048, seconds: float = 3.0) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(3):
        a @ b
    reps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        reps += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - start)


def build_step(
    steps: ModuleType,
    rt_module: ModuleType,
    nets: ModuleType | None,
    config: TrainConfig,
    batch: dict[str, torch.Tensor],
    device: torch.device,
    amp: torch.dtype | None,
) -> Callable[[], Any]:
    """One training step of fresh networks (seed 0): ``steps`` holds train_step, GeneratorStep and
    Optimisation, ``rt_module`` Runtime, ``nets`` FERSNet and Discriminator (None: today's)."""
    model_config = config.model_config(num_classes=7)
    torch.manual_seed(0)
    fersnet, disc_class = (FERSNet, Discriminator) if nets is None else (nets.FERSNet, nets.Discriminator)
    net, disc = fersnet(model_config).to(device), disc_class(model_config).to(device)
    adam = {"lr": config.lr, "betas": config.betas}
    rt = rt_module.Runtime(device=device, rank=0, world_size=1, local_rank=0, amp_dtype=amp)
    o = steps.Optimisation(
        g_step=steps.GeneratorStep(net),
        d_train=disc,
        disc=disc,
        opt_g=torch.optim.Adam(net.parameters(), **adam),
        opt_d=torch.optim.Adam(disc.parameters(), **adam),
        scaler=torch.amp.GradScaler(device.type, enabled=False),
    )
    return lambda: steps.train_step(batch, o, config.loss, config.d_steps, rt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4, help="steps per timed turn")
    parser.add_argument("--repeats", type=int, default=5, help="timed turns per variant")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline-ref", default=BEFORE_36)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig.preset_config(args.preset)
    s, b = config.model_config(num_classes=7).image_size, args.batch_size
    g = torch.Generator().manual_seed(0)
    batch = {
        "source": torch.rand(b, 1, s, s, generator=g),
        "target": torch.rand(b, 1, s, s, generator=g),
        "source_label": torch.randint(0, 7, (b,), generator=g),
        "target_label": torch.randint(0, 7, (b,), generator=g),
        "paired": torch.rand(b, generator=g) < 0.5,
    }
    old_training = load_module_at(args.baseline_ref, "fesaug/synthesis/training.py")
    old_nets = load_module_at(args.baseline_ref, "fesaug/models/fersnet.py")
    variants = {
        "before": build_step(old_training, old_training, old_nets, config, batch, device, None),
        "after": build_step(step, runtime, None, config, batch, device, None),
    }
    if device.type == "cpu":
        variants["after, bf16 autocast"] = build_step(step, runtime, None, config, batch, device, torch.bfloat16)
    flops: dict[str, float] = {}
    for name, run in variants.items():
        with FlopCounterMode(display=False) as counter:
            run()
        flops[name] = counter.get_total_flops()
        run()  # warm-up
    peaks = [matmul_peak(device)]
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in variants}
    loads = []
    names = list(variants)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            loads.append(os.getloadavg()[0])
            start, cpu = time.perf_counter(), time.process_time()
            for _ in range(args.steps):
                variants[name]()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds[name].append((time.perf_counter() - start) / args.steps)
            cpu_seconds[name].append((time.process_time() - cpu) / args.steps)
    peaks.append(matmul_peak(device))  # bracket the timed steps
    peak = statistics.median(peaks)
    profiles = {name: profile_split(run) for name, run in variants.items()} if device.type == "cpu" else {}
    rows = {}
    for name in names:
        step_s = statistics.median(seconds[name])
        rows[name] = {
            "flops_per_step": flops[name],
            "step_seconds": step_s,
            "images_per_s": b / step_s,
            "achieved_flops": flops[name] / step_s,
            "ratio_of_peak": flops[name] / step_s / peak,
            "speed_vs_before": statistics.median(seconds["before"]) / step_s,
            # CPU seconds of the process per step: less disturbed by other processes on the machine.
            "cpu_seconds": statistics.median(cpu_seconds[name]),
            "cpu_speed_vs_before": statistics.median(cpu_seconds["before"]) / statistics.median(cpu_seconds[name]),
            "profile": profiles.get(name, {}),
        }
    result = {
        "benchmark": "FERSNet training step (G + D), achieved FLOP/s vs same-process matmul peak, before/after #36",
        "preset": args.preset,
        "batch_size": b,
        "image_size": s,
        "d_steps": config.d_steps,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "baseline_ref": commit_of(args.baseline_ref),
        "matmul_peak_flops": peak,
        "matmul_peaks": peaks,
        "load_average": statistics.median(loads),
        "variants": rows,
        "machine": machine(),
        "torch": torch.__version__,
        "timed_steps": args.steps * args.repeats,
        "command": command(),
    }
    table = render(result)
    write_results(f"train_throughput_{args.preset}_b{b}_t{torch.get_num_threads()}", result, table)
    print(table)


def render(r: dict) -> str:
    b, s = r["batch_size"], r["image_size"]
    lines = [
        f"# Training throughput ({r['preset']} preset)",
        "",
        f"`{r['command']}` on {machine_line(r['machine'])}, torch {r['torch']}, {r['threads']} thread(s), "
        f"{r['device']}; batch {b}, {s}x{s}. `before`: commit {r['baseline_ref'][:10]}'s step and networks, timed "
        f"in turns with today's in the same process (medians of {r['timed_steps']} steps each); matmul peak "
        f"{r['matmul_peak_flops'] / 1e9:.1f} GFLOP/s (float32, same threads, before and after the timed steps); "
        f"load average {r['load_average']:.1f} on {r['machine']['cpu_count']} CPUs.",
        "",
    ]
    columns = ["variant", "GFLOP/step", "s/step", "images/s", "achieved GFLOP/s", "of peak", "speed vs before"]
    lines += markdown_table(
        [*columns, "CPU s/step", "CPU-time speed vs before"],
        [
            [name, f"{v['flops_per_step'] / 1e9:.1f}", f"{v['step_seconds']:.3f}", f"{v['images_per_s']:.1f}"]
            + [f"{v['achieved_flops'] / 1e9:.1f}", f"{v['ratio_of_peak']:.1%}", f"{v['speed_vs_before']:.2f}"]
            + [f"{v['cpu_seconds']:.3f}", f"{v['cpu_speed_vs_before']:.2f}"]
            for name, v in r["variants"].items()
        ],
    )
    if any(v["profile"] for v in r["variants"].values()):
        families = [*FAMILIES, "other"]
        lines += ["", "Where one step's CPU time goes (torch.profiler, self time by operator family):", ""]
        lines += markdown_table(
            ["variant", "ms", *families],
            [
                [name, f"{v['profile']['total_ms']:.0f}", *(f"{v['profile'][f]:.0%}" for f in families)]
                for name, v in r["variants"].items()
            ],
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
