"""The manifest: one Parquet file, one row per image, real and synthetic alike.

The format (schema version 2) is documented for users in ``manifests/README.md``; this module is
its single implementation. Every manifest is written by :func:`write_manifest` (atomically, and
validated before it is written) and read by :func:`read_manifest` (validated again), so a file
that one fesaug command accepts, every other command accepts too.

The ``image`` column is a struct of ``bytes`` and ``path``, the storage Hugging Face's ``Image``
feature uses. ``path`` is relative to the manifest's *image root*: the manifest's own folder
unless the footer names another (``image_root``), which is how a manifest references a
read-only dataset in place instead of copying it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from fesaug.data.images import CHANNELS, KINDS, BadImage, decode_image
from fesaug.utils.errors import FesaugError
from fesaug.utils.files import atomic_path
from fesaug.utils.records import SCHEMA_KEY, RecordType, fill_missing, rename_keys

SCHEMA_VERSION = 2
META_KEY = b"fesaug"
HF_KEY = b"huggingface"
ORIGINS = ("real", "synthetic")

IMAGE_TYPE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])

# Column -> (Arrow type, nullable). The order is the order in the file.
COLUMNS: dict[str, tuple[pa.DataType, bool]] = {
    "sample_id": (pa.string(), False),
    "image": (IMAGE_TYPE, False),
    "label": (pa.int64(), False),
    "label_name": (pa.string(), False),
    "subject_id": (pa.string(), True),
    "fold": (pa.int64(), True),
    "split": (pa.string(), False),
    "origin": (pa.string(), False),
    "parent_id": (pa.string(), True),
    "source_label": (pa.int64(), True),
    "generator": (pa.string(), True),
    "seed": (pa.int64(), True),
    "confidence": (pa.float32(), True),
    "width": (pa.int32(), False),
    "height": (pa.int32(), False),
    "sha256": (pa.string(), False),
}
# Optional columns: absent, or present with these types. Any other extra column is kept as is.
OPTIONAL_COLUMNS: dict[str, tuple[pa.DataType, bool]] = {
    "source_file": (pa.string(), True),  # the original file, relative to the ingested folder
    "au_intensity": (pa.list_(pa.float32()), True),  # aligned with metadata "au_ids"; 0..1
    "au_occurrence": (pa.list_(pa.int8()), True),  # 0/1 per AU in "au_ids"
    # How much a row counts when sampling or in the loss (fesaug balance --synthetic-share /
    # --synthetic-weight); absent or null: 1.
    "weight": (pa.float64(), True),
    # fesaug balance --synthetic-labels soft: the share of a synthetic row's label on its target
    # class, the rest on its source_label; absent or null: 1 (a hard label). Synthetic rows only.
    "target_mass": (pa.float32(), True),
    # ingest --align: the face box the landmarks came from, the eye line's tilt (degrees,
    # counter-clockwise) and the eye distance (pixels) found in the source image
    "align_box": (pa.string(), True),
    "align_angle": (pa.float32(), True),
    "align_eye_distance": (pa.float32(), True),
}
# Columns a writer may leave out: they are filled with their default.
_DEFAULTS = {
    "subject_id": None,
    "fold": None,
    "split": "train",
    "origin": "real",
    "parent_id": None,
    "source_label": None,
    "generator": None,
    "seed": None,
    "confidence": None,
}


@dataclass
class Manifest:
    """A validated manifest: its rows, its class list and its footer metadata."""

    path: Path
    df: pd.DataFrame
    meta: dict = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return list(self.meta["classes"])

    @property
    def channels(self) -> int:
        """How many channels every image decodes to: 1 (gray) or 3 (RGB); the footer's ``channels``."""
        return int(self.meta["channels"])

    def check_channels(self, channels: int, model: str) -> None:
        """One clear error unless ``model`` (a checkpoint, named for the message), which takes
        images of ``channels``, can read this manifest's images."""
        if channels != self.channels:
            raise FesaugError(
                f"{model} was trained on {KINDS[channels]} images, but {self.path} holds {KINDS[self.channels]} "
                f"ones; use a model trained on {KINDS[self.channels]} images, or ingest the dataset again with "
                f"{'--grayscale' if channels == 1 else '--color'}"
            )

    @property
    def image_root(self) -> Path:
        return resolve_image_root(self.path, self.meta.get("image_root", "."))

    def inherited_meta(self) -> dict:
        """The footer keys a manifest derived from this one carries over (AU ids, folds, ...):
        everything but what the writer sets itself (schema, classes, image root, provenance)."""
        return {
            k: v for k, v in self.meta.items() if k not in ("schema_version", "classes", "image_root", "provenance")
        }

    def balanced_rows(self) -> np.ndarray | None:
        """For the output of ``fesaug balance``, whether each row is one the run balanced (real or
        synthetic); the others (other splits, held-out folds) are in the manifest unchanged.
        None for any other manifest."""
        run = self.meta.get("balance")
        if not isinstance(run, dict) or "splits" not in run:
            return None
        return working_set(self.df, run["splits"], run.get("holdout_folds") or [])

    def __len__(self) -> int:
        return len(self.df)

    def image_location(self, i: int) -> str:
        """Where row ``i``'s image is, for messages."""
        image = self.df["image"].iat[i]
        if image.get("bytes") is not None:
            return f"{self.path} (row {i}, embedded image {image.get('path') or ''})".replace(" )", ")")
        return str(self.image_root / image["path"])

    def image_bytes(self, i: int) -> bytes:
        """Row ``i``'s encoded image: the embedded bytes, else the referenced file's content."""
        image = self.df["image"].iat[i]
        if image.get("bytes") is not None:
            return image["bytes"]
        file = self.image_root / image["path"]
        try:
            return file.read_bytes()
        except OSError as exc:
            raise BadImage(str(file), f"missing or unreadable image file ({exc.strerror or exc})") from None

    def open_image(self, i: int) -> Image.Image:
        """Row ``i``'s image at the manifest's :attr:`channels`: 8-bit gray (``L``) or ``RGB``."""
        return decode_image(self.image_bytes(i), where=self.image_location(i), channels=self.channels)


