"""Where a training run executes: the device and mixed precision, the process group under
``torchrun``, threads and determinism (:func:`runtime`), and what a step needs of it (:class:`Runtime`)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from fesaug.synthesis.config import TrainConfig
from fesaug.utils.devices import resolve_device
from fesaug.utils.distributed import Ranks, barrier, process_group
from fesaug.utils.errors import FesaugError

__all__ = ["Runtime", "runtime"]


@dataclass
class Runtime:
    """The device, this process's place among the training processes, and the autocast dtype."""

    device: torch.device
    rank: int
    world_size: int
    local_rank: int
    amp_dtype: torch.dtype | None  # autocast dtype, None for full precision

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def barrier(self) -> None:
        barrier()


@contextlib.contextmanager
def runtime(config: TrainConfig) -> Iterator[Runtime]:
    """Pick the device, join the process group under torchrun, set determinism and threads;
    restore the process-wide settings afterwards (``train`` may be called from a notebook)."""
    ranks = Ranks.from_env()
    use_cuda = resolve_device(config.device).type == "cuda"
    saved = (
        torch.get_num_threads(),
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    if use_cuda:
        if ranks.local_world > torch.cuda.device_count():
            # NCCL cannot run two ranks on one GPU.
            raise FesaugError(
                f"torchrun started {ranks.local_world} processes on this node but torch sees "
                f"{torch.cuda.device_count()} GPU(s); use --nproc-per-node {torch.cuda.device_count()} "
                "or --device cpu"
            )
        device = torch.device("cuda", ranks.local_rank)
        torch.cuda.set_device(device)
        amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if config.amp else None
    else:
        device, amp_dtype = torch.device("cpu"), None
        # Processes sharing a machine would otherwise each start one thread per core. On a
        # machine busy with other work, fewer threads than cores can be many times faster
        # (OpenMP threads wait for descheduled siblings): set OMP_NUM_THREADS there.
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // ranks.local_world))
    if config.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only: a few CUDA kernels (e.g. nearest-upsampling backward) have no deterministic
        # version; on the CPU every op used here is deterministic.
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = use_cuda and not config.deterministic
    try:
        with process_group("nccl" if use_cuda else "gloo", device if use_cuda else None):
            yield Runtime(
                device=device, rank=ranks.rank, world_size=ranks.world, local_rank=ranks.local_rank, amp_dtype=amp_dtype
            )
    finally:
        torch.set_num_threads(saved[0])
        torch.use_deterministic_algorithms(saved[1], warn_only=saved[2])
        torch.backends.cudnn.benchmark = saved[3]
