"""What ``fesaug ingest`` reads: the images of a class-per-folder tree, or the rows of a FER2013 CSV
(a Hugging Face dataset's rows: :mod:`fesaug.data.hf`).

Both turn into :class:`Item` records (class, split, subject, where the pixels are). Images are not
decoded here; :mod:`fesaug.data.ingest` does that. Every bad file, folder or row goes through
:class:`Skips`, which raises it, or records it when the user passed ``--skip-bad``.
"""

from __future__ import annotations

import csv
import hashlib
import math
import os
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fesaug.data.au import AULabels
from fesaug.data.images import BadImage
from fesaug.data.labels import FER2013_CLASSES, canonical_label, canonicalize
from fesaug.utils.errors import FesaugError, UsageError

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm"}
)

# Split folder names (top level of SRC) and FER2013 ``Usage`` values, lower-cased, letters only.
SPLITS = {
    "train": "train",
    "training": "train",
    "val": "validation",
    "valid": "validation",
    "validation": "validation",
    "dev": "validation",
    "publictest": "validation",
    "test": "test",
    "testing": "test",
    "privatetest": "test",
}

# Subject ids from file names of the datasets fesaug knows by name.
PRESET_PATTERNS = {
    "ckplus": r"^(?P<subject>S\d{3})_\d{3}_\d+",  # S010_004_00000017.png: subject S010, sequence 004
    "jaffe": r"^(?P<subject>[A-Za-z]{2})\.(?P<code>[A-Za-z]{2})\d*\.\d+",  # KA.AN1.39.tiff: subject KA, anger
}
_JAFFE = re.compile(PRESET_PATTERNS["jaffe"])


class BadInput(FesaugError):
    """A file, folder or CSV row that cannot be ingested for a reason other than its pixels."""

    def __init__(self, where: str, reason: str):
        self.where = where
        self.reason = reason
        super().__init__(
            f"{where}: {reason}; fix or remove it, or pass --skip-bad to skip it (the manifest records what was "
            "skipped)"
        )


@dataclass
class Skips:
    """Bad inputs: raised at once, or (with ``--skip-bad``) recorded as ``{"file", "reason"}``."""

    skip_bad: bool
    records: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, exc: BadImage | BadInput, file: str) -> None:
        if not self.skip_bad:
            raise exc
        self.records.append({"file": file, "reason": exc.reason})


@dataclass(frozen=True)
class Item:
    """One image to ingest: a file of a folder tree, one FER2013 CSV row, or one row of a Hugging
    Face dataset."""

    sample_id: str
    source_file: str  # posix path relative to SRC, "csv:<line>" or "hf:<split>/<row>"
    where: str  # how error messages name it
    label: str  # canonical class name
    split: str
    subject_id: str | None = None
    path: Path | None = None  # the image file (folder trees)
    pixels: np.ndarray | None = None  # the decoded uint8 square (CSV rows)
    data: bytes | None = None  # the encoded image (Hugging Face rows)


def compile_subject_pattern(pattern: str) -> re.Pattern:
    """``--subject-pattern``: a regex with one capture group, or a named group ``subject``."""
    try:
        rx = re.compile(pattern)
    except re.error as exc:
        raise UsageError(f"--subject-pattern {pattern!r} is not a valid regular expression ({exc})") from None
    if "subject" not in rx.groupindex and rx.groups != 1:
        raise UsageError(
            f"--subject-pattern {pattern!r} has {rx.groups} capture groups; use exactly one, "
            r"or name the subject's (?P<subject>...), e.g. '^(S\d+)_'"
        )
    return rx


def subject_of(rx: re.Pattern, name: str) -> str | None:
    """The subject id ``rx`` finds in the file name ``name``, or None."""
    m = rx.search(name)
    if m is None:
        return None
    return (m.group("subject") if "subject" in rx.groupindex else m.group(1)) or None


def letters(name: str) -> str:
    """``name`` lower-cased, letters only: how split names are compared (``Train`` = ``train``)."""
    return re.sub(r"[^a-z]", "", name.lower())


