"""Where a benchmark's time goes: one call under torch.profiler, its self CPU time split by
operator family (convolutions, normalisation, pooling, ...) as shares of the total, for the
tables in bench/results/. Shared by the throughput benchmarks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from torch.profiler import ProfilerActivity, profile

# Substrings of aten operator names, lower case; the first family that matches takes the operator.
FAMILIES: dict[str, tuple[str, ...]] = {
    "convolution": ("convolution", "conv2d", "mkldnn_conv"),
    "normalisation": ("batch_norm", "group_norm", "instance_norm", "layer_norm"),
    "pooling": ("max_pool", "avg_pool", "upsample"),
    "activations": ("relu", "clamp_min", "threshold_backward", "sigmoid", "tanh"),
    "layout copies": ("copy_", "contiguous", "clone"),
    "zero fill": ("fill_", "zero_"),
    "resampling": ("grid_sampler", "affine_grid"),
    "optimiser": ("adam", "_foreach", "lerp", "addcdiv"),
}


def profile_split(call: Callable[[], object], families: Mapping[str, Sequence[str]] = FAMILIES) -> dict[str, float]:
    """Self CPU time of one ``call()`` by operator family, as shares of the total (key ``other``
    for the rest), and the total in milliseconds (``total_ms``)."""
    with profile(activities=[ProfilerActivity.CPU]) as p:
        call()
    totals: dict[str, float] = dict.fromkeys([*families, "other"], 0.0)
    for event in p.key_averages():
        key = event.key.lower()
        family = next((f for f, needles in families.items() if any(n in key for n in needles)), "other")
        totals[family] += event.self_cpu_time_total
    whole = sum(totals.values()) or 1.0
    return {"total_ms": whole / 1e3, **{k: v / whole for k, v in totals.items()}}
