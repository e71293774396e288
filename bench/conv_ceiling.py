"""How close to the matmul peak a network's convolutions alone can run on this CPU: the ceiling
that any training step built from them can reach (issue #36's "of peak" targets).

One training step of each network runs with a hook that records every 2-d convolution it calls
(input shape, weights, stride, padding, groups). Each recorded convolution is then timed alone,
forward and backward (input and weight gradients), in the network's memory layout and arithmetic,
with nothing else in the loop, and its FLOPs counted by torch's FLOP counter. The sum over the
step's convolutions gives the rate the convolution kernels reach by themselves; a step spends
time on other operators too (normalisation, pooling, activations, the optimiser), so it cannot run
faster than that. Every rate is a share of the float32 matmul peak measured in the same process
before and after, as the throughput benchmarks report it.

    .venv/bin/python bench/conv_ceiling.py --threads 2
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from record import command, machine, machine_line, write_results
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import build_step, matmul_peak

from fesaug.evaluate.classifiers import make_classifier
from fesaug.synthesis import runtime, step
from fesaug.synthesis.config import TrainConfig
from fesaug.utils.tables import markdown_table


@dataclass(frozen=True)
class ConvCall:
    input_shape: tuple[int, ...]
    weight_shape: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...] | str
    dilation: tuple[int, ...]
    groups: int
    channels_last: bool
    needs_input_grad: bool


def record_convolutions(run: Callable[[], object]) -> list[ConvCall]:
    """Every ``nn.Conv2d`` call made by ``run()``, in order."""
    calls: list[ConvCall] = []

    def hook(module: torch.nn.Module, inputs: tuple, _output: object) -> None:
        if isinstance(module, torch.nn.Conv2d):
            x = inputs[0]
            calls.append(
                ConvCall(
                    tuple(x.shape), tuple(module.weight.shape), module.stride, module.padding, module.dilation,
                    module.groups, x.is_contiguous(memory_format=torch.channels_last), x.requires_grad,
                )
            )  # fmt: skip

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        run()
    finally:
        handle.remove()
    return calls


def time_convolution(call: ConvCall, dtype: torch.dtype | None, repeats: int) -> tuple[float, float]:
    """Median seconds and FLOPs of one convolution's forward and backward, alone."""
    layout = torch.channels_last if call.channels_last else torch.contiguous_format
    x = torch.randn(call.input_shape).contiguous(memory_format=layout).requires_grad_(call.needs_input_grad)
    w = torch.randn(call.weight_shape, requires_grad=True)
    b = torch.randn(call.weight_shape[0], requires_grad=True)

    def once() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            y = torch.nn.functional.conv2d(x, w, b, call.stride, call.padding, call.dilation, call.groups)
        y.backward(torch.ones_like(y))

    with FlopCounterMode(display=False) as counter:
        once()
    once()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        times.append(time.perf_counter() - start)
    return statistics.median(times), float(counter.get_total_flops())


def networks(batch: int) -> dict[str, Callable[[], object]]:
    """One training step of each network, as the throughput benchmarks run it."""
    config = TrainConfig.preset_config("cpu")
    s = config.model_config(num_classes=7).image_size
    g = torch.Generator().manual_seed(0)
    fers_batch = {
        "source": torch.rand(32, 1, s, s, generator=g),
        "target": torch.rand(32, 1, s, s, generator=g),
        "source_label": torch.randint(0, 7, (32,), generator=g),
        "target_label": torch.randint(0, 7, (32,), generator=g),
        "paired": torch.rand(32, generator=g) < 0.5,
    }
    out = {"FERSNet step (cpu preset, batch 32, 64 px)": build_step(
        step, runtime, None, config, fers_batch, torch.device("cpu"), None
    )}  # fmt: skip
    for px in (48, 64):
        net = make_classifier("small-cnn", 7, px).to(memory_format=torch.channels_last)
        x = torch.rand(batch, 1, px, px).contiguous(memory_format=torch.channels_last)

        def small_step(net: torch.nn.Module = net, x: torch.Tensor = x) -> None:
            net(x).sum().backward()

        out[f"small CNN step (batch {batch}, {px} px)"] = small_step
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64, help="the small CNN's batch (fesaug evaluate's)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    peaks = [matmul_peak(torch.device("cpu"))]
    rows = []
    for name, run in networks(args.batch_size).items():
        calls = record_convolutions(run)
        for label, dtype in (("float32", None), ("bfloat16 autocast", torch.bfloat16)):
            timed = [time_convolution(c, dtype, args.repeats) for c in calls]
            seconds, flops = sum(t for t, _ in timed), sum(f for _, f in timed)
            rows.append({"network": name, "arithmetic": label, "convolutions": len(calls), "seconds": seconds,
                         "gflop": flops / 1e9, "gflops_per_s": flops / seconds / 1e9})  # fmt: skip
    peaks.append(matmul_peak(torch.device("cpu")))
    peak = statistics.median(peaks) / 1e9
    for r in rows:
        r["of_peak"] = r["gflops_per_s"] / peak
    result = {"machine": machine(args.threads), "command": command(), "threads": args.threads,
              "matmul_peak_gflops": peak, "peaks_gflops": [p / 1e9 for p in peaks], "rows": rows}  # fmt: skip
    table = [
        [r["network"], r["arithmetic"], str(r["convolutions"]), f"{r['gflop']:.2f}", f"{r['seconds'] * 1e3:.0f}",
         f"{r['gflops_per_s']:.0f}", f"{r['of_peak']:.0%}"]
        for r in rows
    ]  # fmt: skip
    header = ["network", "arithmetic", "convolutions", "GFLOP", "ms (convolutions alone)", "GFLOP/s", "of peak"]
    md = "\n".join(
        [
            "# The convolutions' own ceiling (issue #36)",
            "",
            f"`{result['command']}` on {machine_line(result['machine'])}, torch {torch.__version__}, "
            f"{args.threads} thread(s). Float32 matmul peak {peak:.0f} GFLOP/s (median of "
            f"{', '.join(f'{p:.0f}' for p in result['peaks_gflops'])}, measured before and after). Each convolution "
            "a training step calls, timed alone forward and backward (median of "
            f"{args.repeats}), summed over the step; the step's other operators add time, so no step built from "
            "these kernels runs above this share of the peak.",
            "",
            *markdown_table(header, table, align="llrrrrr"),
            "",
        ]
    )
    write_results(f"conv_ceiling_t{args.threads}", result, md)


if __name__ == "__main__":
    main()
