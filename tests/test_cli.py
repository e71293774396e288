"""CLI conventions every command shares: one `Error:` line, exit codes, --debug, help."""

from __future__ import annotations

from pathlib import Path

from .conftest import run_cli


def test_library_error_is_one_line_without_traceback(tmp_path: Path) -> None:
    result = run_cli("audit", tmp_path / "missing.parquet")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "missing.parquet" in lines[0]
    assert "Traceback" not in result.stderr


def test_debug_flag_anywhere_or_env_shows_traceback(tmp_path: Path) -> None:
    for args in (("--debug", "audit", tmp_path / "x.parquet"), ("audit", tmp_path / "x.parquet", "--debug")):
        result = run_cli(*args)
        assert result.returncode == 1 and "Traceback" in result.stderr and "Error: " in result.stderr


def test_usage_errors_exit_2_with_one_error_line_naming_the_help() -> None:
    for args, what, where in (
        (("no-such-command",), "No such command", "fesaug --help"),
        (("audit",), "Missing argument", "fesaug audit --help"),
        (("balance", "--target", "fear"), "--target", "fesaug balance --help"),
    ):
        result = run_cli(*args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, args
        assert len(lines) == 1 and lines[0].startswith("Error: ") and what in lines[0] and where in lines[0], lines


def test_help_lists_commands_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("audit", "ingest", "env"):
        assert command in result.stdout
    assert run_cli("--version").stdout.strip().startswith("fesaug, version")