def safe_stem(stem: str) -> str:
    """``stem`` with every run of characters unsafe in a file name replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._") or "image"


def sample_ids(rel_paths: list[str]) -> list[str]:
    """Filename-safe ids from the file stems; stems used twice (``train/a.png``, ``test/a.png``)
    get a short hash of their relative path, so ids never depend on scan order."""
    stems = [safe_stem(Path(p).stem) for p in rel_paths]
    counts = Counter(stems)
    return [
        s if counts[s] == 1 else f"{s}-{hashlib.sha1(p.encode()).hexdigest()[:8]}" for s, p in zip(stems, rel_paths)
    ]


# ---------------------------------------------------------------------------------------------
# Folder trees


@dataclass
class FolderScan:
    items: list[Item]
    ignored: int  # hidden files and folders, files without an image extension


class _Walker:
    """Lists folders and image files below SRC, refusing symlinks that leave the tree."""

    def __init__(self, src: Path, skips: Skips, exclude: Path | None):
        self.src = src
        self.root = src.resolve()
        self.skips = skips
        self.exclude = exclude.resolve() if exclude is not None else None
        self.ignored = 0
        self.seen = {str(self.root)}  # real folders already walked: symlink loops stop here

    def rel(self, path: Path) -> str:
        return path.relative_to(self.src).as_posix()

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """Sub-folders and image files directly in ``folder``."""
        try:
            listing = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise FesaugError(f"cannot list folder {folder} ({exc.strerror or exc}); check its permissions") from None
        dirs, files = [], []
        for entry in listing:
            path = Path(entry.path)
            if entry.name.startswith("."):
                self.ignored += 1
                continue
            is_dir = entry.is_dir()  # follows symlinks
            if not is_dir and path.suffix.lower() not in IMAGE_EXTENSIONS:
                self.ignored += 1
                continue
            real = Path(os.path.realpath(path))
            if is_dir and real == self.exclude:  # this ingest's own output, inside SRC
                continue
            if not real.is_relative_to(self.root):
                self.skips(
                    BadInput(
                        str(path),
                        f"symlink pointing outside the source folder (to {real}); copy the target into {self.src} "
                        "instead",
                    ),
                    self.rel(path),
                )
                continue
            (dirs if is_dir else files).append(path)
        return dirs, files

    def images_below(self, folder: Path) -> list[Path]:
        found, stack = [], [folder]
        while stack:
            current = stack.pop()
            real = os.path.realpath(current)
            if real in self.seen:
                continue
            self.seen.add(real)
            dirs, files = self.entries(current)
            found += files
            stack += dirs
        return sorted(found)


def scan_folder(
    src: Path, *, subject_rx: re.Pattern | None, jaffe: bool, skips: Skips, exclude: Path | None = None
) -> FolderScan:
    """The images of a class-per-folder tree (optionally below split folders such as ``train/``).

    With ``jaffe``, image files directly in ``src`` take their class from the JAFFE expression code
    in their name (``KA.AN1.39.tiff``) instead of from a folder.
    """
    walker = _Walker(src, skips, exclude)
    top_dirs, loose = walker.entries(src)
    if not top_dirs and not loose:
        what = "contains no images" if walker.ignored else "is empty"
        raise FesaugError(
            f"{src} {what}; point SRC at the dataset folder (class folders, or split folders holding class folders)"
        )

    found: list[tuple[Path, str, str]] = []  # (file, canonical class, split)
    for split, label, folder in _known_classes(_class_dirs(src, top_dirs, skips, walker), skips, walker):
        files = walker.images_below(folder)
        if not files:
            skips(
                BadInput(str(folder), "empty class folder (no images); add images or remove the folder"),
                walker.rel(folder),
            )
        found += [(f, label, split) for f in files]
    for f in loose:
        if not jaffe:
            skips(
                BadInput(
                    str(f),
                    "image directly in SRC, not in a class folder; move it into a folder named after its class (or "
                    "use --preset jaffe for JAFFE file names)",
                ),
                walker.rel(f),
            )
            continue
        label = _jaffe_class(f, skips, walker)
        if label is not None:
            found.append((f, label, "train"))

    found.sort(key=lambda t: walker.rel(t[0]))
    rels = [walker.rel(f) for f, _, _ in found]
    items = []
    for sid, rel, (f, label, split) in zip(sample_ids(rels), rels, found):
        subject = None
        if subject_rx is not None:
            subject = subject_of(subject_rx, f.name)
            if subject is None:
                skips(BadInput(str(f), f"file name does not match the subject pattern {subject_rx.pattern!r}"), rel)
                continue
        items.append(
            Item(sample_id=sid, source_file=rel, where=str(f), label=label, split=split, subject_id=subject, path=f)
        )
    if not items and not skips.records:
        raise FesaugError(f"{src} contains no images in its class folders; point SRC at the dataset folder")
    return FolderScan(items=items, ignored=walker.ignored)


def _class_dirs(src: Path, top_dirs: list[Path], skips: Skips, walker: _Walker) -> list[tuple[str, Path]]:
    """(split, folder) of each class folder: the top folders themselves (split ``train``), or the
    folders inside split folders (``train/``, ``test/`` ...) when SRC holds those."""
    splits = {d: SPLITS.get(letters(d.name)) for d in top_dirs}
    if not any(splits.values()):
        return [("train", d) for d in top_dirs]
    others = sorted(d.name for d, s in splits.items() if s is None)
    if others:
        named = sorted(d.name for d, s in splits.items() if s is not None)
        raise FesaugError(
            f"{src} mixes split folders ({', '.join(named)}) with other folders ({', '.join(others)}); put "
            "every class folder inside a split folder"
        )
    class_dirs: list[tuple[str, Path]] = []
    for split_dir in top_dirs:
        sub_dirs, sub_loose = walker.entries(split_dir)
        class_dirs += [(splits[split_dir], d) for d in sub_dirs]
        for f in sub_loose:
            skips(
                BadInput(
                    str(f),
                    f"image directly in split folder {split_dir.name}/, not in a class folder; move it into a "
                    "folder named after its class",
                ),
                walker.rel(f),
            )
    return class_dirs


def _known_classes(class_dirs: list[tuple[str, Path]], skips: Skips, walker: _Walker) -> list[tuple[str, str, Path]]:
    """``(split, canonical class, folder)`` for each class folder; unknown names are one error
    listing them all (or skipped folder by folder)."""
    if skips.skip_bad:
        for _, d in class_dirs:
            if canonical_label(d.name) is None:
                skips(BadInput(str(d), f"unknown class name {d.name!r}"), walker.rel(d))
        class_dirs = [(s, d) for s, d in class_dirs if canonical_label(d.name) is not None]
    out = []
    # Per split: train/angry and test/anger are the same class, not a clash.
    for split in sorted({s for s, _ in class_dirs}):
        dirs = [d for s, d in class_dirs if s == split]
        where = str(dirs[0].parent)
        mapping = canonicalize([d.name for d in dirs], where=where)
        out += [(split, mapping[d.name], d) for d in dirs]
    return out


def _jaffe_class(path: Path, skips: Skips, walker: _Walker) -> str | None:
    m = _JAFFE.search(path.name)
    label = canonical_label(m.group("code")) if m else None
    if label is None:
        reason = (
            f"unknown JAFFE expression code {m.group('code')!r}"
            if m
            else "not a JAFFE file name like KA.AN1.39.tiff (subject.EXPRESSION<n>.<number>)"
        )
        skips(BadInput(str(path), reason), walker.rel(path))
    return label


# ---------------------------------------------------------------------------------------------
# FER2013 CSV


def match_au_labels(labels: AULabels, items: Sequence[Item], skips: Skips) -> dict[str, str]:
    """``{sample_id: side-file key}``. A key names an image by its path relative to SRC or, when
    only one image has that name, by its file name (so ``S005/001/x.png`` from CK+'s own tree also
    finds ``anger/x.png`` in CK+48). Keys matching nothing are one error, or skipped records."""
    by_path = {item.source_file: item for item in items}
    by_name: dict[str, list[Item]] = {}
    for item in items:
        by_name.setdefault(Path(item.source_file).name, []).append(item)
    # Images skipped as bad are recorded already: their labels are not a second problem.
    skipped = {r["file"] for r in skips.records} | {Path(r["file"]).name for r in skips.records}
    matched: dict[str, str] = {}
    bad: list[tuple[str, str]] = []  # (where, reason)
    for key, where in labels.where.items():
        found = by_path.get(key)
        if found is None:
            found = by_name.get(Path(key).name, [])
            if len(found) > 1:
                bad.append(
                    (
                        where,
                        f"{key!r} matches {len(found)} images ({', '.join(i.source_file for i in found[:3])}); "
                        "give its path relative to the source folder",
                    )
                )
                continue
            found = found[0] if found else None
        if found is None:
            if key not in skipped:
                bad.append((where, f"{key!r} matches no ingested image"))
        elif found.sample_id in matched:
            raise FesaugError(
                f"{where}: {key!r} and {matched[found.sample_id]!r} both label {found.source_file}; keep one entry "
                f"per image in {labels.path.name}"
            )
        else:
            matched[found.sample_id] = key
    if bad and not skips.skip_bad:
        shown = "; ".join(f"{where}: {reason}" for where, reason in bad[:3]) + (
            f"; and {len(bad) - 3} more" if len(bad) > 3 else ""
        )
        raise FesaugError(
            f"--au-labels {labels.path}: {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} without an image: {shown}. "
            "Keys are paths relative to the source folder (happy/a.png) or unique file names; fix them, or pass "
            "--skip-bad to record them"
        )
    for where, reason in bad:
        skips(BadInput(where, reason), where)
    return matched


def read_fer2013_csv(path: Path, *, skips: Skips) -> Iterator[Item]:
    """Rows of a FER2013-style CSV (``emotion``, ``pixels``, optional ``Usage``), one at a time."""
    stem = safe_stem(path.stem)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = _csv_columns(path, reader.fieldnames)
            for row in reader:
                line = reader.line_num
                where = f"{path} line {line}"
                try:
                    label, split, pixels = _parse_row(row, columns, where)
                except BadInput as exc:
                    skips(exc, f"csv:{line}")
                    continue
                yield Item(
                    sample_id=f"{stem}-{line:06d}",
                    source_file=f"csv:{line}",
                    where=where,
                    label=label,
                    split=split,
                    pixels=pixels,
                )
    except csv.Error as exc:
        raise FesaugError(f"{path} line {reader.line_num}: not valid CSV ({exc}); fix the file") from None
    except UnicodeDecodeError:
        raise FesaugError(f"{path} is not a UTF-8 text CSV; pass the FER2013 CSV file (emotion,pixels,Usage)") from None
    except OSError as exc:
        raise FesaugError(f"cannot read {path} ({exc.strerror or exc})") from None


def _csv_columns(path: Path, header: list[str] | None) -> dict[str, str]:
    """The header's spelling of ``emotion``, ``pixels`` and (optionally) ``usage``."""
    if not header:
        raise FesaugError(f"{path} is empty; a FER2013 CSV starts with the header emotion,pixels,Usage")
    by_key = {h.strip().lower(): h for h in header}
    missing = [c for c in ("emotion", "pixels") if c not in by_key]
    if missing:
        raise FesaugError(
            f"{path} line 1: missing column(s) {', '.join(missing)} (header: {','.join(header)}); a FER2013 CSV "
            "has emotion,pixels[,Usage]"
        )
    return {c: by_key[c] for c in ("emotion", "pixels", "usage") if c in by_key}


