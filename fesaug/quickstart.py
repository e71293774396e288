"""The job `make demo` runs: everything fesaug does, end to end, on the embedded demo dataset.

It writes one folder a user can look through: the dataset and its manifest, the class histogram,
a sample grid per class, the audit as JSON, and a one-screen summary.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from ._io import atomic_write_text
from .audit import AuditReport, audit, plot_report
from .data.demo import make_demo_dataset
from .data.manifest import read_manifest
from .errors import FesaugError
from .plots import class_grid


@dataclass
class DemoResult:
    out_dir: Path
    manifest: Path
    report: AuditReport
    files: list[Path]


def run_demo(out_dir: str | os.PathLike, *, seed: int = 0, overwrite: bool = False) -> DemoResult:
    """Generate the demo dataset into ``out_dir/data``, audit it and draw its pictures."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FesaugError(f"{out} already exists and is not empty; pass --overwrite to replace it or choose another --out")
        if not (out / "data" / "manifest.parquet").exists():
            # Only ever delete a folder this command made; anything else might be the user's.
            raise FesaugError(f"{out} does not look like a fesaug demo folder; refusing to replace it — choose another --out")
        shutil.rmtree(out)
    manifest = read_manifest(make_demo_dataset(out / "data", seed=seed))
    report = audit(manifest)
    largest = max(c.total for c in report.classes.values())
    report.target = largest  # the balance step's default: every class up to the largest
    files = [
        plot_report(report, out / "histogram.png"),
        class_grid(manifest, out / "samples.png", seed=seed),
        atomic_write_text(out / "audit.json", json.dumps(report.to_dict(), indent=2, allow_nan=False)),
    ]
    return DemoResult(out_dir=out, manifest=manifest.path, report=report, files=files)
