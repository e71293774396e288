"""Output locks: one fesaug run at a time writes an output folder or file.

Every command that writes an output takes :func:`output_lock` on it before it looks at what is
there, and holds it until it is done; a second run into the same output stops at once with one
:class:`OutputLocked` error naming the run that holds it.

The lock is an advisory ``flock`` on a sidecar file beside the output, ``.NAME.lock``
(``runs/.ck-f0.lock`` for ``runs/ck-f0``, ``manifests/.ck.parquet.lock`` for
``manifests/ck.parquet``). Beside the output, not inside it: a folder that is replaced by a
rename (``fesaug export``) or emptied by ``--overwrite`` keeps its lock, and no check of what a
folder holds ever counts the lock as the user's file. The operating system drops a ``flock``
when its process dies, so a run killed with ``kill -9`` leaves at most a stale file, which the
next run takes over. While held, the file records the holder (pid, host, command line, start
time) for the second run's message. It is removed when the lock is released; a run that opened
it just before then finds, once it holds a lock, that the path names another file, and retries.

Not the ``filelock`` package: its versions differ in whether they truncate the lock file when
opening it (erasing the holder record) and it is no declared dependency; ``flock`` is the few
system calls below (POSIX only, as is the rest of fesaug's tooling).

Under ``torchrun`` the ranks of one job share the lock: rank 0 takes it and sends the outcome
(its holder record, or the error) to the other ranks through the process group, so they run for
it or fail with it, instead of each taking a lock (all but one would fail) or waiting at a
barrier for a rank that gave up.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from fesaug.utils.errors import FesaugError

__all__ = ["Holder", "OutputLocked", "lock_path", "output_lock", "read_holder"]

# How long a second process waits for the first one's holder record (written right after the
# lock is taken) before it reports the holder as unknown.
_RECORD_WAIT_S = 1.0
_POLL_S = 0.1


# Descriptors of the locks this process holds. A forked child (a DataLoader worker) shares them,
# and a flock lasts until every copy is closed: the child closes its copies, so that a run killed
# with kill -9 does not stay locked until its workers notice and exit.
_held: set[int] = set()


def _close_in_child() -> None:
    for fd in _held:
        os.close(fd)
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class OutputLocked(FesaugError):
    """Another run holds the lock on this output."""


@dataclass(frozen=True)
class Holder:
    """Who holds an output lock. ``job``: the torchrun job whose ranks share it (None outside torchrun)."""

    pid: int
    host: str
    command: str
    started: str  # local time, "YYYY-MM-DD HH:MM:SS"
    job: str | None = None

    @classmethod
    def this_process(cls) -> Holder:
        from fesaug.utils.provenance import command_line

        env = os.environ
        job = (
            f"{env.get('TORCHELASTIC_RUN_ID', '?')}@{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
            if int(env.get("WORLD_SIZE", "1")) > 1
            else None
        )
        return cls(
            os.getpid(), socket.gethostname(), command_line(), _dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S"), job
        )

    def describe(self) -> str:
        where = "" if self.host == socket.gethostname() else f" on {self.host}"
        rank = " (rank 0 of a torchrun job)" if self.job else ""
        return f"pid {self.pid}{where}{rank}, '{self.command}', started {self.started}"


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file of ``output`` (a folder or a file, existing or not): ``.NAME.lock`` beside it.

    The path is resolved first, so two runs that name one output differently (``./out``,
    ``out/``, a symlink) share its lock."""
    resolved = Path(output).resolve()
    if not resolved.name:
        raise FesaugError(f"cannot write into {output} (the file system root); choose a folder inside it")
    return resolved.with_name(f".{resolved.name}.lock")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, *, wait: float = 0.0) -> Iterator[Holder]:
    """Hold the lock on ``output`` for the block; yields the holder record (rank 0's under torchrun).

    ``wait``: seconds to wait for another run to release it (0: fail at once). Raises
    :class:`OutputLocked` naming ``output`` and the holder; the output is not touched.
    """
    group = _process_group()
    if group is None:
        with _Lock(output, wait) as holder:
            yield holder
        return
    with _shared_by_ranks(group, output, wait) as holder:
        yield holder


class _Lock:
    def __init__(self, output: str | os.PathLike, wait: float) -> None:
        self.output, self.path, self.wait = output, lock_path(output), wait
        self.fd: int | None = None
        self.owner = os.getpid()

    def __enter__(self) -> Holder:
        deadline = time.monotonic() + self.wait
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise OutputLocked(_in_use(self.output, read_holder(self.output))) from None
                time.sleep(_POLL_S)
                continue
            if _names(self.path, fd):
                break
            os.close(fd)  # the previous holder removed the file after we opened it: lock the new one
        holder = Holder.this_process()
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(asdict(holder)).encode(), 0)
        self.fd = fd
        _held.add(fd)
        return holder

    def __exit__(self, *exc: object) -> None:
        if self.owner != os.getpid():
            return  # a forked child leaving the block: the lock is its parent's
        assert self.fd is not None
        # Removed while still held, so no run can take over a file that is about to disappear.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        _held.discard(self.fd)
        os.close(self.fd)
        self.fd = None

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise FesaugError(
                f"cannot create the lock file {self.path} for {self.output} "
                f"({os.strerror(exc.errno or errno.EIO)}); fesaug needs write access to the folder "
                "that holds its output"
            ) from None


def _names(path: Path, fd: int) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def read_holder(output: str | os.PathLike) -> Holder | None:
    """The holder recorded in ``output``'s lock file, or None if there is no readable record."""
    path = lock_path(output)
    deadline = time.monotonic() + _RECORD_WAIT_S
    while True:
        try:
            return Holder(**json.loads(path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError, OSError):
            if time.monotonic() >= deadline:  # an empty or torn record: the holder is just starting
                return None
            time.sleep(_POLL_S)


def _in_use(output: str | os.PathLike, holder: Holder | None) -> str:
    who = holder.describe() if holder is not None else f"holder unknown, lock file {lock_path(output)}"
    return f"{output} is in use by another fesaug run ({who}); wait for it to finish or stop it"


# ---- torchrun


def _process_group():
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 else None


@contextlib.contextmanager
def _shared_by_ranks(dist, output: str | os.PathLike, wait: float) -> Iterator[Holder]:
    with contextlib.ExitStack() as stack:
        outcome: list[object] = [None]
        failed: BaseException | None = None
        if dist.get_rank() == 0:
            try:
                outcome[0] = asdict(stack.enter_context(_Lock(output, wait)))
            except Exception as exc:
                failed = exc
                outcome[0] = (
                    exc if isinstance(exc, FesaugError) else FesaugError(f"rank 0 could not lock {output}: {exc}")
                )
        dist.broadcast_object_list(outcome, src=0)
        if failed is not None:
            raise failed
        if isinstance(outcome[0], FesaugError):
            raise outcome[0]
        yield Holder(**outcome[0])
