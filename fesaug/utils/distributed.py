"""torchrun support shared by ``fesaug train`` and ``fesaug balance``: who am I, and the process
group the ranks synchronise through."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Ranks:
    """This process's place among the torchrun processes (all zero/one without torchrun)."""

    rank: int
    world: int
    local_rank: int
    local_world: int

    @classmethod
    def from_env(cls) -> Ranks:
        env = os.environ
        return cls(
            int(env.get("RANK", "0")),
            int(env.get("WORLD_SIZE", "1")),
            int(env.get("LOCAL_RANK", "0")),
            int(env.get("LOCAL_WORLD_SIZE", "1")),
        )


@contextlib.contextmanager
def process_group(backend: str = "gloo", device: torch.device | None = None) -> Iterator[Ranks]:
    """Join the torchrun process group for the duration of the block (nothing to do without
    torchrun, or when the caller already joined one); leave it after a last barrier, so no rank
    tears the group down while another still talks to it."""
    ranks = Ranks.from_env()
    joined = ranks.world > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group(backend, rank=ranks.rank, world_size=ranks.world, device_id=device)
    try:
        yield ranks
        if joined:
            dist.barrier()
    finally:
        if joined:
            dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank; a no-op in a single process."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
