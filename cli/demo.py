from __future__ import annotations

from pathlib import Path

import click

from fesaug.quickstart import run_demo

from .audit import format_table


@click.command("demo")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("demo-output"), show_default=True,
              help="Folder for everything the demo writes.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the demo dataset.")
@click.option("--overwrite", is_flag=True, help="Replace an earlier demo folder.")
def demo_command(out: Path, seed: int, overwrite: bool) -> None:
    """Run fesaug end to end on the embedded demo dataset (what `make demo` runs)."""
    result = run_demo(out, seed=seed, overwrite=overwrite)
    click.echo(format_table(result.report))
    click.echo("")
    click.echo(f"demo dataset:  {result.manifest}")
    for path in result.files:
        click.echo(f"wrote          {path}")
