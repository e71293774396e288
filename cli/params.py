"""Shared click helpers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from fesaug.errors import FesaugError


def checked_by(check: Callable[[Any], object]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """A click callback that runs a library check on an option's value, so a bad value is a usage
    error (exit 2) reported before any work starts, not after reading thousands of images."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            try:
                check(value)
            except FesaugError as exc:
                raise click.BadParameter(str(exc)) from None
        return value

    return callback


def intensity_range(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[float, float] | None:
    """``--intensity LOW..HIGH`` (or one number): the range edits are scaled by, checked by the library."""
    if value is None:
        return None
    from fesaug.balance import check_intensity

    low, sep, high = value.partition("..")
    try:
        return check_intensity((float(low), float(high if sep else low)))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither LOW..HIGH (e.g. 0.6..1.5) nor one number") from None
    except FesaugError as exc:
        raise click.BadParameter(str(exc)) from None


INTENSITY_HELP = ("Scale each synthetic face's edit by an intensity drawn from this range (recorded per row): "
                  "1 = the generator's learnt edit (the default), below 1 weaker, above 1 exaggerated.")
