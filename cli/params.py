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
