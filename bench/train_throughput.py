"""Training throughput of FERSNet + discriminator, and achieved FLOP/s against a peak measured in
the same process (a float32 matrix multiply on the same threads), so the ratio survives a noisy
machine better than either number alone.

    .venv/bin/python bench/train_throughput.py                # cpu preset, batch 32, 64x64
    .venv/bin/python bench/train_throughput.py --preset paper --batch-size 8

One step is what `fesaug train` does per batch: FERSNet forward (translate, cycle back,
classify), `d_steps` discriminator updates and one FERSNet update. FLOPs are counted by
torch.utils.flop_counter over one whole step, backward passes included.
"""

from __future__ import annotations

import argparse
import time

import torch
from record import command, machine, machine_line, write_results
from torch.utils.flop_counter import FlopCounterMode

from fesaug.models import Discriminator, FERSNet
from fesaug.synthesis.config import TrainConfig
from fesaug.synthesis.training import GeneratorStep, Optimisation, Runtime, train_step
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig.preset_config(args.preset)
    model_config = config.model_config(num_classes=7)
    net, disc = FERSNet(model_config).to(device), Discriminator(model_config).to(device)
    adam = {"lr": config.lr, "betas": config.betas}
    rt = Runtime(device=device, rank=0, world_size=1, local_rank=0, amp_dtype=None)
    o = Optimisation(
        g_step=GeneratorStep(net),
        d_train=disc,
        disc=disc,
        opt_g=torch.optim.Adam(net.parameters(), **adam),
        opt_d=torch.optim.Adam(disc.parameters(), **adam),
        scaler=torch.amp.GradScaler(device.type, enabled=False),
    )
    s, b = model_config.image_size, args.batch_size
    batch = {
        "source": torch.rand(b, 1, s, s),
        "target": torch.rand(b, 1, s, s),
        "source_label": torch.randint(0, 7, (b,)),
        "target_label": torch.randint(0, 7, (b,)),
        "paired": torch.rand(b) < 0.5,
    }

    with FlopCounterMode(display=False) as counter:
        train_step(batch, o, config.loss, config.d_steps, rt)
    flops_per_step = counter.get_total_flops()
    train_step(batch, o, config.loss, config.d_steps, rt)  # warm-up
    peak_before = matmul_peak(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        train_step(batch, o, config.loss, config.d_steps, rt)
    if device.type == "cuda":
        torch.cuda.synchronize()
    step_s = (time.perf_counter() - start) / args.steps
    peak = (peak_before + matmul_peak(device)) / 2  # bracket the timed steps
    achieved = flops_per_step / step_s
    result = {
        "benchmark": "FERSNet training step (G + D), achieved FLOP/s vs same-process matmul peak",
        "preset": args.preset,
        "batch_size": b,
        "image_size": s,
        "d_steps": config.d_steps,
        "sharing": model_config.sharing,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "flops_per_step": flops_per_step,
        "step_seconds": step_s,
        "images_per_s": b / step_s,
        "achieved_flops": achieved,
        "matmul_peak_flops": peak,
        "ratio_of_peak": achieved / peak,
        "machine": machine(),
        "torch": torch.__version__,
        "timed_steps": args.steps,
        "command": command(),
    }
    table = render(result)
    write_results(f"train_throughput_{args.preset}_b{b}_t{torch.get_num_threads()}", result, table)
    print(table)


def render(r: dict) -> str:
    b, s = r["batch_size"], r["image_size"]
    header = ["batch", "image", "GFLOP/step", "s/step", "images/s", "achieved GFLOP/s", "matmul peak GFLOP/s"]
    row = [b, f"{s}x{s}", f"{r['flops_per_step'] / 1e9:.1f}", f"{r['step_seconds']:.3f}", f"{r['images_per_s']:.1f}"]
    row += [f"{r['achieved_flops'] / 1e9:.1f}", f"{r['matmul_peak_flops'] / 1e9:.1f}", f"{r['ratio_of_peak']:.1%}"]
    table = "\n".join(markdown_table([*header, "of peak"], [row]))
    return (
        f"# Training throughput ({r['preset']} preset)\n\n`{r['command']}` on {machine_line(r['machine'])}, torch "
        f"{r['torch']}, "
        f"{r['threads']} thread(s), {r['device']}.\n\n"
        f"{table}\n"
    )


if __name__ == "__main__":
    main()
