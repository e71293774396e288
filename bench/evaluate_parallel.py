"""Run ``fesaug evaluate`` with one process per test fold, then aggregate, for a machine with
many cores (or one GPU that a single fold cannot keep busy).

Each fold process writes only its own ``fold-K/`` cache, and holds that fold's lock while it runs,
so they can share one ``--out``; the final call (``--folds`` = the folds that finished) only
aggregates. ``--deadline`` stops the fold
processes in time to aggregate and copy what finished; running the same command again resumes
the rest from the caches.

    python bench/evaluate_parallel.py --jobs 10 --threads 1 --deadline 480 -- \\
        --manifest ck.parquet --out eval-ck --generator-epochs 30 --device cuda
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from fesaug.data.manifest import read_manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2, help="fold processes at a time")
    parser.add_argument("--threads", type=int, default=1, help="OMP/torch threads per process")
    parser.add_argument("--deadline", type=float, default=None, help="seconds after which unfinished folds are stopped")
    parser.add_argument("--folds", default="all")
    parser.add_argument("evaluate_args", nargs=argparse.REMAINDER, help="-- then the fesaug evaluate options")
    args = parser.parse_args()
    rest = [a for a in args.evaluate_args if a != "--"]
    manifest = Path(rest[rest.index("--manifest") + 1])
    out = Path(rest[rest.index("--out") + 1])
    folds = (
        sorted(int(f) for f in read_manifest(manifest).df["fold"].dropna().unique())
        if args.folds == "all"
        else [int(f) for f in args.folds.split(",")]
    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    start, pending, running, logs = time.time(), list(folds), {}, out.parent / f"{out.name}-logs"
    logs.mkdir(parents=True, exist_ok=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            k = pending.pop(0)
            # Appended, not truncated: a second driver started on the same --out must not wipe the
            # log of a fold process the first one is still running.
            log = open(logs / f"fold-{k}.log", "a")  # noqa: SIM115 - open while its fold process runs
            log.write(
                f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} fold {k}: fesaug evaluate {' '.join(rest)} --folds {k}\n"
            )
            log.flush()
            running[k] = (
                subprocess.Popen(
                    [sys.executable, "-m", "fesaug", "evaluate", *rest, "--folds", str(k)],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                ),
                log,
            )
        for k, (proc, log) in list(running.items()):
            if proc.poll() is not None:
                log.close()
                print(f"fold {k}: exit {proc.returncode} after {time.time() - start:.0f} s", flush=True)
                del running[k]
        if args.deadline and time.time() - start > args.deadline:
            for k, (proc, log) in running.items():
                proc.terminate()
                proc.wait()
                log.close()
                print(f"fold {k}: stopped at the deadline", flush=True)
            running, pending = {}, []
        time.sleep(2)
    done = [
        k
        for k in folds
        if (out / f"fold-{k}" / "synthesis.json").exists() or (out / f"fold-{k}" / "oversample.json").exists()
    ]
    print(f"finished folds: {done} in {time.time() - start:.0f} s", flush=True)
    if done:
        subprocess.run(
            [sys.executable, "-m", "fesaug", "evaluate", *rest, "--folds", ",".join(map(str, done))],
            env=env,
            check=True,
        )


if __name__ == "__main__":
    main()
