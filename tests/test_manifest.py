"""The manifest contract: what writers must produce and what every reader can rely on."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fesaug.data.manifest import COLUMNS, SCHEMA_VERSION, read_manifest, write_manifest
from fesaug.utils.errors import FesaugError

from .conftest import png_bytes


def _rewrite(src: Path, dst: Path, table: pa.Table | None = None, meta: dict | None = None) -> Path:
    """Copy a manifest, changing its table or its fesaug footer, bypassing the writer's checks."""
    original = pq.read_table(src)
    table = original if table is None else table
    md = dict(original.schema.metadata)
    if meta is not None:
        md[b"fesaug"] = json.dumps(meta).encode()
    pq.write_table(table.replace_schema_metadata(md), dst)
    return dst


def test_round_trip_keeps_rows_types_and_footer(small_manifest: Path) -> None:
    m = read_manifest(small_manifest)
    assert len(m) == 4 and m.classes == ["anger", "happy"]
    assert list(m.df.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert m.df["label_name"].tolist() == ["anger", "happy", "anger", "happy"]
    assert m.df["origin"].unique().tolist() == ["real"] and m.df["split"].unique().tolist() == ["train"]
    assert m.meta["schema_version"] == SCHEMA_VERSION
    schema = pq.read_schema(small_manifest)
    assert schema.field("label").type == pa.int64()
    assert schema.field("image").type == pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def test_images_resolve_from_bytes_and_paths(small_manifest: Path) -> None:
    m = read_manifest(small_manifest)
    assert m.image_bytes(0) == png_bytes(0)  # embedded
    assert m.image_bytes(3) == png_bytes(3)  # on disk, relative to the manifest
    assert m.open_image(3).mode == "L" and m.open_image(3).size == (16, 16)


def test_huggingface_footer_declares_image_and_classlabel(small_manifest: Path) -> None:
    hf = json.loads(pq.read_schema(small_manifest).metadata[b"huggingface"])
    features = hf["info"]["features"]
    assert features["image"] == {"_type": "Image"}
    assert features["label"] == {"names": ["anger", "happy"], "_type": "ClassLabel"}
    assert set(features) == set(pq.read_schema(small_manifest).names)


def test_loads_in_huggingface_datasets_as_image_and_classlabel(small_manifest: Path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.chdir(small_manifest.parent)  # datasets resolves relative image paths from the cwd
    ds = datasets.load_dataset(
        "parquet", data_files=str(small_manifest), split="train", cache_dir=str(small_manifest.parent / "hf")
    )
    assert isinstance(ds.features["image"], datasets.Image)
    assert ds.features["label"].names == ["anger", "happy"]
    assert ds[3]["image"].size == (16, 16) and ds[1]["label"] == 1


def test_loads_in_duckdb_and_pyarrow_dataset(small_manifest: Path) -> None:
    import pyarrow.dataset as pads

    assert pads.dataset(small_manifest).to_table(columns=["label"]).num_rows == 4
    duckdb = pytest.importorskip("duckdb")
    rows = duckdb.sql(f"SELECT label_name, count(*) FROM '{small_manifest}' GROUP BY 1 ORDER BY 1").fetchall()
    assert rows == [("anger", 2), ("happy", 2)]


def test_refuses_to_overwrite_without_flag(small_manifest: Path) -> None:
    df = read_manifest(small_manifest).df
    with pytest.raises(FesaugError, match="--overwrite"):
        write_manifest(df, small_manifest, classes=["anger", "happy"])
    write_manifest(df.iloc[:1], small_manifest, classes=["anger", "happy"], overwrite=True)
    assert len(read_manifest(small_manifest)) == 1


def test_failed_write_leaves_previous_file_and_no_temp(small_manifest: Path) -> None:
    before = small_manifest.read_bytes()
    bad = read_manifest(small_manifest).df.assign(label=7)
    with pytest.raises(FesaugError, match="label 7"):
        write_manifest(bad, small_manifest, classes=["anger", "happy"], overwrite=True)
    assert small_manifest.read_bytes() == before
    assert [p.name for p in small_manifest.parent.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda t, m: (t.drop_columns(["sha256"]), m), "missing column"),
        (
            lambda t, m: (t.set_column(t.schema.get_field_index("label"), "label", pa.array(["a"] * 4)), m),
            "column 'label' has type string",
        ),
        (lambda t, m: (t, {**m, "schema_version": 99}), "schema version 99.*upgrade fesaug"),
        (lambda t, m: (t, {**m, "classes": []}), "classes"),
        (
            lambda t, m: (t.set_column(0, "sample_id", pa.array(["a", "a", "b", "c"])), m),
            "sample_id 'a' appears more than once",
        ),
        (
            lambda t, m: (
                t.set_column(t.schema.get_field_index("origin"), "origin", pa.array(["real", "fake", "real", "real"])),
                m,
            ),
            "origin",
        ),
        (
            lambda t, m: (
                t.set_column(t.schema.get_field_index("label_name"), "label_name", pa.array(["happy"] * 4)),
                m,
            ),
            "label_name",
        ),
    ],
)
def test_validator_rejects(small_manifest: Path, tmp_path: Path, change, message: str) -> None:
    table, meta = change(pq.read_table(small_manifest), read_manifest(small_manifest).meta)
    bad = _rewrite(small_manifest, tmp_path / "bad.parquet", table, meta)
    with pytest.raises(FesaugError, match=message):
        read_manifest(bad)


