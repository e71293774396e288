"""Run by ``torchrun`` in test_samplers.py: in each process, a WeightedDistributedSampler over a
ManifestDataset's weights (num_replicas and rank from the gloo process group), two epochs, each
drawn through a DataLoader; writes this rank's indices and labels to ``OUT/rank<N>.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist
from torch.utils.data import DataLoader

from fesaug.data import ManifestDataset, WeightedDistributedSampler
from fesaug.utils.distributed import process_group

if __name__ == "__main__":
    manifest, out, num_samples = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    with process_group() as ranks:
        data = ManifestDataset(manifest)
        sampler = WeightedDistributedSampler(data.weights, num_samples=num_samples, seed=7)
        loader = DataLoader(data, batch_size=256, sampler=sampler)
        epochs = []
        for epoch in (0, 1):
            sampler.set_epoch(epoch)
            labels = [int(label) for _, batch in loader for label in batch]
            epochs.append({"indices": list(sampler), "labels": labels})
        record = {"rank": sampler.rank, "world": sampler.num_replicas, "dist_world": dist.get_world_size()}
        (out / f"rank{ranks.rank}.json").write_text(json.dumps({**record, "epochs": epochs}))
