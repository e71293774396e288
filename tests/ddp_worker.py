"""Run by ``torchrun`` in test_training.py: ``fesaug train`` in each process, then write this
rank's digest of the final FERSNet and discriminator weights to ``DIGEST_DIR/rank<N>.txt``.

Only rank 0 writes checkpoints, so the other replicas' weights are captured by recording the
networks that training builds.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

from fesaug.cli.main import main
from fesaug.synthesis import state

built = []


def _recording(cls: type) -> type:
    class Recorded(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    return Recorded


def weight_digest(modules: list) -> str:
    """sha256 over the parameters of ``modules``.

    Buffers (BatchNorm running statistics) are left out: DDP copies rank 0's buffers to the
    other ranks at the start of every forward pass, so after the last step each rank holds the
    statistics of its own last batch; only rank 0's are saved.
    """
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in module.named_parameters():
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


if __name__ == "__main__":
    digest_dir = Path(sys.argv[1])
    state.FERSNet = _recording(state.FERSNet)  # the module that builds them
    state.Discriminator = _recording(state.Discriminator)
    main(sys.argv[2:])
    (digest_dir / f"rank{os.environ['RANK']}.txt").write_text(weight_digest(built))
