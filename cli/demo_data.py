from __future__ import annotations

from pathlib import Path

import click

from fesaug.data.demo import DEFAULT_COUNTS, DEFAULT_SUBJECTS, STYLES, make_demo_dataset
from fesaug.data.manifest import read_manifest


def _parse_counts(ctx: click.Context, param: click.Parameter, value: str | None) -> dict[str, int] | None:
    if value is None:
        return None
    counts: dict[str, int] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, number = item.partition("=")
        if not sep or not name.strip() or not number.strip().isdigit():
            raise click.BadParameter(f"{item!r} is not CLASS=COUNT with a whole number >= 0 (e.g. contempt=54)")
        counts[name.strip()] = int(number)
    if not counts:
        raise click.BadParameter("give at least one CLASS=COUNT (e.g. contempt=54)")
    return counts


@click.command("demo-data")
@click.option(
    "--out",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for images/<class>/*.png and manifest.parquet.",
)
@click.option(
    "--n-subjects", type=int, default=DEFAULT_SUBJECTS, show_default=True, help="Number of synthetic identities."
)
@click.option(
    "--counts",
    callback=_parse_counts,
    help="Images per class, overriding the CK+ counts ("
    + ",".join(f"{c}={n}" for c, n in DEFAULT_COUNTS.items())
    + "); 0 leaves a class out.",
)
@click.option("--size", type=int, default=64, show_default=True, help="Image side in pixels.")
@click.option("--seed", type=int, default=0, show_default=True, help="Dataset seed: same seed, same pixels.")
@click.option("--neutral", is_flag=True, help="Add each sequence's onset frame as a neutral image.")
@click.option("--folds", type=int, default=5, show_default=True, help="Subject-independent folds.")
@click.option(
    "--style",
    type=click.Choice(tuple(STYLES)),
    default="standard",
    show_default=True,
    help="Population: 'shifted' is a second domain (other face shapes and skin tones, side lighting, wider poses, "
    "low resolution; subject ids DS001...) for training on one and testing on the other.",
)
@click.option(
    "--color",
    is_flag=True,
    help="Render the faces in colour (skin tones, hair, eyes, lips, backgrounds): RGB images, a colour manifest.",
)
@click.option("--overwrite", is_flag=True, help="Replace an existing demo dataset in --out.")
def demo_data_command(
    out: Path,
    n_subjects: int,
    counts: dict[str, int] | None,
    size: int,
    seed: int,
    neutral: bool,
    folds: int,
    style: str,
    color: bool,
    overwrite: bool,
) -> None:
    """Generate the procedural demo dataset (synthetic faces, CK+-like classes and imbalance)."""
    path = make_demo_dataset(
        out,
        counts=counts,
        n_subjects=n_subjects,
        size=size,
        seed=seed,
        neutral=neutral,
        folds=folds,
        overwrite=overwrite,
        style=style,
        color=color,
    )
    m = read_manifest(path)
    click.echo(
        f"{len(m)} {'colour ' if m.channels == 3 else ''}images, {m.df['subject_id'].nunique()} subjects, "
        f"{len(m.classes)} classes ({', '.join(m.classes)}) -> {path}"
    )
