"""``fesaug ingest``: a user's image dataset (class folders, a FER2013 CSV or a Hugging Face
dataset) to a manifest.

Colour is kept when the dataset has it: the manifest is colour (``channels`` 3) when any image
shows colour (:func:`fesaug.data.images.has_colour`), else gray, unless ``color`` forces either.
Each image ingest produces is stored with its own channels (a gray face as a gray PNG); every
reader decodes it to the manifest's.

Images used unchanged are referenced in place (the manifest's ``image_root`` points at SRC), so a
research-only dataset is never copied. Images that ingest produces (CSV rows, face crops, aligned
faces, resizes) are written as PNGs into ``<out stem>-images/`` beside the manifest, or embedded in it;
so are a Hugging Face dataset's images, in their own format when unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image
from tqdm import tqdm

from fesaug.data.align import FaceAligner
from fesaug.data.au import AULabels, read_au_labels
from fesaug.data.faces import crop_face
from fesaug.data.images import (
    BadImage,
    channels_of,
    convert_image,
    decode_image,
    encode_png,
    image_suffix,
    read_image_file,
    resize_square,
    sha256_bytes,
)
from fesaug.data.labels import class_list
from fesaug.data.manifest import relative_image_root, write_manifest
from fesaug.data.sources import (
    PRESET_PATTERNS,
    Item,
    Skips,
    compile_subject_pattern,
    match_au_labels,
    read_fer2013_csv,
    scan_folder,
)
from fesaug.data.staging import StagedImageFolder
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import remove_stale_temporaries
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance

FORMATS = ("folder", "fer2013-csv", "hf")
PRESETS = tuple(PRESET_PATTERNS)
# ingest's ``color`` → what each image is decoded to (None: as it is, RGB if it has colour).
_CHANNELS = {True: 3, False: 1, None: None}

__all__ = ["FORMATS", "PRESETS", "IngestResult", "compile_subject_pattern", "ingest"]


@dataclass
class IngestResult:
    """What one ingest wrote; ``skipped`` is also in the manifest footer."""

    manifest: Path
    rows: int
    class_counts: dict[str, int]  # in label order
    subjects: int  # distinct subject ids; 0 without --preset/--subject-pattern
    folds: int | None
    skipped: list[dict[str, str]]  # {"file", "reason"}
    ignored: int  # hidden files and files without an image extension
    storage: str  # "in-place", "folder" or "embedded"
    channels: int  # 1: gray, 3: colour (RGB); every image decodes to this
    image_folder: Path | None  # where produced images went (storage "folder")
    seconds: float
    au_labelled: int | None = None  # rows with AU labels; None without --au-labels
    aligned: dict[str, int] | None = (
        None  # faces per box ("detector", "whole-image") and "skipped"; None without --align
    )


def ingest(
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "folder",
    preset: str | None = None,
    subject_pattern: str | None = None,
    folds: int | None = None,
    fold_seed: int = 0,
    detect_faces: bool = False,
    size: int | None = None,
    embed: bool = False,
    skip_bad: bool = False,
    overwrite: bool = False,
    au_labels: str | os.PathLike | None = None,
    align: bool = False,
    image_column: str | None = None,
    label_column: str | None = None,
    subject_column: str | None = None,
    split_column: str | None = None,
    color: bool | None = None,
) -> IngestResult:
    """Read the dataset at ``src`` and write its manifest to ``out``.

    ``format`` is ``folder`` (class folders, optionally below ``train/``, ``test/`` ... folders),
    ``fer2013-csv``, or ``hf``: a Hugging Face dataset saved with ``save_to_disk`` or a local
    folder ``datasets.load_dataset`` reads, whose ``image_column`` (default ``image``) and
    ``label_column`` (default ``label``, a ``ClassLabel`` or class-name strings) are read, with
    subject ids from ``subject_column`` and splits from ``split_column`` or the split names
    (:mod:`.hf`). Subject ids come from file names via ``preset`` (``ckplus``, ``jaffe``) or
    ``subject_pattern``; ``folds`` then assigns subject-independent folds. ``detect_faces`` crops
    the largest face, ``size`` resizes to ``size`` x ``size``. ``align`` rotates, scales and crops
    each face so that its eyes lie level at fixed positions (:mod:`.align`; needs the ``judges``
    extra), at ``size`` or, without it, at the face's own scale. ``au_labels`` is a CSV/JSON side file
    of action-unit labels keyed by image path or file name (:func:`.au.read_au_labels`); images
    without an entry get null AU columns. ``color``: True keeps every image in colour (RGB;
    gray ones repeated), False turns them gray, None (the default) keeps colour when any image of
    the dataset has it. Images are turned upright by their EXIF orientation. Bad inputs raise
    :class:`FesaugError` naming the file, or with ``skip_bad`` are recorded and left out.
    """
    start = time.perf_counter()
    src, out = Path(src), Path(out)
    subject_rx = _subject_regex(format, preset, subject_pattern)
    columns = _hf_columns(format, image_column, label_column, subject_column, split_column)
    has_subjects = subject_rx is not None or subject_column is not None
    _check_options(format, folds, size, has_subjects, au_labels, align=align, detect_faces=detect_faces)
    _check_source(src, format)
    labels = read_au_labels(au_labels) if au_labels is not None else None  # before the scan: fail fast
    aligner = FaceAligner() if align else None  # a missing extra, before any work
    produced = format != "folder" or detect_faces or align or size is not None
    storage = "embedded" if embed else "folder" if produced else "in-place"
    image_dir = out.with_name(f"{out.stem}-images") if storage == "folder" else None
    with output_lock(out):
        _prepare_outputs(out, image_dir, overwrite)

        skips = Skips(skip_bad)
        items, total, ignored = _read_items(src, format, subject_rx, preset == "jaffe", columns, skips, image_dir)
        # Before decoding images, so a wrong side file fails in seconds.
        au_rows = match_au_labels(labels, items, skips) if labels is not None else {}  # sample_id -> side-file key

        options = _options(
            format, preset, subject_rx, columns, folds=folds, fold_seed=fold_seed, au_labels=au_labels, color=color,
            detect_faces=detect_faces, align=align, size=size, storage=storage,
        )  # fmt: skip
        with StagedImageFolder(image_dir) as folder:
            convert = functools.partial(
                _row, detect_faces=detect_faces, aligner=aligner, size=size, embed=embed, channels=_CHANNELS[color]
            )
            rows = _convert(items, total, src, skips, functools.partial(convert, folder=folder))
            channels = _manifest_channels(rows, color)
            df, classes = _table(rows, folds, fold_seed, labels, au_rows)
            meta = {**_footer(src, options, skips, ignored, labels, aligner), "channels": channels}
            folder.publish()
            image_root = relative_image_root(out, src) if storage == "in-place" else "."
            write_manifest(df, out, classes=classes, meta=meta, overwrite=overwrite, image_root=image_root)

        return _result(out, df, classes, meta, image_dir, time.perf_counter() - start)


def _options(
    format: str,
    preset: str | None,
    subject_rx: re.Pattern | None,
    columns: Any,
    *,
    folds: int | None,
    fold_seed: int,
    au_labels: str | os.PathLike | None,
    color: bool | None,
    **flags: Any,
) -> dict[str, Any]:
    """The settings the footer and the provenance record; ``flags`` as given (``detect_faces``,
    ``align``, ``size``, ``storage``)."""
    return {
        "format": format,
        "preset": preset,
        "subject_pattern": subject_rx.pattern if subject_rx else None,
        "folds": folds,
        "fold_seed": fold_seed if folds else None,
        **flags,
        "au_labels": str(au_labels) if au_labels is not None else None,
        "color": {True: "color", False: "grayscale", None: "auto"}[color],
        **({"columns": dataclasses.asdict(columns)} if columns is not None else {}),
    }


def _manifest_channels(rows: list[dict[str, Any]], color: bool | None) -> int:
    """The manifest's channels: 3 when ``color`` forces colour, or, left to the images (None),
    when one of them came back RGB (each row's ``_channels``, removed from the rows here)."""
    colour = [row.pop("_channels") == 3 for row in rows]
    return 3 if color or (color is None and any(colour)) else 1


def _footer(
    src: Path,
    options: dict[str, Any],
    skips: Skips,
    ignored: int,
    labels: AULabels | None,
    aligner: FaceAligner | None,
) -> dict[str, Any]:
    """The manifest footer: the settings, what was skipped or ignored, provenance, the AU ids and
    the alignment's settings."""
    return {
        **options,
        "source": str(src.resolve()),
        "skipped": skips.records,
        "ignored": ignored,
        "provenance": provenance("fesaug ingest", {"src": str(src), **options}),
        **({"au_ids": list(labels.au_ids)} if labels is not None else {}),
        **({"alignment": aligner.settings(options["size"])} if aligner is not None else {}),
    }


def _read_items(
    src: Path,
    format: str,
    subject_rx: re.Pattern | None,
    jaffe: bool,
    columns: Any,
    skips: Skips,
    image_dir: Path | None,
) -> tuple[Iterable[Item], int | None, int]:
    """The images of ``src``, how many there are (None: unknown) and how many files were ignored."""
    if format == "folder":
        scan = scan_folder(src, subject_rx=subject_rx, jaffe=jaffe, skips=skips, exclude=image_dir)
        return scan.items, len(scan.items), scan.ignored
    return (*_read_rows(src, format, columns, skips), 0)


def _result(
    out: Path, df: pd.DataFrame, classes: list[str], meta: dict[str, Any], image_dir: Path | None, seconds: float
) -> IngestResult:
    counts = df["label_name"].value_counts()
    return IngestResult(
        manifest=out,
        rows=len(df),
        class_counts={c: int(counts[c]) for c in classes},
        subjects=int(df["subject_id"].nunique()),
        folds=meta["folds"],
        skipped=meta["skipped"],
        ignored=meta["ignored"],
        storage=meta["storage"],
        channels=meta["channels"],
        image_folder=image_dir,
        seconds=seconds,
        au_labelled=int(df["au_occurrence"].notna().sum()) if "au_ids" in meta else None,
        aligned=meta["alignment"]["counts"] if "alignment" in meta else None,
    )


def _convert(
    items: Iterable[Item], total: int | None, src: Path, skips: Skips, row: Callable[[Item], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Each item as a manifest row (``row``), with a progress bar; bad images skipped or raised."""
    rows = []
    for item in tqdm(items, total=total, desc=f"ingest {src.name}", unit="img", disable=None):
        try:
            rows.append(row(item))
        except BadImage as exc:
            skips(exc, item.source_file)
    if not rows:  # a folder without images was refused by scan_folder already
        why = (
            f"all {len(skips.records)} skipped as bad; run without --skip-bad to see the first problem"
            if skips.records
            else "it has no data rows"
        )
        raise FesaugError(f"no usable images in {src} ({why})")
    return rows


def _table(
    rows: list[dict[str, Any]], folds: int | None, fold_seed: int, labels: AULabels | None, au_rows: dict[str, str]
) -> tuple[pd.DataFrame, list[str]]:
    """The rows as a manifest table and its classes: labels in class order, subject-independent
    folds, and the AU labels matched to each row."""
    df = pd.DataFrame(rows)
    classes = class_list(df["label_name"])
    df["label"] = [classes.index(name) for name in df["label_name"]]
    if folds:
        from fesaug.data.splits import assign_folds  # scikit-learn: ~0.6 s to import, so every fesaug command would pay

        df["fold"] = assign_folds(df["label"].to_numpy(), df["subject_id"].tolist(), folds, fold_seed)
    if labels is not None:
        key = [au_rows.get(sid) for sid in df["sample_id"]]
        df["au_occurrence"] = [labels.occurrence[k] if k else None for k in key]
        if labels.has_intensity:
            df["au_intensity"] = [labels.intensity[k] if k else None for k in key]
    return df, classes


def _read_rows(src: Path, format: str, columns: Any, skips: Skips) -> tuple[Iterable[Item], int | None]:
    """The rows of a FER2013 CSV or a Hugging Face dataset, and how many there are (None: unknown)."""
    if format == "hf":
        from fesaug.data.hf import read_hf_dataset  # imported on use: the other formats never need it

        return read_hf_dataset(src, columns, skips=skips)
    return read_fer2013_csv(src, skips=skips), None


def _row(
    item: Item,
    *,
    detect_faces: bool,
    aligner: FaceAligner | None,
    size: int | None,
    embed: bool,
    channels: int | None,
    folder: StagedImageFolder,
) -> dict:
    """The manifest row of ``item`` (and, under ``_channels``, those of its decoded image)."""
    if item.path is not None:
        data, img = read_image_file(item.path, channels)
    elif item.data is not None:
        data, img = item.data, decode_image(item.data, where=item.where, channels=channels)
    else:
        data, img = None, convert_image(Image.fromarray(item.pixels), channels)
    original = data
    found = None
    if aligner is not None:
        img, found = aligner.align(img, where=item.where, size=size)
    elif detect_faces:
        img = crop_face(img, where=item.where)
    if size is not None:
        img = resize_square(img, size)
    if data is None or detect_faces or found is not None or size is not None:
        data = encode_png(img)
    if embed:
        image = {"bytes": data, "path": None}
    elif folder.final is not None:
        # Images ingest made are PNGs; an image kept as it came (a Hugging Face row's) keeps its format.
        suffix = image_suffix(data) if data is original else ".png"
        image = {"bytes": None, "path": folder.write(f"{item.label}/{item.sample_id}{suffix}", data)}
    else:
        image = {"bytes": None, "path": item.source_file}
    return {
        "sample_id": item.sample_id,
        "image": image,
        "label_name": item.label,
        "subject_id": item.subject_id,
        "split": item.split,
        "width": img.width,
        "height": img.height,
        "sha256": sha256_bytes(data),
        "source_file": item.source_file,
        "_channels": channels_of(img),
        **(
            {
                "align_box": found.box,
                "align_angle": round(found.angle, 2),
                "align_eye_distance": round(found.eye_distance, 2),
            }
            if found is not None
            else {}
        ),
    }


def _subject_regex(format: str, preset: str | None, pattern: str | None) -> re.Pattern | None:
    if preset is not None and pattern is not None:
        raise UsageError("--preset and --subject-pattern both say how to read subject ids; pass only one")
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)} or pass --subject-pattern")
    if format == "fer2013-csv" and (preset or pattern):
        raise UsageError(
            "--format fer2013-csv has no file names to read subject ids from; drop --preset/--subject-pattern"
        )
    if format == "hf" and (preset or pattern):
        raise UsageError(
            "--format hf reads subject ids from a column; pass --subject-column instead of --preset/--subject-pattern"
        )
    if preset is not None:
        return re.compile(PRESET_PATTERNS[preset])
    return compile_subject_pattern(pattern) if pattern is not None else None


def _hf_columns(format: str, image: str | None, label: str | None, subject: str | None, split: str | None) -> Any:
    """The columns ``--format hf`` reads (None for the other formats, which have no columns)."""
    named = {"--image-column": image, "--label-column": label, "--subject-column": subject, "--split-column": split}
    if format != "hf":
        given = [flag for flag, value in named.items() if value is not None]
        if given:
            raise UsageError(f"{given[0]} names a column of a Hugging Face dataset; it needs --format hf")
        return None
    from fesaug.data.hf import HFColumns

    return HFColumns(image=image or "image", label=label or "label", subject=subject, split=split)


def _check_options(
    format: str,
    folds: int | None,
    size: int | None,
    has_subjects: bool,
    au_labels: object = None,
    *,
    align: bool = False,
    detect_faces: bool = False,
) -> None:
    if format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    if align and detect_faces:
        raise UsageError(
            "--align finds each face itself (dlib's detector and landmarks) and crops it; drop --detect-faces"
        )
    if format != "folder" and au_labels is not None:
        source = {"fer2013-csv": "a FER2013 CSV", "hf": "a Hugging Face dataset"}.get(format, f"--format {format}")
        raise UsageError(f"--au-labels matches labels to image files, which {source} does not have; drop --au-labels")
    if size is not None and size < 1:
        raise UsageError(f"--size must be a positive number of pixels (got {size})")
    if folds is None:
        return
    if folds < 2:
        raise UsageError(f"--folds must be at least 2 (got {folds})")
    if not has_subjects:
        if format == "hf":
            raise UsageError("--folds needs subject ids so that no subject is in two folds; pass --subject-column")
        if format == "fer2013-csv":
            raise UsageError(
                "--folds needs subject ids, which a FER2013 CSV does not have; use its Usage column (the split) instead"
            )
        raise UsageError(
            "--folds needs subject ids so that no subject is in two folds; pass --preset ckplus|jaffe or "
            "--subject-pattern REGEX"
        )


def _check_source(src: Path, format: str) -> None:
    if not src.exists():
        what = {
            "hf": "the folder of a saved Hugging Face dataset",
            "fer2013-csv": "the FER2013 CSV file",
        }.get(format, "the dataset folder (or a FER2013 CSV with --format fer2013-csv)")
        raise FesaugError(f"{src} does not exist; pass {what}")
    if format == "folder" and not src.is_dir():
        hint = (
            "pass --format fer2013-csv"
            if src.suffix.lower() == ".csv"
            else "pass the folder that holds the class folders"
        )
        raise FesaugError(f"{src} is a file, not a folder; {hint}")
    if format == "hf" and not src.is_dir():
        raise FesaugError(
            f"{src} is a file; --format hf needs a folder (one written by Dataset.save_to_disk, or one "
            "datasets.load_dataset reads)"
        )
    if format == "fer2013-csv" and src.is_dir():
        raise FesaugError(
            f"{src} is a folder; --format fer2013-csv needs the CSV file (e.g. fer2013.csv), or drop --format for "
            "class folders"
        )


def _prepare_outputs(out: Path, image_dir: Path | None, overwrite: bool) -> None:
    """Clear what an ingest stopped by kill -9 left beside its outputs (stale: the caller holds
    the lock), and refuse to replace an earlier ingest's without ``overwrite``."""
    for path in (out, image_dir):
        if path is not None:
            remove_stale_temporaries(path.absolute().parent, path.name)
    if out.is_dir():
        raise FesaugError(f"--out {out} is a folder; give a file name such as {out / 'manifest.parquet'}")
    if overwrite:
        return
    if out.exists():
        raise FesaugError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if image_dir is not None and image_dir.exists():
        raise FesaugError(
            f"{image_dir} already exists without its manifest {out} (the images of an earlier ingest that "
            "was stopped, or another folder); pass --overwrite to replace it or choose another --out"
        )
