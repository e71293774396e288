"""What every benchmark records beside its numbers, in one shape: the machine, the command that
reruns it, and the pair of result files.

Each script in bench/ writes ``bench/results/NAME.json`` (the numbers, for tools) and ``NAME.md``
(the table, for people), and both say which machine made them and how to run it again. The
scripts used to write that by hand, each a little differently (the machine as a dict in one, a
sentence in another, the CPU model in only one; files written in place, so an interrupted write
left half a table). This module is that boilerplate once. The scripts run as
``.venv/bin/python bench/X.py``, so bench/ is first on ``sys.path`` and they import it as
``from record import ...``.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from fesaug.utils.files import atomic_write_text

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
PYTHON = ".venv/bin/python"  # the interpreter the README runs the scripts with, from the repository root


def cpu_model() -> str | None:
    """The CPU's model name as ``lscpu`` gives it; None without lscpu (e.g. macOS) or its line."""
    try:
        out = subprocess.run(
            ["lscpu"], capture_output=True, text=True, check=True, env={**os.environ, "LC_ALL": "C"}
        ).stdout  # English field names
    except (OSError, subprocess.CalledProcessError):
        return None
    return next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), None)


def machine(threads: int | None = None) -> dict:
    """The machine a benchmark ran on, for its JSON record. ``threads``: the torch threads it ran
    with, where the script chooses them (left out when None)."""
    out = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
    }
    if threads is not None:
        out["threads"] = threads
    return out


def machine_line(m: dict | str) -> str:
    """:func:`machine`'s record as one phrase for a Markdown header, e.g. ``AMD EPYC 7B13, 2 CPUs,
    Linux-6.1-x86_64-with-glibc2.35, 1 thread``. Reads older records too: a dict without
    ``cpu_model`` names the processor instead, and a sentence is returned as it is."""
    if isinstance(m, str):
        return m
    cpus, threads = m.get("cpu_count", "?"), m.get("threads")
    parts = [
        m.get("cpu_model") or m.get("processor") or "unknown CPU",
        f"{cpus} CPU{'' if cpus == 1 else 's'}",
        m.get("platform", "unknown platform"),
    ]
    if threads is not None:
        parts.append(f"{threads} thread{'' if threads == 1 else 's'}")
    return ", ".join(parts)


def versions_line(versions: dict[str, str]) -> str:
    """Package versions (:func:`fesaug.utils.provenance.package_versions`) as ``fesaug 0.1.0, torch 2.4.1, ...``."""
    return ", ".join(f"{k} {v}" for k, v in versions.items())


def command(env: str = "", argv: Sequence[str] | None = None) -> str:
    """How to rerun this script from the repository root: ``[ENV] .venv/bin/python bench/X.py ARGS``.

    ``argv``: the script and its arguments (default ``sys.argv``); the script's path is written
    relative to the repository root wherever it was started from. ``env``: variables the rerun
    should set, written first as given (e.g. ``"OMP_NUM_THREADS=1"``)."""
    script, *args = sys.argv if argv is None else argv
    try:
        script = Path(script).resolve().relative_to(REPO).as_posix()
    except ValueError:  # a script outside this checkout: as it was called
        pass
    return shlex.join([*shlex.split(env), PYTHON, script, *args])


def write_results(name: str, result: dict | list, markdown: str, folder: Path = RESULTS) -> None:
    """Write ``folder/NAME.json`` (``result``) and ``folder/NAME.md`` (``markdown``), creating the
    folder. Each file is written to a temporary file beside it and renamed into place, so a reader
    never sees half a file and an interrupted run leaves the previous one."""
    atomic_write_text(Path(folder) / f"{name}.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(Path(folder) / f"{name}.md", markdown if markdown.endswith("\n") else markdown + "\n")
