"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

The benchmark results live in ``bench/results/`` beside the scripts that write them; the site
serves them as ``results/bench/<name>`` so that the results index (docs/results.md) links to each
one and their links to each other keep working, without a second copy in ``docs/``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"


def on_files(files: Files, config) -> Files:
    for path in sorted(RESULTS.iterdir()):
        if path.suffix in {".md", ".json"}:
            files.append(File.generated(config, f"results/bench/{path.name}", abs_src_path=str(path)))
    return files
