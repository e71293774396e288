"""``fesaug`` command group and its error handling.

Every command parses its arguments, calls one library function and prints. Library errors
(:class:`fesaug.utils.errors.FesaugError`) become one ``Error: ...`` line on stderr with exit status 1
(2 for usage errors); ``--debug`` or ``FESAUG_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback

import click

from fesaug import __version__
from fesaug.utils.errors import FesaugError


def _debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("FESAUG_DEBUG", "") not in ("", "0")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="fesaug")
@click.option("--debug", is_flag=True, help="Show full tracebacks for errors (or set FESAUG_DEBUG=1).")
def cli(debug: bool) -> None:
    """Balance facial-expression datasets by synthesis (FERSNet) and check them.

    \b
    Typical flow:
      fesaug ingest DATA_DIR --preset ckplus --folds 10 --out manifests/ck.parquet
      fesaug audit manifests/ck.parquet
    """


def _register() -> None:
    # Imported here so `fesaug --help` stays fast and each command lives in its own module.
    from fesaug.cli import commands

    for command in commands.ALL:
        cli.add_command(command)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _register()
    debug = _debug_requested(argv)
    # --debug is accepted anywhere on the line (users add it after the sub-command when a run fails).
    argv = [a for a in argv if a != "--debug"]
    try:
        cli.main(args=argv, prog_name="fesaug", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.UsageError as exc:
        # One line, like our own errors; click's default repeats the usage synopsis above it.
        where = exc.ctx.command_path if exc.ctx is not None else "fesaug"
        click.echo(f"Error: {exc.format_message()} (see '{where} --help')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except FesaugError as exc:
        if debug:
            traceback.print_exc()
        click.echo(f"Error: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted; outputs are written atomically, so nothing half-written was left.", err=True)
        sys.exit(130)
