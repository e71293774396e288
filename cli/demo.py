"""`fesaug demo`: the whole pipeline on the embedded demo dataset (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

import click

from fesaug.cli.params import show_progress_log
from fesaug.quickstart import DEMO_EPOCHS, run_demo


@click.command("demo")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("demo-output"),
    show_default=True,
    help="Folder for everything the demo writes.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed of the demo dataset, training and balancing."
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=DEMO_EPOCHS,
    show_default=True,
    help="Training epochs of the small FERSNet (about 15 s each on two CPU cores).",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Quality gate of the balance step.",
)
@click.option("--color", is_flag=True, help="Demo faces in colour (RGB): the whole pipeline runs in colour.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo folder.")
def demo_command(out: Path, seed: int, epochs: int, min_confidence: float, color: bool, overwrite: bool) -> None:
    """Demo data → train FERSNet → balance to the largest class → audit → pictures.

    Everything lands in --out; the summary is also saved as summary.txt there.
    """
    show_progress_log()
    click.echo(f"generating the demo dataset in {out / 'data'}, then training FERSNet for {epochs} epoch(s)", err=True)
    result = run_demo(out, seed=seed, epochs=epochs, min_confidence=min_confidence, overwrite=overwrite, color=color)
    click.echo(result.summary)
