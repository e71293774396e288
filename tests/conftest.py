"""Shared fixtures: tiny generated images and manifests, the CLI runner, the real CK+48 folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fesaug.data.images import encode_png, sha256_bytes
from fesaug.data.manifest import read_manifest, write_manifest
from fesaug.synthesis.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CKPLUS = REPO.parent / "shared" / "data" / "ckplus48"


@pytest.fixture
def ckplus_dir() -> Path:
    if not (CKPLUS.is_dir() and any(CKPLUS.iterdir())):
        pytest.skip(f"real CK+48 data not found at {CKPLUS} (research-only; only present beside the project checkout)")
    return CKPLUS


def copy_beside(out: Path, name: str) -> Path:
    """A copy of the output folder ``out`` (e.g. an evaluation) named ``name`` beside it, in the
    same parent folder: at the same depth, the relative image roots of the manifests inside keep
    pointing at the same images. Returns the copy."""
    target = out.parent / name
    shutil.copytree(out, target)
    return target


def png_bytes(seed: int = 0, size: int = 16) -> bytes:
    rng = np.random.default_rng(seed)
    return encode_png(Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)))


def cli_in_process(capsys: pytest.CaptureFixture, *args: object) -> tuple[int, str, str]:
    """Run the real entry point in this process (same error handling as the console script, no
    start-up cost, no second torch import): exit code, stdout, stderr."""
    from fesaug.cli.main import main as cli_main

    try:
        cli_main([str(a) for a in args])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed entry point in a subprocess, as a user would (exit codes, stderr)."""
    return subprocess.run([sys.executable, "-m", "fesaug", *map(str, args)], capture_output=True, text=True, cwd=cwd)


# Holds the lock on argv[1] as a run of the command argv[2:] would, until stdin closes.
_HOLDER = """
import sys
from fesaug.utils.locking import output_lock
path, sys.argv = sys.argv[1], ["fesaug", *sys.argv[2:]]
with output_lock(path):
    print("held", flush=True)
    sys.stdin.read()
"""


@contextlib.contextmanager
def holding(output: Path, *command: object) -> Iterator[subprocess.Popen]:
    """Another process that holds ``output``'s lock, recorded as running ``fesaug COMMAND...``."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(output), *map(str, command)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        if proc.poll() is None:
            proc.stdin.close()
        proc.wait(timeout=30)


def kill_at(point: str, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``fesaug ARGS`` in a subprocess that kills itself (SIGKILL, as ``kill -9``) at
    ``point`` (see :mod:`fesaug.utils.killpoints`); fails unless it got there."""
    env = {**os.environ, "FESAUG_KILL_AT": point}
    proc = subprocess.run(
        [sys.executable, "-m", "fesaug", *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == -signal.SIGKILL, f"not killed at {point} (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return proc


@pytest.fixture
def small_manifest(tmp_path: Path) -> Path:
    """Four real images (two embedded, two on disk) of two subjects in two folds."""
    rows = []
    for i in range(4):
        data = png_bytes(i)
        path = f"images/img{i}.png"
        if i >= 2:
            (tmp_path / "images").mkdir(exist_ok=True)
            (tmp_path / path).write_bytes(data)
        rows.append(
            {
                "sample_id": f"s{i}",
                "image": {"bytes": data if i < 2 else None, "path": path},
                "label": i % 2,
                "subject_id": f"P{i // 2}",
                "fold": i // 2,
                "width": 16,
                "height": 16,
                "sha256": sha256_bytes(data),
            }
        )
    return write_manifest(pd.DataFrame(rows), tmp_path / "m.parquet", classes=["anger", "happy"])


# A FERSNet small enough to train in seconds at 32x32 on one thread.
TINY = {"model": {"image_size": 32, "widths": [8, 16, 16], "disc_width": 8}, "batch_size": 8, "epochs": 2}


def tiny_config(**changes) -> TrainConfig:
    return TrainConfig().updated({**TINY, **changes}, where="test")


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread, also in subprocesses: two threads on two busy shared cores can be 100x
    slower than one (OpenMP spin-waits). Module scope, so module-scoped fixtures see it; use it
    with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(1)
        yield
    torch.set_num_threads(threads)


# The small demo set many tests balance: 45 images of 8 subjects in 4 folds, 32x32, imbalanced like
# CK+. Made once per session with a generator trained on it (fold 0 held out) and a judge trained
# apart on the same folds; tests read them and write elsewhere.
SMALL_COUNTS = {"anger": 6, "contempt": 4, "disgust": 7, "fear": 4, "happy": 9, "sadness": 5, "surprise": 10}


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fesaug.data.demo import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("small-demo"), counts=SMALL_COUNTS, n_subjects=8, size=32, folds=4)


@pytest.fixture(scope="session")
def small_checkpoint(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fesaug.synthesis.training import train

    with _torch_threads(1):
        run = train(small_demo, tmp_path_factory.mktemp("small-run") / "run", tiny_config(holdout_fold=0, epochs=1))
    return run.best_checkpoint


@pytest.fixture(scope="session")
def small_judge(small_demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A downstream classifier trained on the folds the generator trained on (not fold 0)."""
    from fesaug.data.datasets import ManifestDataset
    from fesaug.evaluate.downstream import DownstreamConfig, fit, save_classifier

    m = read_manifest(small_demo)
    data = ManifestDataset(m, rows=np.flatnonzero((m.df["fold"] != 0).to_numpy()), image_size=32)
    config = DownstreamConfig(epochs=2, image_size=32, batch_size=16, device="cpu")
    with _torch_threads(1):
        model = fit(data.pixels, data.labels, config=config, num_classes=len(m.classes)).model
    path = tmp_path_factory.mktemp("small-judge") / "judge.pt"
    save_classifier(model, path, m.classes)
    return path
