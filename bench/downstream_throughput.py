"""Training throughput of the downstream classifier (`fesaug.evaluate.downstream.fit`), before and
after issue #36, side by side in one process, each beside a same-process matmul peak.

    .venv/bin/python bench/downstream_throughput.py                      # the full grid, ~30-60 min
    .venv/bin/python bench/downstream_throughput.py --quick --write ''   # a smoke run, nothing written

Three trainers on the same images: ``before`` (``fit`` as commit ``--baseline-ref`` had it, read
from git and imported beside today's module), ``fit`` (today's, one seed) and ``fit_seeds`` (today's,
``--seeds`` seeds trained at once; its images/s counts every seed's images). Images per second
are whole ``fit`` calls (model set-up, every epoch, validation, selection) divided into the images
trained on. On a machine shared with other jobs the absolute speed moves from minute to minute, so
each condition runs its trainers back to back, in a rotating order, ``--repeats`` times, and the
table reports medians and the ratio to ``before`` measured in the same rounds; the load average is
recorded with each. ``cpu img/s`` divides by the process's CPU time instead of the wall clock: it
is less disturbed by other processes, though not by their use of the memory bus.

The profile section splits one epoch's CPU time by operator family (torch.profiler), and the
levers section times training steps alone (no data pipeline) for each change on its own:
channels-last memory, pooling before the ReLU, torch.compile (inductor), several seeds as one
grouped network, and bfloat16 autocast (not used by fit: it changes the arithmetic).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from baseline_code import BEFORE_36, commit_of, load_module_at
from profiling import FAMILIES, profile_split
from record import command, machine, machine_line, versions_line, write_results
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import matmul_peak

from fesaug.evaluate import downstream
from fesaug.utils.provenance import package_versions
from fesaug.utils.tables import markdown_table

CL = torch.channels_last


def data(n: int, size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Noise images: the arithmetic does not depend on the pixel values (no sparsity on a CPU).
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, size, size), dtype=torch.uint8, generator=g), torch.randint(
        0, 7, (n,), generator=g
    )


def trainers(before: Any, config: downstream.DownstreamConfig, seeds: int) -> dict[str, tuple[Callable, int]]:
    """name -> (call(train_x, train_y, val_x, val_y), how many seeds one call trains)."""
    old_config = before.DownstreamConfig(
        **{k: getattr(config, k) for k in before.DownstreamConfig.__dataclass_fields__}
    )
    bf16 = dataclasses.replace(config, precision="bfloat16")
    return {
        "before": (lambda *d: before.fit(*d, old_config, num_classes=7), 1),
        "fit": (lambda *d: downstream.fit(*d, config, num_classes=7), 1),
        "fit_seeds": (lambda *d: downstream.fit_seeds(*d, config, list(range(seeds)), num_classes=7), seeds),
        # Not the default: bfloat16 changes the arithmetic (its CK+48 validation scores:
        # bench/results/downstream_speed_ckplus.md).
        "fit_seeds bf16": (lambda *d: downstream.fit_seeds(*d, bf16, list(range(seeds)), num_classes=7), seeds),
    }


def flops_per_image(model_name: str, size: int, batch: int = 32) -> float:
    """Forward + backward FLOPs of one training image (torch's FlopCounterMode: convolutions and matmuls)."""
    model = downstream.make_classifier(model_name, 7, size)
    x, y = torch.rand(batch, 1, size, size), torch.randint(0, 7, (batch,))
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / batch


def run_condition(
    before: Any, args: argparse.Namespace, model: str, size: int, threads: int, augment: bool, validate: bool
) -> dict:
    torch.set_num_threads(threads)
    small = model == "small-cnn"
    n, epochs = (args.train, args.epochs) if small else (args.resnet_train, args.resnet_epochs)
    x, y = data(n, size, 0)
    vx, vy = data(args.val if small else max(args.resnet_train // 4, 8), size, 1)
    config = downstream.DownstreamConfig(model=model, epochs=epochs, image_size=size, augment=augment, device="cpu")
    calls = trainers(before, config, args.seeds)
    inputs = (x, y, vx, vy) if validate else (x, y, None, None)
    warm = downstream.DownstreamConfig(model=model, epochs=1, image_size=size, augment=augment, device="cpu")
    for call, _ in trainers(before, warm, args.seeds).values():  # one-off costs (oneDNN kernels per shape)
        call(x[:64], y[:64], *((vx[:16], vy[:16]) if validate else (None, None)))
    peaks = [matmul_peak(torch.device("cpu"), seconds=1.5)]
    samples: dict[str, list[dict]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            call, seeds = calls[name]
            load = os.getloadavg()[0]
            t, c = time.perf_counter(), time.process_time()
            call(*inputs)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            images = seeds * epochs * n
            samples[name].append({"images_per_s": images / wall, "cpu_images_per_s": images / cpu, "load": load})
    peaks.append(matmul_peak(torch.device("cpu"), seconds=1.5))
    flops = flops_per_image(model, size)
    out: dict[str, Any] = {
        "model": model,
        "image_size": size,
        "threads": threads,
        "augment": augment,
        "validation": validate,
        "train_images": n,
        "val_images": len(vx) if validate else 0,
        "epochs": epochs,
        "seeds": args.seeds,
        "flops_per_image": flops,
        "matmul_peak_flops": statistics.median(peaks),
        "trainers": {},
    }
    base = statistics.median(s["images_per_s"] for s in samples["before"])
    base_cpu = statistics.median(s["cpu_images_per_s"] for s in samples["before"])
    for name, rows in samples.items():
        rate = statistics.median(s["images_per_s"] for s in rows)
        out["trainers"][name] = {
            "images_per_s": rate,
            "cpu_images_per_s": statistics.median(s["cpu_images_per_s"] for s in rows),
            "ratio": rate / base,
            "cpu_ratio": statistics.median(s["cpu_images_per_s"] for s in rows) / base_cpu,
            "of_peak": rate * flops / out["matmul_peak_flops"],
            "samples": rows,
        }
    print(" | ".join(row_cells(out)), flush=True)
    return out


COLUMNS = [
    "model", "px", "threads", "augment", "validation", "matmul peak GFLOP/s", "before img/s", "fit img/s",
    "fit_seeds img/s", "fit / before", "fit_seeds / before", "(cpu time)", "fit_seeds bf16 / before", "before of peak",
    "fit_seeds of peak",
    "load",
]  # fmt: skip


def row_cells(c: dict) -> list[str]:
    t = c["trainers"]
    return [
        c["model"],
        str(c["image_size"]),
        str(c["threads"]),
        "yes" if c["augment"] else "no",
        "yes" if c["validation"] else "no",
        f"{c['matmul_peak_flops'] / 1e9:.0f}",
        *(f"{t[k]['images_per_s']:.0f}" for k in ("before", "fit", "fit_seeds")),
        f"{t['fit']['ratio']:.2f}",
        f"{t['fit_seeds']['ratio']:.2f}",
        f"{t['fit_seeds']['cpu_ratio']:.2f}",
        f"{t['fit_seeds bf16']['ratio']:.2f}",
        f"{t['before']['of_peak']:.1%}",
        f"{t['fit_seeds']['of_peak']:.1%}",
        f"{statistics.median(s['load'] for r in t.values() for s in r['samples']):.1f}",
    ]


# --------------------------------------------------------------------------------------------
# where the time goes


def run_profiles(before: Any, args: argparse.Namespace) -> list[dict]:
    out = []
    torch.set_num_threads(1)
    for size in args.sizes:
        x, y = data(320, size, 0)
        vx, vy = data(64, size, 1)
        config = downstream.DownstreamConfig(epochs=1, image_size=size, device="cpu")
        for name, (call, seeds) in trainers(before, config, args.seeds).items():
            call(x[:64], y[:64], vx, vy)
            split = profile_split(functools.partial(call, x, y, vx, vy))
            split["ms_per_image"] = split["total_ms"] / (320 * seeds)
            out.append({"image_size": size, "trainer": name, **split})
            print(f"profile {size}px {name}: {split['ms_per_image']:.2f} ms/image", flush=True)
    return out


# --------------------------------------------------------------------------------------------
# levers, one at a time, on training steps alone


def small_cnn(seeds: int, pool_first: bool) -> nn.Sequential:
    def block(c_in: int, c_out: int) -> list[nn.Module]:
        conv = nn.Conv2d(seeds * c_in, seeds * c_out, 3, padding=1, bias=False, groups=seeds)
        if pool_first:
            return [conv, nn.BatchNorm2d(seeds * c_out), nn.MaxPool2d(2), nn.ReLU(inplace=True)]
        return [conv, nn.BatchNorm2d(seeds * c_out), nn.ReLU(), nn.MaxPool2d(2)]

    return nn.Sequential(
        *block(1, 16),
        *block(16, 32),
        *block(32, 64),
        *block(64, 96),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(seeds * 96, seeds * 7),
    )


def lever_steps(size: int, seeds: int) -> dict[str, Callable[[], tuple[Callable, int]]]:
    def step(
        net: nn.Module, s: int, memory: torch.memory_format, autocast: bool = False, compiled: bool = False
    ) -> tuple[Callable, int]:
        x = torch.rand(64, s, size, size).contiguous(memory_format=memory)
        y = torch.randint(0, 7, (64 * s,))
        net = net.to(memory_format=memory)
        opt = torch.optim.Adam(net.parameters(), 1e-3)
        forward = torch.compile(net) if compiled else net

        def run() -> None:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = forward(x).view(64, s, 7).transpose(0, 1).reshape(-1, 7)
            loss = nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

        return run, 64 * s

    fmt = torch.contiguous_format
    return {
        "before (NCHW, ReLU then pool)": lambda: step(small_cnn(1, False), 1, fmt),
        "+ channels-last": lambda: step(small_cnn(1, False), 1, CL),
        "+ pool before ReLU (= fit)": lambda: step(small_cnn(1, True), 1, CL),
        "+ torch.compile": lambda: step(small_cnn(1, True), 1, CL, compiled=True),
        f"+ {seeds} seeds grouped (= fit_seeds)": lambda: step(small_cnn(seeds, True), seeds, CL),
        "+ bfloat16 autocast (not used)": lambda: step(small_cnn(1, True), 1, CL, autocast=True),
        f"+ {seeds} seeds grouped + bfloat16 (not used)": lambda: step(
            small_cnn(seeds, True), seeds, CL, autocast=True
        ),
    }


def run_levers(args: argparse.Namespace) -> list[dict]:
    out = []
    for size in args.sizes:
        for threads in args.threads:
            torch.set_num_threads(threads)
            steps, setup = {}, {}
            for name, make in lever_steps(size, args.seeds).items():
                t = time.perf_counter()
                try:
                    run, images = make()
                    run()
                    run()
                except Exception as exc:  # torch.compile without a working C++ compiler, say
                    print(f"lever {name!r} unavailable: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
                    continue
                steps[name], setup[name] = (run, images), time.perf_counter() - t
            rates: dict[str, list[float]] = {name: [] for name in steps}
            names = list(steps)
            for r in range(args.repeats + 2):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    run, images = steps[name]
                    t = time.perf_counter()
                    for _ in range(args.lever_steps):
                        run()
                    rates[name].append(images * args.lever_steps / (time.perf_counter() - t))
            base = statistics.median(rates[names[0]])
            for name in names:
                rate = statistics.median(rates[name])
                row = {
                    "image_size": size,
                    "threads": threads,
                    "lever": name,
                    "images_per_s": rate,
                    "ratio": rate / base,
                    "setup_s": setup[name],
                    "load": os.getloadavg()[0],
                }
                out.append(row)
                print(f"lever {size}px t{threads} {name}: {rate:.0f} img/s x{rate / base:.2f}", flush=True)
    return out


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline-ref", default=BEFORE_36, help="the commit whose fit is 'before'")
    parser.add_argument("--models", default="small-cnn,resnet18")
    parser.add_argument("--sizes", default="48,64")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=1150, help="small-cnn training images (CK+48's folds: ~750-1150)")
    parser.add_argument("--val", type=int, default=170)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--resnet-train", type=int, default=128)
    parser.add_argument("--resnet-epochs", type=int, default=1)
    parser.add_argument("--lever-steps", type=int, default=6)
    parser.add_argument("--parts", default="throughput,profile,levers")
    parser.add_argument("--quick", action="store_true", help="tiny workloads, one repeat: checks the script runs")
    parser.add_argument(
        "--write", default="downstream_throughput", help="bench/results/NAME.{json,md}; '' writes nothing"
    )
    args = parser.parse_args()
    if args.quick:
        args.train, args.val, args.epochs, args.resnet_train, args.repeats, args.lever_steps = 96, 32, 1, 16, 1, 1
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.threads = [int(t) for t in args.threads.split(",")]
    parts = set(args.parts.split(","))
    before = load_module_at(args.baseline_ref, "fesaug/evaluate/downstream.py")

    conditions = []
    if "throughput" in parts:
        print(" | ".join(COLUMNS), flush=True)
        for model in args.models.split(","):
            combos = (
                [(True, True), (True, False), (False, True), (False, False)] if model == "small-cnn" else [(True, True)]
            )
            for size in args.sizes:
                for threads in args.threads:
                    for augment, validate in combos:
                        conditions.append(run_condition(before, args, model, size, threads, augment, validate))
    profiles = run_profiles(before, args) if "profile" in parts else []
    levers = run_levers(args) if "levers" in parts else []
    result = {
        "benchmark": "downstream fit images/s, before vs after issue #36, same process",
        "baseline_ref": commit_of(args.baseline_ref),
        "conditions": conditions,
        "profiles": profiles,
        "levers": levers,
        "machine": machine(),
        "versions": package_versions(),
        "command": command(),
    }
    text = render(result)
    print(text)
    if args.write:
        write_results(args.write, result, text)


def render(r: dict) -> str:
    lines = [
        "# Downstream classifier training throughput (issue #36)",
        "",
        f"`{r['command']}` on {machine_line(r['machine'])}; {versions_line(r['versions'])}. "
        f"`before`: `fit` at commit {r['baseline_ref'][:10]}, imported beside today's code and timed in the same "
        "rounds. Medians over the repeats; ratios are of medians measured in the same rounds; `of peak`: "
        "FLOPs per training image (forward + backward convolutions and matmuls) x images/s over the same-process "
        "float32 matmul peak; `load`: the 1-minute load average while measuring (2 cores).",
        "",
    ]
    if r["conditions"]:
        lines += [*markdown_table(COLUMNS, [row_cells(c) for c in r["conditions"]]), ""]
    if r["profiles"]:
        families = [*FAMILIES, "other"]
        lines += [
            "## Where the time goes (one epoch, 320 images, 1 thread, torch.profiler self CPU time)",
            "",
            *markdown_table(
                ["px", "trainer", "ms per image", *families],
                [
                    [p["image_size"], p["trainer"], f"{p['ms_per_image']:.2f}", *(f"{p[f]:.0%}" for f in families)]
                    for p in r["profiles"]
                ],
            ),
            "",
        ]
    if r["levers"]:
        lines += [
            "## Levers one at a time (small-cnn training steps of 64 images per seed, no data pipeline)",
            "",
            *markdown_table(
                ["px", "threads", "lever", "images/s", "vs before", "set-up s", "load"],
                [
                    [v["image_size"], v["threads"], v["lever"], f"{v['images_per_s']:.0f}", f"{v['ratio']:.2f}"]
                    + [f"{v['setup_s']:.1f}", f"{v['load']:.1f}"]
                    for v in r["levers"]
                ],
            ),
            "",
        ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
