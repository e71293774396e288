"""Hugging Face ``datasets`` in and out (the ``hf`` extra: ``pip install 'fesaug[hf]'``).

* In: ``fesaug ingest SRC --format hf`` reads a dataset saved with ``save_to_disk`` (a
  ``Dataset`` or a ``DatasetDict`` of splits), or a local folder ``datasets.load_dataset`` reads
  (Parquet, Arrow, CSV/JSON or image files), with an image column and a label column
  (:func:`read_hf_dataset`). Class names (a ``ClassLabel``'s names, or the strings of a string
  column) are mapped to fesaug's canonical names as folder names are.
* Out: :func:`to_hf_dataset` turns a manifest into a ``datasets.Dataset`` with ``Image()`` and
  ``ClassLabel`` features that opens from any working directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa

from fesaug.data.images import MODES
from fesaug.data.labels import canonical_label, canonicalize
from fesaug.data.manifest import Manifest, read_manifest
from fesaug.data.sources import SPLITS, BadInput, Item, Skips, letters, safe_stem
from fesaug.utils.errors import FesaugError

EXTRA = "hf"


def require_datasets(what: str) -> ModuleType:
    """The ``datasets`` package, or one :class:`FesaugError` line saying how to install it."""
    try:
        import datasets
    except ImportError:
        raise FesaugError(
            f"{what} needs the Hugging Face 'datasets' package, which is not installed: pip install 'fesaug[{EXTRA}]'"
        ) from None
    return datasets


# ---------------------------------------------------------------------------------------------
# out


def to_hf_dataset(manifest: Manifest | str | os.PathLike, *, embed_images: bool = False) -> Any:
    """The manifest as a ``datasets.Dataset``: ``image`` (an ``Image()`` feature), ``label`` (a
    ``ClassLabel`` with the manifest's class names) and every other column of the manifest
    (``sample_id``, ``subject_id``, ``fold``, ``split``, ``origin``, and for synthetic rows
    ``parent_id``, ``source_label``, ``generator``, ``seed``, ``confidence``, …).

    Images decode as the manifest reads them, gray (``L``) or ``RGB`` (its ``channels``).
    Images referenced by path get absolute paths, so the dataset opens from any working
    directory; ``embed_images`` copies their bytes in instead (a self-contained dataset for
    ``save_to_disk`` or ``push_to_hub``). The manifest's footer (provenance, balance settings) is
    kept as JSON in ``dataset.info.description``. Example::

        ds = fesaug.to_hf_dataset("balanced/manifest.parquet")
        ds = ds.filter(lambda split: split == "train", input_columns="split")
        ds.features["label"].int2str(ds[0]["label"]), ds[0]["image"]  # 'anger', a PIL image
    """
    datasets = require_datasets("fesaug.to_hf_dataset")
    m = manifest if isinstance(manifest, Manifest) else read_manifest(manifest)
    root = m.image_root.resolve()
    images = []
    for i, image in enumerate(m.df["image"].tolist()):
        if image.get("bytes") is not None:
            images.append({"bytes": image["bytes"], "path": image.get("path")})
        elif embed_images:
            images.append({"bytes": m.image_bytes(i), "path": image["path"]})
        else:
            images.append({"bytes": None, "path": str(root / image["path"])})
    df = m.df.assign(image=images)
    # pandas hands strings to Arrow as large_string; the manifest stores (and HF expects) string.
    schema = pa.Table.from_pandas(df.drop(columns=["image"]), preserve_index=False).schema.remove_metadata()
    schema = pa.schema([f.with_type(pa.string()) if pa.types.is_large_string(f.type) else f for f in schema])
    features = datasets.Features.from_arrow_schema(schema)
    features["label"] = datasets.ClassLabel(names=m.classes)
    features["image"] = datasets.Image(mode=MODES[m.channels])  # decoded at the manifest's channels
    info = datasets.DatasetInfo(
        description=json.dumps({"fesaug_manifest": str(m.path), "fesaug": m.meta}, default=str),
        features=datasets.Features({c: features[c] for c in df.columns}),  # the manifest's column order
    )
    return datasets.Dataset.from_pandas(df, info=info, preserve_index=False)


# ---------------------------------------------------------------------------------------------
# in


@dataclass(frozen=True)
class HFColumns:
    """Which columns of a Hugging Face dataset ``fesaug ingest --format hf`` reads. ``subject``
    and ``split`` are optional; without ``split`` the ``DatasetDict``'s split names are used
    (a single ``Dataset`` is all ``train``). A ``sample_id`` column, when present, names the rows
    (as :func:`to_hf_dataset` writes it); otherwise they are ``<split>-<row>``."""

    image: str = "image"
    label: str = "label"
    subject: str | None = None
    split: str | None = None


def load_hf_splits(src: Path) -> dict[str, Any]:
    """``{split name: datasets.Dataset}`` of the dataset saved in, or loadable from, ``src``."""
    datasets = require_datasets("fesaug ingest --format hf")
    if not src.is_dir():
        raise FesaugError(
            f"{src} is not a folder; --format hf reads a folder written by Dataset.save_to_disk, or a local folder "
            "datasets.load_dataset reads (Parquet, Arrow, CSV/JSON or image files)"
        )
    saved = (src / "dataset_dict.json").exists() or (src / "state.json").exists()
    try:
        loaded = datasets.load_from_disk(str(src)) if saved else datasets.load_dataset(str(src))
    except Exception as exc:  # datasets raises many types (FileNotFoundError, ValueError, its own)
        raise FesaugError(
            f"cannot read {src} as a Hugging Face dataset ({type(exc).__name__}: {str(exc).splitlines()[0]}); pass "
            "a folder written by save_to_disk, or one load_dataset reads"
        ) from None
    return {"train": loaded} if isinstance(loaded, datasets.Dataset) else dict(loaded)


def read_hf_dataset(src: Path, columns: HFColumns, *, skips: Skips) -> tuple[Iterator[Item], int]:
    """The rows of the Hugging Face dataset at ``src`` as ingest :class:`Item` records (their
    encoded image bytes in ``data``), and how many rows there are. Columns and class names are
    checked before any image is read."""
    splits = load_hf_splits(src)
    plans = [_plan_split(src, name, dset, columns, skips) for name, dset in splits.items()]
    return _items(plans, columns, skips), sum(len(p.dataset) for p in plans)


@dataclass
class _Split:
    name: str  # the DatasetDict's name for it
    split: str | None  # fesaug's split for all its rows (None: from the split column)
    dataset: Any  # datasets.Dataset with the image column undecoded
    names: dict[Any, str | None]  # raw label value -> canonical class (None: unknown, skipped)
    where: str


def _plan_split(src: Path, name: str, dset: Any, columns: HFColumns, skips: Skips) -> _Split:
    import datasets

    where = f"{src} (split {name!r})"
    wanted = list(dict.fromkeys(c for c in (columns.image, columns.label, columns.subject, columns.split) if c))
    missing = [c for c in wanted if c not in dset.column_names]
    if missing:
        raise FesaugError(
            f"{where} has no column {missing[0]!r}; its columns are {', '.join(dset.column_names)} (name them with "
            "--image-column, --label-column, --subject-column, --split-column)"
        )
    if not isinstance(dset.features[columns.image], datasets.Image):
        raise FesaugError(
            f"{where}: column {columns.image!r} holds {dset.features[columns.image]}, not images; name the image "
            "column with --image-column"
        )
    split = None
    if columns.split is None:
        split = SPLITS.get(letters(name))
        if split is None:
            raise FesaugError(
                f"{where}: split name {name!r} is not a train, validation or test split; rename it, or name a column "
                "holding each row's split with --split-column"
            )
    # Only the columns read, and the images undecoded: ingest decodes each one itself.
    dset = dset.select_columns(wanted + (["sample_id"] if "sample_id" in dset.column_names else []))
    dset = dset.cast_column(columns.image, datasets.Image(decode=False))
    return _Split(name, split, dset, _label_names(dset, columns.label, where, skips), where)


def _label_names(dset: Any, column: str, where: str, skips: Skips) -> dict[Any, str | None]:
    """Raw label value -> canonical class name, for the values the column holds."""
    import datasets

    feature = dset.features[column]
    values = sorted(set(dset[column]) - {None})
    if isinstance(feature, datasets.ClassLabel):
        raw = {v: feature.int2str(v) for v in values}
    elif isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string"):
        raw = {v: v for v in values}
    else:
        raise FesaugError(
            f"{where}: label column {column!r} holds {feature}, which names no classes; give it class names "
            f"(dataset.cast_column({column!r}, ClassLabel(names=[...]))) or name another column with --label-column"
        )
    if skips.skip_bad:  # unknown names: their rows are skipped one by one
        return {v: canonical_label(name) for v, name in raw.items()}
    mapping = canonicalize(sorted(set(raw.values())), where=f"{where} column {column!r}")
    return {v: mapping[name] for v, name in raw.items()}


def _items(plans: list[_Split], columns: HFColumns, skips: Skips) -> Iterator[Item]:
    for plan in plans:
        for i, row in enumerate(plan.dataset):
            where = f"{plan.where} row {i}"
            source = f"hf:{plan.name}/{i}"
            try:
                yield _item(plan, row, i, where, source, columns)
            except BadInput as exc:
                skips(exc, source)


def _item(plan: _Split, row: dict[str, Any], i: int, where: str, source: str, columns: HFColumns) -> Item:
    raw = row[columns.label]
    if raw is None:
        raise BadInput(where, f"no label in column {columns.label!r}")
    label = plan.names[raw]
    if label is None:
        raise BadInput(where, f"unknown class name {raw!r}")
    split = plan.split
    if split is None:
        value = row[columns.split]
        split = SPLITS.get(letters(str(value))) if value is not None else None
        if split is None:
            raise BadInput(where, f"split {value!r} in column {columns.split!r} is not train, validation or test")
    image = row[columns.image] or {}
    data = image.get("bytes")
    if data is None and image.get("path"):
        try:
            data = Path(image["path"]).read_bytes()
        except OSError as exc:
            raise BadInput(where, f"image file {image['path']} cannot be read ({exc.strerror or exc})") from None
    if data is None:
        raise BadInput(where, f"no image in column {columns.image!r}")
    subject = row[columns.subject] if columns.subject is not None else None
    sample_id = row.get("sample_id")
    return Item(
        sample_id=safe_stem(sample_id) if isinstance(sample_id, str) else f"{plan.name}-{i:06d}",
        source_file=source,
        where=where,
        label=label,
        split=split,
        subject_id=None if subject is None else str(subject),
        data=data,
    )