# Names older versions recorded for the held-out fold(s) -> today's: BalanceConfig.exclude_folds
# (a balance plan.json, an evaluate.json), the balance footer's excluded_folds, a checkpoint's or
# split record's heldout_folds, evaluate's split.parquet footer test_fold. Every record's migration
# to the version that began today's names reads them as today's.
HOLDOUT_RENAMES = {
    "exclude_folds": "holdout_folds",
    "excluded_folds": "holdout_folds",
    "heldout_folds": "holdout_folds",
    "test_fold": "holdout_fold",
}


def _footer_v1_to_v2(footer: dict[str, Any]) -> dict[str, Any]:
    """Version 1 footers may name the held-out folds as older fesaug did (the balance section's
    ``excluded_folds``, an evaluation split's ``test_fold``, ...): read at the top level and in
    the sections that recorded them as today's. Version 2 added ``channels``; every version 1
    manifest is gray (fesaug decoded every image to gray then)."""
    out = fill_missing(rename_keys(footer, HOLDOUT_RENAMES), {"channels": 1})
    for section in ("balance", "evaluation"):
        if isinstance(out.get(section), Mapping):
            out[section] = rename_keys(out[section], HOLDOUT_RENAMES)
    return out


# The footer (the ``fesaug`` key of the Parquet metadata; :mod:`fesaug.utils.records`). Manifests
# carried a schema version from the start: a footer without one is not a fesaug manifest.
FOOTER = RecordType("manifest footer", SCHEMA_VERSION, {1: _footer_v1_to_v2}, first=1)


def working_set(df: pd.DataFrame, splits: Sequence[str], holdout_folds: Sequence[int]) -> np.ndarray:
    """Whether each row is in one of ``splits`` and outside ``holdout_folds`` (a row without a
    fold is outside every fold): the rows ``fesaug balance`` counts and balances."""
    folds = df["fold"].to_numpy(dtype=float, na_value=np.nan)
    return df["split"].isin(list(splits)).to_numpy(dtype=bool) & ~np.isin(folds, list(holdout_folds))


