"""The documentation: the site builds strictly, every Python example runs, every console example
uses flags that exist, the README stays short, and the API reference sees every public name.

Python blocks are taken from the Markdown itself (README.md, CONTRIBUTING.md, docs/**/*.md) and
run in a folder where the quickstart has been done on a small demo dataset: ``demo/``,
``my-faces/``, ``manifests/faces.parquet`` (and ``faces-embedded.parquet``), a trained
``runs/faces``, its ``balanced/`` output and that output's export, ``train-folders/``. A page's
blocks run in order in one namespace, so a later block can use an earlier one's names. A block
preceded by ``<!-- docs-test: skip -->`` does not run (keep those rare: e.g. one that needs CK+48).
"""

from __future__ import annotations

import ast
import importlib
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest

from tests.conftest import REPO, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

SKIP_MARKER = "<!-- docs-test: skip"
PAGES = sorted([REPO / "README.md", REPO / "CONTRIBUTING.md", *(REPO / "docs").rglob("*.md")], key=lambda p: str(p))
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([\w+-]*)")


def fenced_blocks(path: Path) -> list[tuple[str, int, str, bool]]:
    """``(language, first line number, code, skipped)`` of every fenced block of a Markdown file."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        if not m:
            i += 1
            continue
        fence, lang, start = m.group(1), m.group(2).lower(), i + 1
        indent = len(lines[i]) - len(lines[i].lstrip())
        previous = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        i += 1
        body = []
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][indent:] if not lines[i][:indent].strip() else lines[i].lstrip())
            i += 1
        i += 1
        blocks.append((lang, start + 1, "\n".join(body) + "\n", previous.startswith(SKIP_MARKER)))
    return blocks


def test_fenced_blocks_reads_languages_lines_and_the_skip_marker(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "text\n\n```python\nfor i in range(2):\n    print(i)\n```\n\n<!-- docs-test: skip (needs CK+48) -->\n"
        "```python\nraise SystemExit\n```\n\n- item\n\n    ```console\n    $ fesaug env\n    ```\n"
    )
    blocks = fenced_blocks(page)
    assert [(lang, line, skipped) for lang, line, _, skipped in blocks] == [
        ("python", 4, False),
        ("python", 10, True),
        ("console", 16, False),
    ]
    assert blocks[0][2] == "for i in range(2):\n    print(i)\n"
    assert blocks[2][2] == "$ fesaug env\n"


def relative(path: Path) -> str:
    return str(path.relative_to(REPO))


PYTHON_PAGES = [p for p in PAGES if any(lang == "python" for lang, *_ in fenced_blocks(p))]


# ---- the README a new user reads


def test_readme_is_short() -> None:
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move detail to docs/"
    long = [(n, len(line)) for n, line in enumerate(lines, 1) if len(line) > 200]
    assert not long, f"README.md lines over 200 characters (line, length): {long}"


def test_readme_quotes_no_unfinished_run() -> None:
    text = (REPO / "README.md").read_text(encoding="utf-8").lower()
    for phrase in ("so far", "not yet run"):
        assert phrase not in text, f"README.md quotes an unfinished run ({phrase!r})"


def test_readme_headline_numbers_come_from_the_results() -> None:
    """The headline table quotes recorded benchmark results, not numbers typed by hand."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Does it help?") :].split("\n## ")[0]
    quoted = re.findall(r"\d+\.\d ± \d+\.\d", table)
    assert len(quoted) >= 8, quoted
    results = REPO / "bench" / "results"
    sources = ("synthesis_levers_demo64.md", "synthesis_levers_ckplus.md", "evaluate_ckplus_real_bf16.md")
    recorded = "".join((results / name).read_text("utf-8") for name in sources)
    assert not [q for q in quoted if q not in recorded], "README numbers not in bench/results"


# Paths of the repository named in the docs (`fesaug/data/pairs.py`, `bench/record.py`): modules move,
# and a page that names one that no longer exists misleads. NAME and the outputs of examples are not paths.
REPO_PATH = re.compile(r"`((?:fesaug|cli|bench|tools|tests|docs)/[\w./-]*)`")


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_named_repository_paths_exist(page: Path) -> None:
    named = {m.group(1) for m in REPO_PATH.finditer(page.read_text(encoding="utf-8")) if "NAME" not in m.group(1)}
    missing = sorted(p for p in named if not (REPO / p.rstrip("/")).exists())
    assert not missing, f"{relative(page)} names paths that do not exist: {missing}"


