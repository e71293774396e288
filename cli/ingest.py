from __future__ import annotations

from pathlib import Path

import click

from fesaug.cli.params import checked_by
from fesaug.data.ingest import (
    FORMATS,
    PRESETS,
    IngestResult,
    compile_subject_pattern,
    ingest,
)


def _default_out(src: Path) -> Path:
    name = src.resolve().stem if src.is_file() else src.resolve().name
    return Path("manifests") / f"{name}.parquet"


def _n(count: int, noun: str, plural: str = "") -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {plural or noun + 's'}"


def _summary(result: IngestResult) -> str:
    classes = ", ".join(f"{c} {n}" for c, n in result.class_counts.items())
    subjects = _n(result.subjects, "subject") if result.subjects else "no subject ids"
    folds = _n(result.folds, "fold") if result.folds else "no folds"
    storage = {
        "in-place": "images referenced in place",
        "folder": f"images in {result.image_folder}",
        "embedded": "images embedded",
    }[result.storage]
    storage = ("colour (RGB) " if result.channels == 3 else "gray ") + storage
    skipped = f"{len(result.skipped)} skipped" + (" (-v lists them)" if result.skipped else "")
    ignored = f", {_n(result.ignored, 'non-image file')} ignored" if result.ignored else ""
    au = f" ({result.au_labelled} with AU labels)" if result.au_labelled is not None else ""
    aligned = ""
    if result.aligned is not None:
        whole = result.aligned["whole-image"]
        aligned = f", {_n(result.aligned['detector'] + whole, 'face')} aligned" + (
            f" ({whole} taking the whole image as the face)" if whole else ""
        )
    return (
        f"Wrote {result.manifest}: {_n(result.rows, 'row')}{au}, {subjects}, "
        f"{_n(len(result.class_counts), 'class', 'classes')} ({classes}), "
        f"{folds}, {skipped}{ignored}{aligned}, {storage} ({result.seconds:.1f} s)"
    )


@click.command("ingest")
@click.argument("src", type=click.Path(path_type=Path))
@click.option(
    "--out",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Manifest to write.  [default: manifests/<SRC name>.parquet]",
)
@click.option(
    "--format",
    "format_",
    type=click.Choice(FORMATS),
    default="folder",
    show_default=True,
    help="folder: class folders (optionally inside train/, test/... folders); fer2013-csv: emotion,pixels,Usage rows; "
    "hf: a Hugging Face dataset (a save_to_disk folder, or a local folder datasets.load_dataset reads; needs "
    "pip install 'fesaug[hf]').",
)
@click.option("--image-column", metavar="NAME", help="--format hf: the image column.  [default: image]")
@click.option(
    "--label-column",
    metavar="NAME",
    help="--format hf: the label column, a ClassLabel or class-name strings, mapped to fesaug's class names.  "
    "[default: label]",
)
@click.option("--subject-column", metavar="NAME", help="--format hf: the column of subject ids (needed for --folds).")
@click.option(
    "--split-column",
    metavar="NAME",
    help="--format hf: the column of each row's split (train/validation/test); default: the dataset's split names.",
)
@click.option(
    "--preset",
    type=click.Choice(PRESETS),
    help="Read subject ids (and, for a flat JAFFE folder, classes) from a known dataset's file names.",
)
@click.option(
    "--subject-pattern",
    metavar="REGEX",
    callback=checked_by(compile_subject_pattern),
    help="Regex finding the subject id in each file name: one capture group, or a group named 'subject'.",
)
@click.option(
    "--folds", type=click.IntRange(min=2), metavar="K", help="Assign K subject-independent folds (needs subject ids)."
)
@click.option("--fold-seed", type=int, default=0, show_default=True, metavar="S", help="Seed of the fold assignment.")
@click.option("--detect-faces", is_flag=True, help="Crop each image to its largest face (OpenCV Haar cascade).")
@click.option(
    "--align",
    is_flag=True,
    help="Align each face: dlib's detector and 5-point landmarks, then rotate and scale so the eyes lie level at "
    "CK+48's eye positions, cropped to --size (default: the face's own scale). Needs pip install 'fesaug[judges]'.",
)
@click.option("--size", type=click.IntRange(min=1), metavar="N", help="Resize images to N x N.")
@click.option(
    "--color/--grayscale",
    "color",
    default=None,
    help="Keep every image in colour (RGB), or turn every image gray.  [default: colour if any image of SRC "
    "has colour, else gray]",
)
@click.option("--embed", is_flag=True, help="Store the image bytes inside the manifest instead of beside it.")
@click.option(
    "--au-labels",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Action-unit labels per image: CSV (file + AU12... columns, or an 'aus' column like 1+2+5B+26) "
    'or JSON ({"a.png": [1, 12]}), keyed by path relative to SRC or file name.',
)
@click.option(
    "--skip-bad", is_flag=True, help="Skip bad files and rows, recording them in the manifest, instead of stopping."
)
@click.option("--overwrite", is_flag=True, help="Replace an existing manifest (and its image folder).")
@click.option("-v", "--verbose", is_flag=True, help="List the skipped files.")
def ingest_command(
    src: Path,
    out: Path | None,
    format_: str,
    image_column: str | None,
    label_column: str | None,
    subject_column: str | None,
    split_column: str | None,
    preset: str | None,
    subject_pattern: str | None,
    folds: int | None,
    fold_seed: int,
    detect_faces: bool,
    align: bool,
    size: int | None,
    embed: bool,
    au_labels: Path | None,
    color: bool | None,
    skip_bad: bool,
    overwrite: bool,
    verbose: bool,
) -> None:
    """Write a manifest for the image dataset at SRC.

    Unchanged images are referenced in place (nothing is copied); CSV rows, face crops, aligned faces
    and resized images are written as PNGs into <manifest>-images/ beside the manifest, or embedded
    with --embed.

    \b
    Examples:
      fesaug ingest data/ckplus48 --preset ckplus --folds 10 --out manifests/ck.parquet
      fesaug ingest fer2013.csv --format fer2013-csv --skip-bad
      fesaug ingest saved-hf-dataset/ --format hf --label-column emotion --subject-column person --folds 5
      fesaug ingest photos/ --subject-pattern '^(\\w+?)_' --detect-faces --size 96
      fesaug ingest rafdb-aligned/ --color --size 112 --skip-bad
      fesaug ingest photos/ --subject-pattern '^(\\w+?)_' --align --size 48 --skip-bad
      fesaug ingest data/ckplus48 --preset ckplus --au-labels ck-facs.csv
    """
    result = ingest(
        src,
        out if out is not None else _default_out(src),
        format=format_,
        preset=preset,
        subject_pattern=subject_pattern,
        folds=folds,
        fold_seed=fold_seed,
        detect_faces=detect_faces,
        size=size,
        embed=embed,
        skip_bad=skip_bad,
        overwrite=overwrite,
        au_labels=au_labels,
        align=align,
        image_column=image_column,
        label_column=label_column,
        subject_column=subject_column,
        split_column=split_column,
        color=color,
    )
    click.echo(_summary(result))
    if verbose:
        for record in result.skipped:
            click.echo(f"  skipped {record['file']}: {record['reason']}")
