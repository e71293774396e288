"""`fesaug export`: write a manifest's images as class folders (torchvision ImageFolder)."""

from __future__ import annotations

from pathlib import Path

import click

from fesaug.data.export import FORMATS, export


@click.command("export")
@click.argument("manifest", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default="imagefolder",
    show_default=True,
    help="imagefolder: OUT/<class>/<sample_id>.png, as torchvision.datasets.ImageFolder reads it.",
)
@click.option(
    "--out",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder to write; must not exist or be empty (see --overwrite).",
)
@click.option("--split", "splits", multiple=True, metavar="S", help="Only rows of this split (repeatable).")
@click.option("--fold", "folds", type=int, multiple=True, metavar="K", help="Only rows of this fold (repeatable).")
@click.option(
    "--exclude-fold",
    "exclude_folds",
    type=int,
    multiple=True,
    metavar="K",
    help="Leave out rows of this fold (repeatable).",
)
@click.option(
    "--origin", "origins", multiple=True, metavar="real|synthetic", help="Only real or synthetic rows (repeatable)."
)
@click.option("--overwrite", is_flag=True, help="Replace an earlier export at OUT (never other files).")
def export_command(
    manifest: Path,
    format_: str,
    out: Path,
    splits: tuple[str, ...],
    folds: tuple[int, ...],
    exclude_folds: tuple[int, ...],
    origins: tuple[str, ...],
    overwrite: bool,
) -> None:
    """Write the images of MANIFEST (a .parquet file, or a folder holding manifest.parquet) as
    one folder per class, every file a PNG named after its sample_id.

    Filters combine with AND. OUT/classes.json lists the classes in the manifest's label order
    (ImageFolder sorts them alphabetically); OUT/export.json records the source and the counts.

    \b
    Examples:
      fesaug export manifests/ck.parquet --out exports/ck
      fesaug export runs/balanced --split train --exclude-fold 0 --out exports/train
    """
    result = export(
        manifest,
        out,
        format=format_,
        splits=splits,
        folds=folds,
        exclude_folds=exclude_folds,
        origins=origins,
        overwrite=overwrite,
    )
    for warning in result.warnings:
        click.echo(f"Warning: {warning}", err=True)
    noun = "class" if len(result.classes) == 1 else "classes"
    click.echo(f"exported {result.total} images ({len(result.classes)} {noun}) to {result.out}")