def test_readme_links_resolve() -> None:
    """README.md is read on the repository's front page, outside the site: its relative links
    must point at files that exist."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    targets = {t.split("#")[0] for t in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in t}
    missing = sorted(t for t in targets if t and not (REPO / t).exists())
    assert not missing, f"README.md links to missing files: {missing}"


# ---- the site


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`make docs`: broken links, missing API references and any warning fail the build."""
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    site = tmp_path / "site"
    # The API reference rendered real members, not empty package pages.
    reference = (site / "reference" / "balance.html").read_text(encoding="utf-8")
    assert 'id="fesaug.balance.balance"' in reference and 'id="fesaug.balance.BalanceConfig"' in reference
    assert 'id="fesaug.synthesis.load_generator"' in (site / "reference" / "synthesis.html").read_text("utf-8")
    # A site for offline reading too: no script, style sheet or font from another host.
    external = re.findall(
        r"<(?:link|script)[^>]*(?:href|src)=\"https?://[^>]*>", (site / "index.html").read_text("utf-8")
    )
    assert not external, external
    # The benchmark results are served beside the index that links to them.
    assert (site / "results" / "bench" / "evaluate_ckplus_warp.html").exists()


def test_site_fetches_nothing_at_build_time() -> None:
    """Offline build: no Google Fonts, no plugin that downloads (Material's social and privacy)."""
    import yaml

    config = yaml.load((REPO / "mkdocs.yml").read_text(encoding="utf-8"), Loader=yaml.BaseLoader)
    assert config["theme"].get("font") == "false", "Material loads Roboto from Google Fonts unless font: false"
    plugins = [next(iter(p)) if isinstance(p, dict) else p for p in config["plugins"]]
    assert not {"social", "privacy", "material/social", "material/privacy"} & set(plugins), plugins


# ---- the API reference sees what the packages export lazily

# Every package that exports names lazily (fesaug.utils.lazy).
LAZY_PACKAGES = sorted(
    ".".join(p.parent.relative_to(REPO).parts)
    for p in (REPO / "fesaug").rglob("__init__.py")
    if "lazy_exports(" in p.read_text(encoding="utf-8")
)


def static_names(package: str) -> tuple[set[str], dict[str, str]]:
    """Names a package's ``__init__.py`` defines at top level, and those it imports only inside
    ``if TYPE_CHECKING:`` (name -> module), as griffe reads them."""
    path = Path(importlib.import_module(package).__file__)
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top, typing_only = set(), {}
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                if isinstance(sub, ast.ImportFrom):
                    typing_only.update({a.asname or a.name: sub.module for a in sub.names})
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            top.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            top.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            top.update(t.id for t in targets if isinstance(t, ast.Name))
    return top, typing_only


@pytest.mark.parametrize("package", LAZY_PACKAGES)
def test_lazy_exports_are_visible_statically(package: str) -> None:
    """Every name in ``__all__`` is defined or statically imported (inside ``if TYPE_CHECKING:``
    for the lazy ones), from a module where it really is, so the API reference renders it."""
    module = importlib.import_module(package)
    top, typing_only = static_names(package)
    for name in module.__all__:
        if name in top:
            continue
        assert name in typing_only, f"{package}.{name} is exported lazily but not imported under TYPE_CHECKING"
        value = getattr(module, name)
        defined_in = getattr(value, "__module__", None) or typing_only[name]
        assert typing_only[name] == defined_in, (
            f"{package}.{name}: the TYPE_CHECKING import names {typing_only[name]}; it is defined in {defined_in}"
        )
        assert getattr(importlib.import_module(typing_only[name]), name) is value
    assert not set(typing_only) - set(module.__all__), f"{package}: TYPE_CHECKING imports a name not in __all__"


# ---- console examples: every flag exists


def console_commands(path: Path) -> list[tuple[int, list[str]]]:
    """``(line, argv after 'fesaug')`` of every ``$ fesaug ...`` (or ``torchrun ... -m fesaug``)
    line of a fenced block, and every such line without the prompt in a ``bash`` block;
    continuation lines joined, pipes and comments cut off."""
    found = []
    for lang, start, code, _ in fenced_blocks(path):
        lines = code.splitlines()
        for n, line in enumerate(lines):
            if line.startswith("$ "):
                text = line[2:]
            elif lang in ("bash", "sh", "shell") and re.match(r"(\w+=\S+ )*(fesaug|torchrun) ", line):
                text = line  # a script: every line is a command
            else:
                continue
            k = n
            while text.rstrip().endswith("\\") and k + 1 < len(lines):
                k += 1
                text = text.rstrip()[:-1] + " " + lines[k].strip()
            argv = shlex.split(text.split(" | ")[0], comments=True)
            while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # OMP_NUM_THREADS=1 fesaug ...
                argv.pop(0)
            if argv and argv[0] == "fesaug":
                found.append((start + n, argv[1:]))
            elif "-m" in argv and argv[argv.index("-m") + 1 : argv.index("-m") + 2] == ["fesaug"]:
                found.append((start + n, argv[argv.index("-m") + 2 :]))
    return found


