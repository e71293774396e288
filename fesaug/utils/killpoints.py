"""Test-only: a process that kills itself at a named point, to prove that a command resumes
after ``kill -9`` exactly there.

``FESAUG_KILL_AT=PATTERN#N`` makes the process send itself SIGKILL the ``N``-th time (default
1) it reaches a :func:`kill_point` whose name matches ``PATTERN`` (``fnmatch``). Names:
``write:FILE`` (an atomic write of FILE, done but not yet renamed into place), ``train-step``
(a FERSNet training step), ``downstream-epoch`` (an epoch of a downstream classifier). Without
the variable, which only the test-suite sets, a kill point does nothing.
"""

from __future__ import annotations

import fnmatch
import os
import signal

ENV = "FESAUG_KILL_AT"
_reached = 0


def kill_point(name: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    global _reached
    pattern, _, nth = spec.partition("#")
    if fnmatch.fnmatchcase(name, pattern):
        _reached += 1
        if _reached == int(nth or 1):
            os.kill(os.getpid(), signal.SIGKILL)
