"""``fesaug export``: a manifest's images as a class-folder tree, for tools that expect one.

The ``imagefolder`` layout is what ``torchvision.datasets.ImageFolder`` reads::

    OUT/<label_name>/<sample_id>.png   one PNG per selected row, gray or RGB as the manifest's
                                       channels say; every class has a folder
    OUT/classes.json                   the manifest's class names in label order
    OUT/export.json                    provenance, source manifest and its sha256, filters, counts
    OUT/weights.csv                    path,weight per image, when the manifest has a weight column
                                       (fesaug balance --synthetic-share): sample by it
    OUT/soft_labels.csv                path,label,target_mass,source_label per synthetic image with a
                                       soft label (fesaug balance --synthetic-labels soft): train on it

The tree is built in a hidden folder beside OUT and renamed onto it at the end, so an interrupted
export leaves the previous tree (or nothing), never half of one; the next export into OUT removes
what the interrupted one left beside it. A second export into OUT while one runs is refused
(:mod:`fesaug.utils.locking`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fesaug.data.images import BadImage, decode_image, encode_png, stored_as_decoded
from fesaug.data.manifest import ORIGINS, Manifest, read_manifest
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import (
    atomic_write_bytes,
    atomic_write_text,
    check_out_folder,
    file_sha256,
    remove_stale_temporaries,
)
from fesaug.utils.locking import output_lock
from fesaug.utils.provenance import provenance

FORMATS = ("imagefolder",)
EXPORT_FILES = ("export.json", "classes.json", "weights.csv", "soft_labels.csv")
# Characters that Windows, macOS or Linux refuse in a file name, or read as a path separator.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


@dataclass
class ExportResult:
    out: Path
    classes: list[str]
    counts: dict[str, dict[str, int]]  # class -> origin -> images
    warnings: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())


def safe_file_name(name: str) -> str:
    """``name`` with unsafe characters replaced by ``_``, and a leading dot too (no hidden files,
    no ``.`` or ``..``)."""
    name = _UNSAFE.sub("_", name)
    return "_" + name[1:] if name.startswith(".") else name


def export(
    manifest: str | os.PathLike,
    out: str | os.PathLike,
    *,
    format: str = "imagefolder",
    splits: Sequence[str] = (),
    folds: Sequence[int] = (),
    exclude_folds: Sequence[int] = (),
    origins: Sequence[str] = (),
    overwrite: bool = False,
) -> ExportResult:
    """Write the rows of ``manifest`` that pass every filter as an ImageFolder tree at ``out``.

    ``manifest`` is a .parquet file or a folder holding ``manifest.parquet`` (``fesaug balance``
    output). An empty filter keeps every row.
    """
    if format not in FORMATS:
        raise UsageError(f"unknown --format {format!r}; choose one of {', '.join(FORMATS)}")
    unknown = sorted(set(origins) - set(ORIGINS))
    if unknown:
        raise UsageError(f"unknown --origin {', '.join(unknown)}; choose {' or '.join(ORIGINS)}")
    source = Path(manifest)
    if source.is_dir() and (source / "manifest.parquet").is_file():
        source = source / "manifest.parquet"
    m = read_manifest(source)
    classes = m.classes
    _check_class_names(classes)
    filters = {
        "split": list(splits),
        "fold": [int(k) for k in folds],
        "exclude-fold": [int(k) for k in exclude_folds],
        "origin": list(origins),
    }
    rows = _select(m, filters)
    names = _file_names(m, rows)
    out = Path(out)
    with output_lock(out):
        remove_stale_temporaries(out.absolute().parent, out.absolute().name)  # of an export stopped by kill -9
        _check_out(out, overwrite)
        return _write(m, source, out, rows, names, format=format, filters=filters, overwrite=overwrite)


def _write(
    m: Manifest,
    source: Path,
    out: Path,
    rows: list[int],
    names: list[str],
    *,
    format: str,
    filters: dict[str, list],
    overwrite: bool,
) -> ExportResult:
    classes = m.classes
    counts = {c: dict.fromkeys(ORIGINS, 0) for c in classes}
    for i in rows:
        counts[m.df["label_name"].iat[i]][m.df["origin"].iat[i]] += 1
    warnings = []
    if sorted(classes) != classes:
        warnings.append(
            f"ImageFolder indexes classes alphabetically ({', '.join(sorted(classes))}), not in the manifest's "
            f"label order ({', '.join(classes)}); map its targets to labels through {out / 'classes.json'}"
        )
    empty = [c for c in classes if not sum(counts[c].values())]
    if empty:
        warnings.append(
            f"no images for {', '.join(empty)}: their folders are empty, which torchvision's ImageFolder "
            "refuses unless given allow_empty=True"
        )
    record = {
        "provenance": provenance("export", {"format": format, "filters": filters, "overwrite": overwrite}),
        "source": {"manifest": str(source.resolve()), "sha256": file_sha256(source)},
        "format": format,
        "filters": filters,
        "classes": classes,
        "channels": m.channels,
        "total": len(rows),
        "counts": counts,
    }

    final = out.absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        for c in classes:
            (staging / c).mkdir()
        for i, name in zip(rows, names):
            dest = staging / m.df["label_name"].iat[i] / name
            data = _png(m, i)
            try:
                atomic_write_bytes(dest, data)
            except OSError as exc:
                raise FesaugError(f"cannot write {out / dest.relative_to(staging)} ({exc.strerror or exc})") from None
        atomic_write_text(staging / "classes.json", json.dumps(classes, indent=2) + "\n")
        if "weight" in m.df.columns:
            # ImageFolder has no place for a weight; without it a weighted balanced set is not balanced.
            weights = m.df["weight"].to_numpy(dtype=float, na_value=1.0)
            atomic_write_text(
                staging / "weights.csv",
                "path,weight\n"
                + "".join(f"{m.df['label_name'].iat[i]}/{name},{weights[i]:g}\n" for i, name in zip(rows, names)),
            )
        if "target_mass" in m.df.columns:
            # ImageFolder has one class per image; a soft label's other class needs a side file.
            atomic_write_text(staging / "soft_labels.csv", _soft_labels_csv(m, rows, names))
        atomic_write_text(staging / "export.json", json.dumps(record, indent=2) + "\n")
        _publish(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return ExportResult(out=out, classes=classes, counts=counts, warnings=warnings)


def _soft_labels_csv(m: Manifest, rows: Sequence[int], names: Sequence[str]) -> str:
    mass = m.df["target_mass"].to_numpy(dtype=float, na_value=1.0)
    source = m.df["source_label"].to_numpy(dtype=float, na_value=-1)
    classes = m.classes
    lines = ["path,label,target_mass,source_label\n"]
    for i, name in zip(rows, names):
        if mass[i] < 1:
            label = m.df["label_name"].iat[i]
            lines.append(f"{label}/{name},{label},{mass[i]:.6g},{classes[int(source[i])]}\n")
    return "".join(lines)


def _check_class_names(classes: list[str]) -> None:
    for c in classes:
        if safe_file_name(c) != c or c in EXPORT_FILES:
            raise FesaugError(
                f"class name {c!r} cannot be a folder name; rename the class in the manifest to export it"
            )
    if len({c.casefold() for c in classes}) != len(classes):
        # macOS and Windows file systems would merge their folders.
        raise FesaugError(f"class names {', '.join(classes)} differ only in case; rename one to export them as folders")


def _select(m: Manifest, filters: dict[str, list]) -> list[int]:
    df = m.df
    keep = np.ones(len(df), dtype=bool)
    if filters["split"]:
        keep &= df["split"].isin(filters["split"]).to_numpy(dtype=bool)
    if filters["fold"]:
        keep &= df["fold"].isin(filters["fold"]).to_numpy(dtype=bool)  # a null fold matches no K
    if filters["exclude-fold"]:
        keep &= ~df["fold"].isin(filters["exclude-fold"]).to_numpy(dtype=bool)
    if filters["origin"]:
        keep &= df["origin"].isin(filters["origin"]).to_numpy(dtype=bool)
    rows = np.flatnonzero(keep).tolist()
    if not rows:
        if not len(df):
            raise FesaugError(f"{m.path} has no rows; nothing to export")
        flags = " ".join(f"--{name} {v}" for name, values in filters.items() for v in values)
        raise FesaugError(
            f"no rows match {flags}; the manifest has splits {_listed(df['split'])}, "
            f"folds {_listed(df['fold'].dropna().astype(int))}, origins {_listed(df['origin'])}"
        )
    return rows


def _listed(values: Iterable) -> str:
    return ", ".join(map(str, sorted(set(values)))) or "(none)"


def _file_names(m: Manifest, rows: list[int]) -> list[str]:
    seen: dict[tuple[str, str], str] = {}
    names = []
    for i in rows:
        sample_id, folder = m.df["sample_id"].iat[i], m.df["label_name"].iat[i]
        name = safe_file_name(sample_id) + ".png"
        key = (folder, name.casefold())  # case-insensitive file systems would merge "A" and "a"
        if key in seen:
            raise FesaugError(
                f"sample ids {seen[key]!r} and {sample_id!r} would both be exported as {folder}/{name}; "
                "rename one in the manifest"
            )
        seen[key] = sample_id
        names.append(name)
    return names


def _check_out(out: Path, overwrite: bool) -> None:
    check_out_folder(out, "to export into")
    content = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    if not content:
        return
    if not overwrite:
        raise FesaugError(f"{out} is not empty; pass --overwrite to replace an earlier export or choose another --out")
    foreign = [name for name in content if name not in _written_by_export(out)]
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
        raise FesaugError(
            f"{out} holds {shown}, which fesaug export did not write; --overwrite only replaces an "
            "earlier export, so move them away or choose another --out"
        )


def _written_by_export(out: Path) -> set[str]:
    """What an earlier export left in ``out``: its JSON files and the class folders they list."""
    written: set[str] = set()
    for name in EXPORT_FILES:
        file = out / name
        if not file.is_file():
            continue
        written.add(name)
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # its folders then count as foreign, and the export refuses rather than guesses
        listed = data.get("classes") if isinstance(data, dict) else data
        if isinstance(listed, list):
            written |= {c for c in listed if isinstance(c, str) and c not in EXPORT_FILES and (out / c).is_dir()}
    return written


def _png(m: Manifest, i: int) -> bytes:
    try:
        data = m.image_bytes(i)
        # At the manifest's channels; the decode also proves a PNG is not truncated.
        image = decode_image(data, where=m.image_location(i), channels=m.channels)
    except BadImage as exc:
        raise FesaugError(
            f"row {i} ({m.df['sample_id'].iat[i]}): {exc.where}: {exc.reason}; "
            "fix the image, or leave the row out with --split/--fold/--exclude-fold/--origin"
        ) from None
    # PNGs that hold the image as the manifest reads it are copied untouched, so exported files keep
    # the sha256 the manifest records; others (another format, a colour file in a gray manifest, a
    # gray one in a colour manifest, an EXIF rotation) are written as the manifest reads them.
    return data if stored_as_decoded(data, m.channels) else encode_png(image)


def _publish(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    # _check_out made sure ``final`` holds nothing but an earlier export, so all of it may go.
    backup = staging.with_suffix(".old")
    os.replace(final, backup)
    try:
        os.replace(staging, final)
    except BaseException:
        os.replace(backup, final)
        raise
    shutil.rmtree(backup, ignore_errors=True)