CONSOLE = [(p, n, argv) for p in PAGES for n, argv in console_commands(p)]


def test_console_examples_exist() -> None:
    commands = {argv[0] for _, _, argv in CONSOLE if argv}
    assert {"ingest", "audit", "train", "balance", "export", "evaluate"} <= commands, commands


@pytest.mark.parametrize("page, line, argv", CONSOLE, ids=[f"{relative(p)}:{n}" for p, n, _ in CONSOLE])
def test_console_example_uses_real_flags(page: Path, line: int, argv: list[str]) -> None:
    """A renamed or removed command or flag fails here: each is checked against the command's
    own options (what ``fesaug COMMAND --help`` lists)."""
    from fesaug.cli.main import _register, cli

    _register()
    ctx = click.Context(cli)
    command = cli.get_command(ctx, argv[0]) if argv else None
    assert command is not None, f"{relative(page)}:{line}: no command fesaug {argv[0] if argv else ''}"
    known = {"--debug", "--help", "-h"}
    for param in command.params:
        known.update(param.opts, param.secondary_opts)
    flags = [a.split("=")[0] for a in argv[1:] if a.startswith("-") and not re.fullmatch(r"-\d[\d.]*", a)]
    unknown = [f for f in flags if f not in known]
    assert not unknown, f"{relative(page)}:{line}: fesaug {argv[0]} has no option {', '.join(unknown)}"


# ---- Python examples: run them on the demo data


@pytest.fixture(scope="module")
def quickstart_done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder where the quickstart of getting-started.md has been run, on a small demo set and
    a tiny FERSNet (the pages' examples read these paths)."""
    from fesaug.balance import balance
    from fesaug.data.demo import make_demo_dataset
    from fesaug.data.export import export
    from fesaug.data.ingest import ingest
    from fesaug.synthesis import train

    ws = tmp_path_factory.mktemp("quickstart")
    counts = {"anger": 14, "contempt": 6, "disgust": 16, "fear": 8, "happy": 18, "sadness": 8, "surprise": 20}
    make_demo_dataset(ws / "demo", counts=counts, n_subjects=20, size=48)
    shutil.copytree(ws / "demo" / "images", ws / "my-faces")
    pattern = r"^(D\d+)_"
    ingest(ws / "my-faces", ws / "manifests" / "faces.parquet", subject_pattern=pattern, folds=5)
    ingest(ws / "my-faces", ws / "manifests" / "faces-embedded.parquet", subject_pattern=pattern, folds=5, embed=True)
    train(ws / "manifests" / "faces.parquet", ws / "runs" / "faces", tiny_config(epochs=1, holdout_fold=0))
    balance(ws / "manifests" / "faces.parquet", ws / "runs" / "faces" / "checkpoints" / "best.pt", ws / "balanced")
    export(ws / "balanced" / "manifest.parquet", ws / "train-folders", splits=["train"], exclude_folds=[0])
    return ws


def test_python_examples_exist() -> None:
    pages = {relative(p) for p in PYTHON_PAGES}
    assert {"README.md", "docs/getting-started.md"} <= pages, pages


@pytest.mark.slow
@pytest.mark.parametrize("page", PYTHON_PAGES, ids=relative)
def test_python_examples_run(
    page: Path, quickstart_done: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``python`` block of the page runs, in order, in a fresh copy of the quickstart folder."""
    ws = tmp_path / "ws"
    shutil.copytree(quickstart_done, ws, symlinks=True)
    monkeypatch.chdir(ws)
    monkeypatch.setattr("matplotlib.pyplot.show", lambda *a, **k: None)
    namespace: dict = {"__name__": "__docs__"}
    ran = 0
    for lang, line, code, skipped in fenced_blocks(page):
        if lang != "python" or skipped:
            continue
        compiled = compile(code, f"{relative(page)}:{line}", "exec")
        try:
            exec(compiled, namespace)
        except Exception as exc:
            pytest.fail(f"{relative(page)}, the python block at line {line}: {type(exc).__name__}: {exc}")
        ran += 1
    assert ran, f"{relative(page)}: every python block is marked to skip"
