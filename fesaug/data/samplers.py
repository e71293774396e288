"""Weighted sampling that works under ``torchrun``.

PyTorch has a weighted sampler (``WeightedRandomSampler``) and a distributed one
(``DistributedSampler``), but not both in one (pytorch/pytorch#77154): with
``DistributedDataParallel`` every rank would draw its own weighted sample, so ranks repeat each
other's items and an epoch's class balance is no longer the one the weights ask for.
:class:`WeightedDistributedSampler` makes one weighted draw per epoch, the same on every rank (a
function of ``seed`` and the epoch only), and gives each rank every ``num_replicas``-th position
of it, as ``DistributedSampler`` shards a permutation.

Any weights work: a weighted balance run's ``weight`` column (:attr:`ManifestDataset.weights
<fesaug.data.datasets.ManifestDataset.weights>`), inverse class frequencies
(:meth:`~fesaug.data.datasets.ManifestDataset.sample_weights`), or weights computed from any
dataset's labels (:meth:`~fesaug.data.datasets.ManifestDataset.get_labels`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Sampler

from fesaug.utils.distributed import Ranks
from fesaug.utils.errors import InvalidValue


class WeightedDistributedSampler(Sampler[int]):
    """Draw ``num_samples`` indices per epoch with probability proportional to ``weights`` and
    shard the draw across ``num_replicas`` processes.

    ``num_samples`` is the size of the whole epoch, over all ranks (as ``WeightedRandomSampler``'s
    ``num_samples``; ``len(dataset)`` keeps the epoch as long as the dataset); each rank gets
    ``ceil(num_samples / num_replicas)`` indices (the draw is lengthened to a multiple of
    ``num_replicas`` so that every rank takes the same number of steps). ``num_replicas`` and
    ``rank`` default to the initialised process group's, else to torchrun's ``WORLD_SIZE`` and
    ``RANK`` (1 and 0 without torchrun). ``seed`` must be the same on every rank. Call
    :meth:`set_epoch` before each epoch: the draw is a function of ``(seed, epoch)``, so an epoch
    is reproducible and every rank computes the same draw without communicating.
    ``replacement=False`` draws each index at most once per epoch (needs at least as many
    positive weights as draws).

    Example (under ``torchrun --nproc-per-node 2``)::

        data = ManifestDataset("balanced/manifest.parquet")
        sampler = WeightedDistributedSampler(data.weights, num_samples=len(data), seed=0)
        loader = DataLoader(data, batch_size=64, sampler=sampler)
        for epoch in range(epochs):
            sampler.set_epoch(epoch)
            for images, labels in loader: ...
    """

    def __init__(
        self,
        weights: Sequence[float] | np.ndarray | torch.Tensor,
        num_samples: int,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        replacement: bool = True,
    ) -> None:
        self.weights = _check_weights(weights)
        if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
            raise InvalidValue(f"num_samples must be a positive whole number (draws per epoch), got {num_samples!r}")
        if num_replicas is None or rank is None:
            default = _default_ranks()
            num_replicas = default[0] if num_replicas is None else num_replicas
            rank = default[1] if rank is None else rank
        if not isinstance(num_replicas, (int, np.integer)) or num_replicas < 1:
            raise InvalidValue(f"num_replicas must be a positive whole number, got {num_replicas!r}")
        if not isinstance(rank, (int, np.integer)) or not 0 <= rank < num_replicas:
            raise InvalidValue(f"rank must lie in 0..{num_replicas - 1} (num_replicas={num_replicas}), got {rank!r}")
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.num_samples = int(num_samples)
        self.per_replica = math.ceil(self.num_samples / self.num_replicas)
        self.total_size = self.per_replica * self.num_replicas
        self.replacement = bool(replacement)
        positive = int((self.weights > 0).sum())
        if not self.replacement and self.total_size > positive:
            raise InvalidValue(
                f"cannot draw {self.total_size} distinct indices without replacement from {positive} with a "
                "positive weight; draw fewer (num_samples) or pass replacement=True"
            )
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the draw of ``epoch`` (the same on every rank)."""
        self.epoch = int(epoch)

    def global_draw(self) -> torch.Tensor:
        """This epoch's draw over all ranks (``total_size`` indices); rank ``r`` takes positions
        ``r, r + num_replicas, …``."""
        state = np.random.SeedSequence([self.seed, self.epoch]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(state >> np.uint64(1)))
        return torch.multinomial(self.weights, self.total_size, self.replacement, generator=generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.global_draw()[self.rank :: self.num_replicas].tolist())

    def __len__(self) -> int:
        return self.per_replica


def _check_weights(weights: Sequence[float] | np.ndarray | torch.Tensor) -> torch.Tensor:
    try:
        w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
    except (TypeError, ValueError) as exc:
        raise InvalidValue(f"weights must be a sequence of numbers, one per dataset item ({exc})") from None
    if w.dim() != 1 or w.numel() == 0:
        raise InvalidValue(f"weights must be one non-empty list of numbers, one per item; got shape {tuple(w.shape)}")
    bad = torch.nonzero(~torch.isfinite(w) | (w < 0)).flatten()
    if bad.numel():
        i = int(bad[0])
        raise InvalidValue(f"weights must be finite and >= 0; item {i} has {float(w[i])}")
    if not bool((w > 0).any()):
        raise InvalidValue("every weight is 0: there is nothing to draw")
    return w


def _default_ranks() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    ranks = Ranks.from_env()
    return ranks.world, ranks.rank