def resolve_image_root(manifest_path: str | os.PathLike, image_root: str) -> Path:
    root = Path(image_root)
    return root if root.is_absolute() else (Path(manifest_path).parent / root)


def relative_image_root(manifest_path: str | os.PathLike, folder: str | os.PathLike) -> str:
    """``folder`` as the footer's ``image_root``: relative to the manifest when possible, so a
    dataset and its manifest can move together."""
    try:
        return Path(os.path.relpath(Path(folder).resolve(), Path(manifest_path).resolve().parent)).as_posix()
    except ValueError:  # another drive on Windows
        return str(Path(folder).resolve())


def _check_relative_path(path: str, where: str) -> None:
    p = PurePosixPath(path)
    if path.startswith(("/", "\\")) or p.is_absolute() or (len(path) > 1 and path[1] == ":"):
        raise FesaugError(
            f"{where}: image path {path!r} is absolute; manifest paths must be relative to the image root"
        )
    if ".." in p.parts or "\\" in path:
        raise FesaugError(f"{where}: image path {path!r} escapes the image root; rewrite it without '..'")


def huggingface_features(classes: Sequence[str], schema: pa.Schema, channels: int = 1) -> dict:
    """The ``huggingface`` footer key: ``datasets`` then loads ``image`` as Image and ``label`` as
    ClassLabel instead of a plain struct and integer; a colour manifest's images decode as RGB."""
    features: dict[str, dict] = {}
    for f in schema:
        if f.name == "image":
            features[f.name] = {"_type": "Image", **({"mode": "RGB"} if channels == 3 else {})}
        elif f.name == "label":
            features[f.name] = {"names": list(classes), "_type": "ClassLabel"}
        elif pa.types.is_list(f.type):
            features[f.name] = {"feature": {"dtype": _hf_dtype(f.type.value_type), "_type": "Value"}, "_type": "List"}
        else:
            features[f.name] = {"dtype": _hf_dtype(f.type), "_type": "Value"}
    return {"info": {"features": features}}


def _hf_dtype(t: pa.DataType) -> str:
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_binary(t):
        return "binary"
    return {"float": "float32", "double": "float64"}.get(str(t), str(t))  # int64, int32, int8 ...


def _none_if_missing(value: object) -> object:
    # pandas spells "missing" as None, NaN, NaT or pd.NA depending on the dtype; Arrow wants None.
    if isinstance(value, (list, tuple, dict, np.ndarray, bytes)):
        return list(value) if isinstance(value, np.ndarray) else value
    return None if pd.isna(value) else value


def _check_target_mass(table: pa.Table, ids: Sequence[str], where: str) -> None:
    """A soft label's mass is a share in [0, 1], on synthetic rows only, with a class to put the rest on."""
    mass = table.column("target_mass").to_numpy(zero_copy_only=False).astype(np.float64)
    given = ~np.isnan(mass)
    bad = np.flatnonzero(given & ~((mass >= 0) & (mass <= 1)))
    if bad.size:
        raise FesaugError(
            f"{where}: row {bad[0]} ({ids[bad[0]]}) has target_mass {mass[bad[0]]}; it must lie in [0, 1] (null: 1)"
        )
    real = np.asarray(table.column("origin").to_pylist()) == "real"
    bad = np.flatnonzero(given & real)
    if bad.size:
        raise FesaugError(
            f"{where}: real row {bad[0]} ({ids[bad[0]]}) has a target_mass; only synthetic rows carry soft labels"
        )
    no_source = np.asarray([v is None for v in table.column("source_label").to_pylist()])
    bad = np.flatnonzero(given & (mass < 1) & no_source)
    if bad.size:
        raise FesaugError(
            f"{where}: row {bad[0]} ({ids[bad[0]]}) has target_mass {mass[bad[0]]} but no source_label to put the "
            "rest of its label on"
        )


