"""The package's shape: small modules, functions and classes (fesaug/ and cli/; tests and bench
aside), and the linter and formatter configured and clean."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import REPO

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 150
PACKAGES = ("fesaug", "cli")


def _sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py"))


def _definitions(path: Path) -> Iterator[tuple[ast.AST, int]]:
    """Every function (methods and nested ones included) and class of ``path``, with its length in
    lines from its ``def``/``class`` line to its last (decorators not counted)."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            yield node, node.end_lineno - node.lineno + 1


def _offenders(kinds: tuple[type, ...], limit: int) -> list[str]:
    found = []
    for path in _sources():
        for node, lines in _definitions(path):
            if isinstance(node, kinds) and lines > limit:
                found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    return found


def _report(what: str, limit: int, offenders: list[str]) -> str:
    return f"{len(offenders)} {what} over {limit} lines; split them:\n  " + "\n  ".join(offenders)


def test_the_size_rules_see_every_source_file() -> None:
    # A check that found nothing to check would pass for the wrong reason.
    names = {p.relative_to(REPO).as_posix() for p in _sources()}
    assert {"fesaug/__init__.py", "fesaug/data/manifest.py", "cli/main.py"} <= names
    assert len(names) > 50


def test_no_module_over_500_lines() -> None:
    offenders = []
    for path in _sources():
        lines = path.read_text(encoding="utf-8").count("\n")
        if lines > MAX_MODULE_LINES:
            offenders.append(f"{path.relative_to(REPO)} ({lines} lines)")
    assert not offenders, _report("module(s)", MAX_MODULE_LINES, offenders)


def test_no_function_over_80_lines() -> None:
    offenders = _offenders((ast.FunctionDef, ast.AsyncFunctionDef), MAX_FUNCTION_LINES)
    assert not offenders, _report("function(s)", MAX_FUNCTION_LINES, offenders)


def test_no_class_over_150_lines() -> None:
    offenders = _offenders((ast.ClassDef,), MAX_CLASS_LINES)
    assert not offenders, _report("class(es)", MAX_CLASS_LINES, offenders)


def test_ruff_is_configured() -> None:
    tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml here needs Python 3.11's tomllib")
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    ruff = config.get("tool", {}).get("ruff", {})
    assert ruff.get("line-length") == 120, "pyproject.toml: [tool.ruff] line-length must be 120"
    assert ruff.get("lint", {}).get("select"), "pyproject.toml: [tool.ruff.lint] must select the rule set"
    assert any(dep.startswith("ruff") for dep in config["project"]["optional-dependencies"]["dev"]), (
        "ruff belongs in the dev extra, so `make lint` and CI find it"
    )
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "ruff check ." in makefile and "ruff format --check ." in makefile, "make lint must run both"


@pytest.mark.parametrize("command", [["check", "."], ["format", "--check", "."]], ids=["check", "format"])
def test_ruff_is_clean(command: list[str]) -> None:
    if importlib.util.find_spec("ruff") is None:
        pytest.skip("ruff is not installed here (pip install -e '.[dev]' installs it); `make lint` runs it")
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *command], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"ruff {' '.join(command)} found problems:\n{done.stdout}{done.stderr}"