@pytest.mark.parametrize("path", ["../outside.png", "/etc/passwd", "a/../../b.png", "C:\\x.png"])
def test_validator_rejects_paths_escaping_the_root(small_manifest: Path, tmp_path: Path, path: str) -> None:
    table = pq.read_table(small_manifest)
    image = pa.array([{"bytes": None, "path": path}] * 4, type=table.schema.field("image").type)
    bad = _rewrite(small_manifest, tmp_path / "bad.parquet", table.set_column(1, "image", image))
    with pytest.raises(FesaugError, match="absolute|escapes"):
        read_manifest(bad)


def test_unreadable_inputs_are_clear_errors(small_manifest: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(small_manifest.read_bytes()[: small_manifest.stat().st_size // 2])
    with pytest.raises(FesaugError, match="not a readable Parquet file"):
        read_manifest(truncated)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.table({"x": [1]}), plain)
    with pytest.raises(FesaugError, match="not a fesaug manifest"):
        read_manifest(plain)
    with pytest.raises(FesaugError, match="does not exist"):
        read_manifest(tmp_path / "nope.parquet")
    with pytest.raises(FesaugError, match="is a folder"):
        read_manifest(tmp_path)


def test_writer_fills_defaults_and_keeps_extra_columns(tmp_path: Path) -> None:
    df = pd.DataFrame(
        {
            "sample_id": ["a"],
            "image": [{"bytes": png_bytes(), "path": None}],
            "label": [1],
            "width": [16],
            "height": [16],
            "sha256": ["x"],
            "note": ["kept"],
        }
    )
    m = read_manifest(write_manifest(df, tmp_path / "m.parquet", classes=["fear", "happy"], meta={"k": "v"}))
    row = m.df.iloc[0]
    assert (row["label_name"], row["split"], row["origin"]) == ("happy", "train", "real")
    assert pd.isna(row["fold"]) and row["note"] == "kept" and m.meta["k"] == "v"


def _as_version_1(src: Path, dst: Path, **footer: object) -> Path:
    """``src`` with its footer as version 1 wrote it (``schema_version`` 1), plus ``footer``."""
    meta = {**read_manifest(src).meta, **footer, "schema_version": 1}
    original = pq.read_table(src)
    md = dict(original.schema.metadata)
    md[b"fesaug"] = json.dumps(meta, sort_keys=True, default=str).encode()  # as version 1's writer encoded it
    pq.write_table(original.replace_schema_metadata(md), dst)
    return dst


def test_a_version_1_footer_reads_as_today(small_manifest: Path, tmp_path: Path) -> None:
    # As today's writer and `fesaug balance` made it: schema 1, the held-out folds under today's name.
    balance = {"splits": ["train"], "holdout_folds": [1]}
    today = read_manifest(_as_version_1(small_manifest, tmp_path / "v1.parquet", balance=balance, holdout_folds=[1]))
    assert today.meta["schema_version"] == SCHEMA_VERSION == 2
    assert today.meta["balance"] == {"splits": ["train"], "holdout_folds": [1]} and today.meta["holdout_folds"] == [1]
    assert today.balanced_rows().tolist() == [True, True, False, False]
    # As older versions named them: the balance section's excluded_folds, an evaluation split's test_fold.
    older = _as_version_1(
        small_manifest,
        tmp_path / "older.parquet",
        balance={"splits": ["train"], "excluded_folds": [1]},
        excluded_folds=[1],
        evaluation={"test_fold": 0, "seed": 0},
    )
    m = read_manifest(older)
    assert m.meta["balance"] == {"splits": ["train"], "holdout_folds": [1]} and m.meta["holdout_folds"] == [1]
    assert m.meta["evaluation"] == {"holdout_fold": 0, "seed": 0} and "excluded_folds" not in m.meta
    assert m.balanced_rows().tolist() == [True, True, False, False]
    assert m.df.equals(read_manifest(small_manifest).df)
    # Written again, it is today's version with today's names.
    again = read_manifest(write_manifest(m.df, tmp_path / "again.parquet", classes=m.classes, meta=m.inherited_meta()))
    raw = json.loads(pq.read_schema(tmp_path / "again.parquet").metadata[b"fesaug"])
    assert raw["schema_version"] == 2 and raw["balance"]["holdout_folds"] == [1] and "excluded_folds" not in raw
    assert again.meta["balance"] == m.meta["balance"]


@pytest.mark.parametrize("version", [None, 0, "1", True])
def test_a_footer_without_a_known_schema_version_is_not_a_manifest(
    small_manifest: Path, tmp_path: Path, version: object
) -> None:
    meta = {k: v for k, v in read_manifest(small_manifest).meta.items() if k != "schema_version"}
    if version is not None:
        meta["schema_version"] = version
    bad = _rewrite(small_manifest, tmp_path / "bad.parquet", meta=meta)
    message = r"unsupported manifest schema version .* \(this fesaug reads versions 1 to 2\); re-create"
    with pytest.raises(FesaugError, match=message):
        read_manifest(bad)


def test_the_footer_records_the_channels(small_manifest: Path, tmp_path: Path) -> None:
    m = read_manifest(small_manifest)
    assert m.channels == 1 and m.meta["channels"] == 1  # a writer that does not say writes gray
    # Version 1 knew only gray images: its footers read as channels 1.
    old = {k: v for k, v in m.meta.items() if k != "channels"} | {"schema_version": 1}
    assert read_manifest(_rewrite(small_manifest, tmp_path / "v1.parquet", meta=old)).channels == 1
    colour = write_manifest(m.df, tmp_path / "c.parquet", classes=m.classes, meta={"channels": 3})
    c = read_manifest(colour)
    assert c.channels == 3 and c.open_image(0).mode == "RGB" and m.open_image(0).mode == "L"
    # Derived manifests carry the channels over.
    again = write_manifest(c.df, tmp_path / "d.parquet", classes=c.classes, meta=c.inherited_meta())
    assert read_manifest(again).channels == 3
    for bad in (2, "3", True, None):
        with pytest.raises(FesaugError, match="footer 'channels' must be 1 \\(gray\\) or 3 \\(RGB\\)"):
            read_manifest(_rewrite(small_manifest, tmp_path / "bad.parquet", meta={**m.meta, "channels": bad}))


def test_a_model_for_other_channels_is_refused(small_manifest: Path) -> None:
    m = read_manifest(small_manifest)
    m.check_channels(1, "model.pt")
    with pytest.raises(FesaugError) as info:
        m.check_channels(3, "model.pt")
    assert str(info.value) == (
        f"model.pt was trained on colour (RGB) images, but {small_manifest} holds gray ones; use a model trained "
        "on gray images, or ingest the dataset again with --color"
    )