def _to_table(df: pd.DataFrame, extra_cols: Sequence[str]) -> pa.Table:
    arrays, fields = [], []
    for name, (typ, _) in {**COLUMNS, **{c: OPTIONAL_COLUMNS[c] for c in extra_cols if c in OPTIONAL_COLUMNS}}.items():
        values = [_none_if_missing(v) for v in df[name].tolist()]
        try:
            arrays.append(pa.array(values, type=typ))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as exc:
            raise FesaugError(f"manifest column {name!r} cannot be stored as {typ}: {exc}") from None
        # Arrow-level nullability stays on: Hugging Face matches its features only against
        # nullable fields. Required values are enforced by _validate instead.
        fields.append(pa.field(name, typ))
    for name in extra_cols:
        if name in OPTIONAL_COLUMNS:
            continue
        arr = pa.array([_none_if_missing(v) for v in df[name].tolist()])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields))


def write_manifest(
    df: pd.DataFrame,
    path: str | os.PathLike,
    *,
    classes: Sequence[str],
    meta: dict | None = None,
    image_root: str = ".",
    overwrite: bool = False,
) -> Path:
    """Validate ``df`` and write it atomically as a manifest at ``path``.

    ``label_name`` is derived from ``label`` when absent; nullable provenance columns default to
    null and ``split``/``origin`` to ``train``/``real``. ``meta`` is stored in the footer next to
    the schema version, the classes and the image root; its ``channels`` (1: gray, 3: RGB) says
    what every image decodes to, 1 when ``meta`` does not say.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FesaugError(f"{path} already exists; pass --overwrite to replace it or choose another --out")
    if path.exists() and path.is_dir():
        raise FesaugError(f"{path} is a folder; give a file name ending in .parquet")
    df = df.copy()
    classes = list(classes)
    if "label_name" not in df.columns and "label" in df.columns:
        df["label_name"] = [classes[int(v)] if 0 <= int(v) < len(classes) else None for v in df["label"]]
    for col, default in _DEFAULTS.items():
        if col not in df.columns:
            df[col] = default
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise FesaugError(f"cannot write manifest {path}: missing column(s) {', '.join(missing)}")
    extra = [c for c in df.columns if c not in COLUMNS]
    table = _to_table(df, extra)
    footer = FOOTER.stamp({"channels": 1, **(meta or {}), "classes": classes, "image_root": image_root})
    _validate(table, footer, where=str(path))
    table = table.replace_schema_metadata(
        {
            META_KEY: json.dumps(footer, sort_keys=True, default=str).encode(),
            HF_KEY: json.dumps(huggingface_features(classes, table.schema, footer["channels"])).encode(),
        }
    )
    embedded = any(b is not None for b in table.column("image").combine_chunks().field("bytes").to_pylist()[:1])
    with atomic_path(path, overwrite=True) as tmp:
        pq.write_table(table, tmp, row_group_size=1000 if embedded else None, compression="zstd")
    return path


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Read and validate a manifest; every problem is one clear :class:`FesaugError`."""
    path = Path(path)
    if not path.exists():
        raise FesaugError(f"manifest {path} does not exist; create one with `fesaug ingest` or `fesaug demo-data`")
    if path.is_dir():
        raise FesaugError(
            f"{path} is a folder, not a manifest; pass the .parquet file (e.g. {path / 'manifest.parquet'})"
        )
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise FesaugError(
            f"{path} is not a readable Parquet file ({exc}); it may be truncated or not a manifest — re-create it"
        ) from None
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise FesaugError(
            f"{path} is a Parquet file but not a fesaug manifest (no 'fesaug' footer metadata); create it with "
            "`fesaug ingest`"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise FesaugError(f"{path}: the 'fesaug' footer metadata is not valid JSON; re-create the manifest") from None
    meta = _read_footer(meta, where=str(path))
    _validate(table, meta, where=str(path))
    df = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}.get)
    return Manifest(path=path, df=df, meta=meta)


def _type_ok(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected:
        return True
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):
        return pa.types.is_integer(actual)
    if pa.types.is_floating(expected):
        return pa.types.is_floating(actual)
    if pa.types.is_struct(expected):
        names = {actual.field(i).name for i in range(actual.num_fields)} if pa.types.is_struct(actual) else set()
        return names == {"bytes", "path"}
    if pa.types.is_list(expected):
        return (pa.types.is_list(actual) or pa.types.is_large_list(actual)) and _type_ok(
            actual.value_type, expected.value_type
        )
    return False