def _parse_row(row: dict, columns: dict[str, str], where: str) -> tuple[str, str, np.ndarray]:
    values = {c: row.get(h) for c, h in columns.items()}
    for c, v in values.items():
        if v is None or not v.strip():
            raise BadInput(where, f"missing {columns[c]!r} value")
    try:
        emotion = int(values["emotion"])
    except ValueError:
        raise BadInput(where, f"emotion {values['emotion']!r} is not an integer") from None
    if not 0 <= emotion < len(FER2013_CLASSES):
        codes = ", ".join(f"{i}={c}" for i, c in enumerate(FER2013_CLASSES))
        raise BadInput(where, f"emotion {emotion} is outside 0-{len(FER2013_CLASSES) - 1} ({codes})")
    split = "train"
    if "usage" in values:
        split = SPLITS.get(letters(values["usage"]))
        if split is None:
            raise BadInput(where, f"Usage {values['usage']!r} is not Training, PublicTest or PrivateTest")
    try:
        pixels = np.array(values["pixels"].split(), dtype=np.int64)
    except (ValueError, OverflowError):
        raise BadInput(where, "pixels must be space-separated integers 0-255") from None
    side = math.isqrt(pixels.size)
    if side * side != pixels.size:
        raise BadInput(where, f"{pixels.size} pixel values do not make a square image (48x48 needs 2304)")
    if pixels.min() < 0 or pixels.max() > 255:
        raise BadInput(where, "pixel values must be integers 0-255")
    return FER2013_CLASSES[emotion], split, pixels.astype(np.uint8).reshape(side, side)
