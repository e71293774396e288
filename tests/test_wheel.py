"""The built wheel is complete: it holds the shipped FER2013 judge weights and everything the demo
needs, and an install of it works outside the source tree.

The wheel is built offline from a copy of the source (``pip wheel --no-deps --no-build-isolation``,
with the setuptools already installed) and installed with ``--no-deps`` into a fresh virtual
environment that borrows this environment's installed packages (torch, ...) through a ``.pth``
file; the commands then run from an empty working folder, so nothing can come from the checkout.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

# What a source copy leaves out: environments, build outputs, caches, generated files.
IGNORED = shutil.ignore_patterns(
    ".git",
    ".venv",
    "site",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".pytest_cache",
    ".hypothesis",
    "demo-output",
    "runs",
    "*.parquet",
)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(REPO, src, ignore=IGNORED)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "-w",
            str(tmp),
            str(src),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = tmp.glob("fesaug-*.whl")
    return built


def test_wheel_holds_the_package_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    weights = {n for n in names if n.startswith("fesaug/judges/weights/")}
    assert "fesaug/judges/weights/fer2013_mini_xception.safetensors" in weights, sorted(weights)
    assert "fesaug/judges/weights/LICENSE-fer2013.txt" in weights
    # The review page's style sheet and script, read from the package at run time.
    assert {"fesaug/review/assets/review.css", "fesaug/review/assets/review.js"} <= names
    # The demo dataset is drawn by code (no data files); the CLI installs as fesaug.cli.
    for module in ("fesaug/data/demo/renderer.py", "fesaug/quickstart.py", "fesaug/cli/main.py", "fesaug/__init__.py"):
        assert module in names, module
    packages = {n.rsplit("/", 1)[0] for n in names if n.endswith("/__init__.py")}
    source_packages = {
        str(p.parent.relative_to(REPO)) for p in (REPO / "fesaug").rglob("__init__.py") if "__pycache__" not in str(p)
    }
    assert source_packages <= packages, f"subpackages missing from the wheel: {sorted(source_packages - packages)}"
    assert not any(n.startswith(("tests/", "bench/", "cli/", "docs/")) for n in names)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with only the wheel installed; the dependencies come from this one."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env, with_pip=False)
    python = env / "bin" / "python"
    purelib = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    # This environment's site directories (not the checkout, not an editable install's finder).
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    ours |= {p for p in sys.path if p.endswith(("site-packages", "dist-packages"))}
    (purelib / "zz_borrowed.pth").write_text("\n".join(sorted(ours)) + "\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return env


def run_installed(env: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run(
        [str(env / "bin" / "python"), *args], cwd=cwd, capture_output=True, text=True, env=clean, timeout=300
    )


def test_installed_wheel_runs_outside_the_source_tree(installed: Path, tmp_path: Path) -> None:
    where = run_installed(installed, tmp_path, "-c", "import fesaug; print(fesaug.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(installed), f"fesaug imported from {where.stdout.strip()}"

    env = run_installed(installed, tmp_path, "-m", "fesaug", "env")
    assert env.returncode == 0, env.stderr
    assert "fesaug" in env.stdout and "torch" in env.stdout

    # The shipped judge weights load from the install, checked by sha256.
    judge = run_installed(
        installed, tmp_path, "-c", "from fesaug.judges import load_judge; print(load_judge('fer2013').name)"
    )
    assert judge.returncode == 0 and judge.stdout.strip() == "fer2013", judge.stderr

    # The demo dataset draws from the install alone.
    demo = run_installed(
        installed,
        tmp_path,
        "-m",
        "fesaug",
        "demo-data",
        "--out",
        "demo",
        "--n-subjects",
        "4",
        "--size",
        "32",
        "--counts",
        "anger=4,contempt=2,disgust=4,fear=2,happy=4,sadness=2,surprise=4",
        "--folds",
        "2",
    )
    assert demo.returncode == 0, demo.stderr
    assert (tmp_path / "demo" / "manifest.parquet").exists()
