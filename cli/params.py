"""What several commands share: parameter types and callbacks, option groups (:func:`add_options`),
the balance options that ``evaluate`` passes on to its balance step, the device option, the
progress log and the table printer. A value is checked by the library function that owns the rule; these only turn its
error into click's usage error (exit 2) before any work starts."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from fesaug.utils.errors import FesaugError, UsageError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


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
    from fesaug.balance.config import check_intensity

    low, sep, high = value.partition("..")
    try:
        return check_intensity((float(low), float(high if sep else low)))
    except ValueError:
        raise click.BadParameter(f"{value!r} is neither LOW..HIGH (e.g. 0.6..1.5) nor one number") from None
    except FesaugError as exc:
        raise click.BadParameter(str(exc)) from None


def target_per_class(ctx: click.Context, param: click.Parameter, value: str | None) -> int | str | None:
    """``--target-per-class N|max``, checked by :func:`fesaug.balance.targets.check_target_per_class`."""
    if value is None or value == "max":
        return value
    from fesaug.balance.targets import check_target_per_class

    try:
        return check_target_per_class(int(value))
    except (ValueError, FesaugError):
        raise click.BadParameter(f"{value!r} is neither a positive number nor 'max'") from None


def device_seen(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """``--device``: a CUDA device torch does not see is refused before any work
    (:func:`fesaug.utils.devices.resolve_device`)."""
    if value == "cuda":
        from fesaug.utils.devices import resolve_device

        try:
            resolve_device(value)
        except FesaugError as exc:
            raise UsageError(str(exc)) from None
    return value


INTENSITY_HELP = (
    "Scale each synthetic face's edit by an intensity drawn from this range (recorded per row): "
    "1 = the generator's learnt edit (the default), below 1 weaker, above 1 exaggerated."
)

DEVICE = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True, callback=device_seen
)


def class_gains(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, float]:
    """``--class-intensity fear=1.5,sadness=1.3`` as ``{class: gain}``."""
    if not value:
        return {}
    gains = {}
    for part in value.split(","):
        name, sep, number = part.partition("=")
        try:
            gains[name.strip()] = float(number)
        except ValueError:
            raise click.BadParameter(f"{part!r} is not CLASS=GAIN (e.g. fear=1.5)") from None
        if not sep or not name.strip():
            raise click.BadParameter(f"{part!r} is not CLASS=GAIN (e.g. fear=1.5)")
    return gains


# Options of fesaug balance that fesaug evaluate passes on to the balance step of each fold.
BALANCE_OPTIONS: dict[str, Decorator] = {
    "target_per_class": click.option(
        "--target-per-class",
        metavar="N|max",
        callback=target_per_class,
        help="Raise every selected class to N images, or to the largest class (max, the default).",
    ),
    "min_confidence": click.option(
        "--min-confidence",
        type=click.FloatRange(0, 1),
        default=0.5,
        show_default=True,
        help="Keep a synthetic image only if the checkpoint's FER branch gives its target at least this probability.",
    ),
    "max_attempts": click.option(
        "--max-attempts",
        type=click.IntRange(min=1),
        default=5,
        show_default=True,
        help="Sources tried per needed image before giving up on it.",
    ),
    "min_judge_confidence": click.option(
        "--min-judge-confidence",
        type=click.FloatRange(0, 1),
        default=0.5,
        show_default=True,
        help="With --judge: the least probability the judge must give the target.",
    ),
    "intensity": click.option("--intensity", metavar="LOW..HIGH", callback=intensity_range, help=INTENSITY_HELP),
    "synthetic_share": click.option(
        "--synthetic-share",
        type=click.FloatRange(0, 1, min_open=True),
        default=1.0,
        show_default=True,
        metavar="S",
        help="Synthesize only this share of each class's shortfall; a weight column on the class's real rows makes "
        "up the rest, as repeating them would (sample by it: ManifestDataset.weights).",
    ),
    "synthetic_weight": click.option(
        "--synthetic-weight",
        type=click.FloatRange(0, 1, min_open=True),
        default=1.0,
        show_default=True,
        metavar="W",
        help="What one synthetic image counts against a real one in the weight column; the class's real rows make up "
        "the rest of its target.",
    ),
    "synthetic_labels": click.option(
        "--synthetic-labels",
        type=click.Choice(["hard", "soft"]),
        default="hard",
        show_default=True,
        help="soft: label each synthetic image partly as its source's class (a target_mass column), as strong as "
        "its edit (--soft-label-source); hard: all on its target.",
    ),
    "soft_label_source": click.option(
        "--soft-label-source",
        type=click.Choice(["intensity", "judge"]),
        default="intensity",
        show_default=True,
        help="With --synthetic-labels soft: the mass on the target is the edit's intensity (capped at 1), or the "
        "independent judge's probability of the target over it plus that of the source's class (needs --judge).",
    ),
    "soft_gamma": click.option(
        "--soft-gamma",
        type=click.FloatRange(0, 10, min_open=True),
        default=1.0,
        show_default=True,
        metavar="G",
        help="With --synthetic-labels soft: the mass on the target is that share to the power G.",
    ),
    "class_intensity": click.option(
        "--class-intensity",
        metavar="CLASS=GAIN,...",
        callback=class_gains,
        help="Scale the edits of these target classes by GAIN (e.g. fear=1.5,sadness=1.3), times --intensity.",
    ),
    "calibrate_intensity": click.option(
        "--calibrate-intensity",
        is_flag=True,
        help="Choose each class's edit gain so that the judge (--judge) recognises its synthetic faces at least "
        "as often as real ones, measured on the generator's validation subjects.",
    ),
    "min_judge_margin": click.option(
        "--min-judge-margin",
        type=click.FloatRange(-1, 1),
        metavar="M",
        help="With --judge: also keep a synthetic image only if the judge's probability of its target exceeds "
        "that of its source's class by at least M (drops the weakest edits, as ALIA does).",
    ),
    "source_order": click.option(
        "--source-order",
        type=click.Choice(["subjects", "similar"]),
        default="subjects",
        show_default=True,
        help="subjects: sources round-robin over subjects in random order. similar: the same round-robin, "
        "trying first the faces whose expression the checkpoint's FER branch finds closest to the target.",
    ),
}


def add_options(*options: Decorator) -> Decorator:
    """Several click options as one decorator, listed on ``--help`` in the order given: how a
    group of options is defined once and shared (click's documentation shows this pattern)."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def balance_options(*names: str) -> Decorator:
    """The :data:`BALANCE_OPTIONS` ``names``, in that order on ``--help``."""
    return add_options(*(BALANCE_OPTIONS[name] for name in names))


class _StderrHandler(logging.StreamHandler):
    """A StreamHandler on whatever ``sys.stderr`` is when it writes (tests capture it per call)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def show_progress_log(name: str = "fesaug.synthesis.training") -> None:
    """Print the library logger ``name``'s lines on stderr, one per step; the library only logs."""
    logger = logging.getLogger(name)
    if not logger.handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def aligned_table(header: Sequence[str], rows: Sequence[Sequence], footer: Sequence | None = None) -> list[str]:
    """Rows under a header: the first column left-aligned, the (numeric) rest right-aligned."""
    table = [list(map(str, r)) for r in [header, *rows, *([footer] if footer else [])]]
    widths = [max(len(r[k]) for r in table) for k in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join([cells[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(cells[1:], widths[1:]))]).rstrip()

    lines = [line(r) for r in table]
    if footer:
        lines.insert(-1, "-" * len(lines[0]))
    return lines
