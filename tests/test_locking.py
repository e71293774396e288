"""Output locks: a second run into an output another run is writing stops at once, names that run
and touches nothing; a killed run never blocks the next one; torchrun ranks share one lock."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.utils.locking import OutputLocked, lock_path, output_lock

from .conftest import REPO, cli_in_process, holding

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_demo_dataset(
        tmp_path_factory.mktemp("demo"), counts={"anger": 4, "happy": 4, "surprise": 4}, n_subjects=4, size=32, folds=2
    )


# command -> (its arguments for a demo manifest and an output folder, the path whose lock it needs)
Command = Callable[[Path, Path], tuple[list[object], Path]]
COMMANDS: dict[str, Command] = {
    "ingest": lambda demo, t: (["ingest", demo.parent / "images", "--out", t / "m.parquet"], t / "m.parquet"),
    "train": lambda demo, t: (["train", "--manifest", demo, "--out", t / "run", "--epochs", "1"], t / "run"),
    "train emotion,au": lambda demo, t: (
        ["train", "--tasks", "emotion,au", "--manifest", demo, "--out", t / "au"],
        t / "au",
    ),
    "balance": lambda demo, t: (
        ["balance", "--manifest", demo, "--checkpoint", t / "best.pt", "--out", t / "b"],
        t / "b",
    ),
    # A run of evaluate holds its folds for its whole run: the second one meets fold 0.
    "evaluate": lambda demo, t: (["evaluate", "--manifest", demo, "--out", t / "e"], t / "e" / "fold-0"),
    "evaluate-synthesis": lambda demo, t: (
        ["evaluate-synthesis", "--manifest", demo, "--out", t / "e"],
        t / "e" / "fold-0",
    ),
    "export": lambda demo, t: (["export", demo, "--out", t / "x"], t / "x"),
    "demo": lambda demo, t: (["demo", "--out", t / "d", "--epochs", "1"], t / "d"),
    "demo-data": lambda demo, t: (["demo-data", "--out", t / "dd"], t / "dd"),
}


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_second_run_into_a_locked_output_stops_at_once_naming_the_holder(
    name: str, demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args, locked = COMMANDS[name](demo, tmp_path)
    with holding(locked, *args) as first:
        before = _tree(tmp_path)
        code, _, err = cli_in_process(capsys, *args)
        assert _tree(tmp_path) == before  # nothing written, nothing removed
    assert code == 1 and "Traceback" not in err
    command = "fesaug " + " ".join(map(str, args))
    assert re.fullmatch(  # the last line: `fesaug demo` says what it is about to do first
        rf"Error: {re.escape(str(locked))} is in use by another fesaug run \(pid {first.pid}, '{re.escape(command)}', "
        r"started \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\); wait for it to finish or stop it",
        err.splitlines()[-1],
    ), err


def test_the_lock_file_names_its_holder_while_held_and_goes_away_after(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with output_lock(out) as holder:
        record = json.loads(lock_path(out).read_text())
        assert record["pid"] == os.getpid() == holder.pid and record["command"] == holder.command
        assert lock_path(out) == tmp_path / ".out.lock"  # beside the output, not in it
    assert not lock_path(out).exists() and not out.exists()


def test_one_output_named_two_ways_has_one_lock(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "out")
    with holding(tmp_path / "out", "export", "m.parquet", "--out", "out"):
        for other in (tmp_path / "link", tmp_path / "sub" / ".." / "out"):
            with pytest.raises(OutputLocked, match="in use by another fesaug run"), output_lock(other):
                pass


def test_a_killed_run_never_blocks_the_next(demo: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m.parquet"
    with holding(out, "ingest", "--out", out) as first:
        first.send_signal(signal.SIGKILL)  # kill -9: the OS drops the lock, the file stays behind
        first.wait(timeout=30)
        assert lock_path(out).exists()
        code, _, err = cli_in_process(capsys, "ingest", demo.parent / "images", "--out", out)
    assert code == 0, err
    assert len(read_manifest(out)) == len(read_manifest(demo)) and not lock_path(out).exists()


def test_a_killed_runs_forked_workers_do_not_keep_its_lock(tmp_path: Path) -> None:
    # A DataLoader worker is a fork of the run; it outlives a kill -9 of the run by seconds.
    script = (
        "import os, signal, sys, time\nfrom fesaug.utils.locking import output_lock\n"
        "with output_lock(sys.argv[1]):\n"
        "    if os.fork() == 0:\n        time.sleep(20)\n        os._exit(0)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path / "out")], timeout=60)
    assert proc.returncode == -signal.SIGKILL
    with output_lock(tmp_path / "out", wait=10):  # free once the worker is scheduled, not when it exits
        pass


def test_torchrun_ranks_share_the_lock_and_stop_together(demo: Path, tmp_path: Path) -> None:
    # Rank 0 takes the lock for the job; when it cannot, every rank stops with its message
    # instead of waiting for rank 0 at a barrier. (A free lock under torchrun: test_balance's
    # two-process run.)
    out = tmp_path / "b"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "fesaug",
        "balance",
        "--manifest",
        str(demo),
        "--checkpoint",
        str(tmp_path / "best.pt"),
        "--out",
        str(out),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    with holding(out, "balance", "--out", out) as first:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("Error: ")]
    # Rank 1 may be stopped by torchrun before it prints the same line.
    assert errors and all(f"{out} is in use by another fesaug run (pid {first.pid}," in e for e in errors), proc.stderr
    assert not out.exists()
