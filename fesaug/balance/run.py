"""``fesaug balance``'s run: plan on every rank, fill the chunks, write the manifest last.

The output folder ``DIR`` is locked for the run. Work goes to ``DIR/.fesaug-balance/``: the plan
a resumed run must match (``plan.json``, :data:`fesaug.balance.records.PLAN`) and one part file
per finished chunk (:mod:`fesaug.balance.chunks`). Under ``torchrun`` rank ``r`` takes chunks
``r, r + world, …``; rank 0 then writes the manifest, card and histogram
(:func:`fesaug.balance.output.finish`). The manifest is written last: its presence means the job
is finished.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from fesaug.balance.card import summary_from
from fesaug.balance.chunks import run_chunk
from fesaug.balance.config import BalanceConfig, BalanceResult
from fesaug.balance.output import OUTPUTS, WORK_DIR, finish, part_path
from fesaug.balance.plan import Plan, make_plan, source_pixels
from fesaug.balance.records import PLAN
from fesaug.balance.reject import check_rejects, done_result, finish_round, plan_round, prepare_round_dir
from fesaug.utils.distributed import barrier, process_group
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_write_text, check_out_folder, remove_stale_temporaries
from fesaug.utils.locking import output_lock
from fesaug.utils.runlog import jsonable


def balance(
    manifest: str | os.PathLike,
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    config: BalanceConfig | None = None,
    *,
    overwrite: bool = False,
    device: str | None = None,
    progress: bool = False,
    reject: str | os.PathLike | None = None,
) -> BalanceResult:
    """Balance ``manifest`` with the generator in ``checkpoint``; write the dataset to ``out_dir``.

    See :mod:`fesaug.balance`. Re-running the same call after an interruption resumes it; a second
    run into ``out_dir`` while one is running is refused (:func:`fesaug.utils.locking.output_lock`).
    ``progress``: a progress bar on stderr when it is a terminal. ``reject``: a file of sample ids
    (the review page's ``rejects.txt``) whose rows of the finished ``out_dir`` are replaced
    (:mod:`fesaug.balance.reject`).
    """
    config = config or BalanceConfig()
    config.check_judge()
    out = Path(out_dir)
    start = time.perf_counter()
    # gloo even on GPUs: the ranks only meet at barriers, and several may share one GPU.
    with process_group() as ranks, output_lock(out):
        rank, world = ranks.rank, ranks.world
        if device is None and torch.cuda.is_available():
            # Ranks share the node's GPUs; several ranks on one GPU is fine for inference.
            device = f"cuda:{ranks.local_rank % torch.cuda.device_count()}"
        # A wrong --reject file fails before any model is loaded.
        rnd = check_rejects(out, reject) if reject is not None else None
        if rnd is not None and rnd.done:  # the same command again: the footer already has the round
            return done_result(out, rnd) if rank == 0 else summary_from(out)
        plan = make_plan(Path(manifest), Path(checkpoint), config, device)
        if rnd is not None:
            plan = plan_round(plan, rnd)
        if rank == 0:
            (prepare_round_dir if rnd is not None else prepare_out_dir)(out, plan.key, overwrite)
        barrier()
        chunks = [plan.slots[i : i + config.batch_size] for i in range(0, len(plan.slots), config.batch_size)]
        done = [i for i in range(len(chunks)) if part_path(out, i).exists()]
        mine = [i for i in range(rank, len(chunks), world) if not part_path(out, i).exists()]
        sources, pixels = _sources(plan, decode=bool(mine))
        position = {int(r): i for i, r in enumerate(sources.tolist())}
        _generate(plan, chunks, mine, pixels, position, out, progress=progress and rank == 0)
        barrier()
        end = finish if rnd is None else functools.partial(finish_round, rnd=rnd)
        result = end(plan, out, len(chunks), start, resumed=len(done)) if rank == 0 else None
        barrier()
    if result is None:  # other ranks read what rank 0 wrote
        result = summary_from(out)
    return result


def _sources(plan: Plan, *, decode: bool) -> tuple[np.ndarray, torch.Tensor]:
    """Every row some class may be made from, and their pixels (decoded only when needed)."""
    if plan.decoded is not None:
        return plan.decoded
    orders = [np.asarray(o, dtype=np.int64) for o in plan.orders.values()]
    sources = np.unique(np.concatenate(orders)) if orders else np.empty(0, dtype=np.int64)
    return sources, source_pixels(plan.manifest, sources, plan.generator) if decode else torch.empty(0)


def prepare_out_dir(out: Path, key: dict[str, Any], overwrite: bool) -> None:
    """Make ``out`` ready for this run: fresh, or the unfinished work of the same run."""
    work = out / WORK_DIR
    check_out_folder(out, "for the balanced dataset")
    if out.exists() and any(out.iterdir()):
        # A kill -9 leaves the temporary files of atomic writes behind (stale: we hold the lock).
        for name in OUTPUTS:
            remove_stale_temporaries(out, name)
        for folder in (*(out / "images").glob("*"), work, work / "parts"):
            remove_stale_temporaries(folder)
        foreign = sorted(p.name for p in out.iterdir() if p.name not in OUTPUTS)
        if foreign:
            raise FesaugError(
                f"{out} holds files fesaug balance did not write ({', '.join(foreign[:3])}); "
                "choose an empty or new --out"
            )
        if not overwrite:
            if (out / "manifest.parquet").exists():
                shutil.rmtree(work, ignore_errors=True)  # left by a run stopped just after its manifest
                raise FesaugError(f"{out} already holds a finished balanced dataset; pass --overwrite to make it again")
            if not same_plan(work / "plan.json", key):
                raise FesaugError(
                    f"{out} holds an unfinished balance run with other settings, manifest or checkpoint; "
                    "run that command again to finish it, or pass --overwrite to start over"
                )
            return  # resume
        for name in OUTPUTS:
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    (work / "parts").mkdir(parents=True, exist_ok=True)
    atomic_write_text(work / "plan.json", json.dumps(PLAN.stamp(jsonable(key)), indent=2, sort_keys=True))


def same_plan(path: Path, key: dict[str, Any]) -> bool:
    """Whether the ``plan.json`` at ``path`` records the plan ``key`` (the work there is this run's)."""
    if not path.exists():
        return False
    recorded = PLAN.read(json.loads(path.read_text()), where=str(path))
    return recorded == PLAN.stamp(jsonable(key))


def _generate(
    plan: Plan,
    chunks: list[list[tuple[int, int]]],
    mine: list[int],
    pixels: torch.Tensor,
    position: dict[int, int],
    out: Path,
    *,
    progress: bool,
) -> None:
    # Two writer threads: PNG encoding (zlib) releases the GIL, so it overlaps the next chunk's
    # generation; waiting for the previous chunk keeps at most two chunks in memory.
    # disable=None: a bar only on a terminal, not carriage-return frames in a redirected log.
    with (
        ThreadPoolExecutor(max_workers=2, thread_name_prefix="fesaug-png") as pool,
        tqdm(
            total=sum(len(chunks[i]) for i in mine), unit="img", disable=None if progress else True, desc="balance"
        ) as bar,
    ):
        previous: tuple[int, list, dict, list[Future]] | None = None
        for i in mine:
            rows, attempts, writes = run_chunk(plan, pixels, position, chunks[i], out, pool)
            if previous is not None:
                _commit(out, *previous)
            previous = (i, rows, attempts, writes)
            bar.update(len(chunks[i]))
        if previous is not None:
            _commit(out, *previous)


def _commit(out: Path, chunk: int, rows: list[dict[str, Any]], tally: dict[str, Any], writes: list[Future]) -> None:
    for w in writes:
        w.result()  # re-raises a failed write
    # The part is written after its images: a part on disk means its whole chunk is on disk.
    atomic_write_text(part_path(out, chunk), json.dumps({"chunk": chunk, "rows": rows, **tally}))
