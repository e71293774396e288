"""User-facing errors.

Library code raises :class:`FesaugError` for anything a user can fix (bad input, wrong flags,
missing files). The CLI prints it as one ``Error: ...`` line and exits 1; every other exception
is a bug and keeps its traceback.
"""

from __future__ import annotations


class FesaugError(Exception):
    """A problem the user can fix. The message says what, where, and how to fix it."""

    exit_code = 1


class UsageError(FesaugError):
    """Flags that contradict each other or ask for something impossible (exit status 2, as click)."""

    exit_code = 2


class InvalidValue(FesaugError, ValueError):
    """A bad argument to one of fesaug's objects that follow PyTorch's or scikit-learn's
    conventions (:class:`fesaug.FESampler`, :class:`fesaug.data.WeightedDistributedSampler`): a
    :class:`FesaugError` (one ``Error:`` line) that is also the ``ValueError`` those libraries
    raise, and their users and test suites catch."""
