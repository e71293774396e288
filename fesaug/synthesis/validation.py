"""What a training run looks at between epochs: validation scores (:func:`validate`), the sample
grid (:func:`save_sample_grid`), and the BatchNorm statistics of an averaged model
(:func:`recalibrate_batch_norm`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader
from torchvision.utils import save_image

from fesaug.data.datasets import ManifestDataset
from fesaug.models import FERSNet, to_model_range
from fesaug.utils.files import atomic_path

__all__ = ["recalibrate_batch_norm", "sample_faces", "save_sample_grid", "validate"]


@torch.no_grad()
def validate(net: FERSNet, loader: DataLoader, device: torch.device) -> dict[str, float]:
    """FER loss / accuracy / balanced accuracy on real validation faces; cycle L1 (source →
    target → source) and, on same-subject pairs, L1 between synthesized and real target image."""
    was_training = net.training
    net.eval()
    num_classes = net.config.num_classes
    correct = np.zeros(num_classes)
    total = np.zeros(num_classes)
    fer_loss = cycle = paired_l1 = 0.0
    n_paired = 0
    for batch in loader:
        x = to_model_range(batch["source"].to(device))
        y, t = batch["source_label"].to(device), batch["target_label"].to(device)
        paired = batch["paired"].to(device)
        out = net(x, t)
        back = net(out.fake, y)
        fer_loss += float(F.cross_entropy(out.logits.float(), y, reduction="sum"))
        hits = (out.logits.argmax(1) == y).cpu().numpy()
        np.add.at(correct, y.cpu().numpy(), hits)
        np.add.at(total, y.cpu().numpy(), 1)
        cycle += float((back.fake - x).abs().flatten(1).mean(1).sum())
        per_pair = (out.fake - to_model_range(batch["target"].to(device))).abs().flatten(1).mean(1)
        paired_l1 += float(per_pair[paired].sum())
        n_paired += int(paired.sum())
    net.train(was_training)
    n = int(total.sum())
    seen = total > 0
    return {
        "val_fer_loss": fer_loss / n,
        "val_fer_acc": float(correct.sum() / n),
        "val_fer_balanced_acc": float((correct[seen] / total[seen]).mean()),
        "val_cycle_l1": cycle / n,
        "val_paired_l1": paired_l1 / n_paired if n_paired else math.nan,
    }


@torch.no_grad()
def save_sample_grid(net: FERSNet, faces: Tensor, path: Path) -> None:
    """One row per face in ``faces`` (uint8, N×C×S×S, gray or colour): the input, then each class synthesized."""
    was_training = net.training
    net.eval()
    num_classes = net.config.num_classes
    device = next(net.parameters()).device
    x = to_model_range(faces.to(device))
    targets = torch.arange(num_classes, device=device).repeat(len(x))
    fakes = net.synthesize(x.repeat_interleave(num_classes, dim=0), targets)
    rows = torch.cat([x[:, None], fakes.view(len(x), num_classes, *x.shape[1:])], dim=1)
    net.train(was_training)
    with atomic_path(path) as tmp:
        save_image((rows.flatten(0, 1).float().cpu() + 1) / 2, tmp, nrow=num_classes + 1, padding=2, format="png")


def sample_faces(dataset: ManifestDataset, n: int) -> Tensor:
    """``n`` faces for the sample grid, cycling through the classes so rare ones appear too."""
    by_class = [np.flatnonzero(dataset.labels == c).tolist() for c in range(len(dataset.classes))]
    picks: list[int] = []
    while len(picks) < min(n, len(dataset)):
        for rows in by_class:
            if rows and len(picks) < n:
                picks.append(rows.pop(0))
    return dataset.pixels[picks]


@torch.no_grad()
def recalibrate_batch_norm(net: nn.Module, loader: DataLoader, device: torch.device) -> None:
    """Recompute ``net``'s BatchNorm statistics over one pass of ``loader`` (sources translated to
    their targets): an average of weights has no running statistics of its own. SWA's
    ``update_bn`` does the pass; it calls a model on the first element of each batch, so each
    dict batch goes in as a 1-tuple to a wrapper that unpacks it into FERSNet's two arguments."""
    # The wrapper takes net's mode: update_bn puts back the mode it found.
    update_bn(((batch,) for batch in loader), _TranslateBatch(net, device).train(net.training))


class _TranslateBatch(nn.Module):
    def __init__(self, net: nn.Module, device: torch.device) -> None:
        super().__init__()
        self.net, self.device = net, device

    def forward(self, batch: dict[str, Tensor]) -> Any:
        return self.net(to_model_range(batch["source"].to(self.device)), batch["target_label"].to(self.device))