def _read_footer(meta: Any, *, where: str) -> dict[str, Any]:
    """The footer at today's schema version (:data:`FOOTER`); one clear error for anything else."""
    version = meta.get(SCHEMA_KEY) if isinstance(meta, dict) else None
    if version is None or FOOTER.version_of(meta) < FOOTER.first:  # no version, or one that never existed
        raise FesaugError(
            f"{where}: unsupported manifest schema version {version!r} (this fesaug reads versions "
            f"{FOOTER.first} to {SCHEMA_VERSION}); re-create the manifest"
        )
    return FOOTER.read(meta, where=where)


def _validate(table: pa.Table, meta: dict, *, where: str) -> None:
    classes = meta.get("classes")
    if (
        not isinstance(classes, list)
        or not classes
        or not all(isinstance(c, str) for c in classes)
        or len(set(classes)) != len(classes)
    ):
        raise FesaugError(
            f"{where}: footer 'classes' must be a non-empty list of distinct names; re-create the manifest"
        )
    if meta.get("channels") not in CHANNELS or isinstance(meta.get("channels"), bool):
        raise FesaugError(
            f"{where}: footer 'channels' must be 1 (gray) or 3 (RGB), got {meta.get('channels')!r}; re-create the "
            "manifest"
        )
    schema = table.schema
    missing = [c for c in COLUMNS if c not in schema.names]
    if missing:
        raise FesaugError(f"{where}: missing column(s) {', '.join(missing)}; this is not a complete fesaug manifest")
    for name, (expected, nullable) in {**COLUMNS, **OPTIONAL_COLUMNS}.items():
        if name not in schema.names:
            continue
        actual = schema.field(name).type
        if not _type_ok(actual, expected):
            raise FesaugError(
                f"{where}: column {name!r} has type {actual}, expected {expected}; re-create the manifest"
            )
        if not nullable and table.column(name).null_count:
            raise FesaugError(
                f"{where}: column {name!r} has {table.column(name).null_count} null value(s); every row needs one"
            )
    if table.num_rows == 0:
        return
    ids = table.column("sample_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = pd.Series(ids)[pd.Series(ids).duplicated()].iloc[0]
        raise FesaugError(f"{where}: sample_id {dup!r} appears more than once; sample ids must be unique")
    labels = np.asarray(table.column("label").to_pylist())
    bad = np.flatnonzero((labels < 0) | (labels >= len(classes)))
    if bad.size:
        raise FesaugError(
            f"{where}: row {bad[0]} has label {labels[bad[0]]}, outside 0..{len(classes) - 1} ({len(classes)} classes)"
        )
    names = table.column("label_name").to_pylist()
    for i, (lab, name) in enumerate(zip(labels, names)):
        if classes[lab] != name:
            raise FesaugError(
                f"{where}: row {i} has label {lab} ({classes[lab]!r}) but label_name {name!r}; they must agree"
            )
    origins = set(table.column("origin").to_pylist())
    if not origins <= set(ORIGINS):
        raise FesaugError(
            f"{where}: column 'origin' has {sorted(origins - set(ORIGINS))}; allowed values are {', '.join(ORIGINS)}"
        )
    if "weight" in schema.names:
        weights = table.column("weight").to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(~(np.isnan(weights) | ((weights >= 0) & np.isfinite(weights))))
        if bad.size:
            raise FesaugError(
                f"{where}: row {bad[0]} ({ids[bad[0]]}) has weight {weights[bad[0]]}; weights must be "
                "finite and >= 0 (null: 1)"
            )
    if "target_mass" in schema.names:
        _check_target_mass(table, ids, where)
    image = table.column("image").combine_chunks()
    paths, blobs = image.field("path").to_pylist(), image.field("bytes").is_null().to_pylist()
    for i, (p, no_bytes) in enumerate(zip(paths, blobs)):
        if p is None and no_bytes:
            raise FesaugError(f"{where}: row {i} ({ids[i]}) has neither image bytes nor an image path")
        if p is not None:
            _check_relative_path(p, f"{where} row {i}")
