"""`fesaug export`: the ImageFolder tree, its metadata, filters, and refusing to clobber folders."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from fesaug.data.export import export
from fesaug.data.images import sha256_bytes
from fesaug.data.manifest import write_manifest
from fesaug.utils.errors import FesaugError

from .conftest import cli_in_process as cli
from .conftest import png_bytes, run_cli

ROWS = [  # sample_id, label, split, fold, origin
    ("r0", 0, "train", 0, "real"),
    ("r1", 1, "train", 0, "real"),
    ("r2", 0, "train", 1, "real"),
    ("r3", 1, "validation", 1, "real"),
    ("s0", 1, "train", 0, "synthetic"),
    ("n0", 0, "test", None, "real"),
]


def _manifest(
    tmp_path: Path,
    rows: list[tuple] = ROWS,
    classes: tuple[str, ...] = ("anger", "happy"),
    images: dict[str, bytes] | None = None,
) -> Path:
    """Embedded PNGs (or ``images[sample_id]``) for ``rows``; written as tmp_path/m.parquet."""
    records = []
    for seed, (sid, label, split, fold, origin) in enumerate(rows):
        data = (images or {}).get(sid, png_bytes(seed, size=8))
        records.append(
            {
                "sample_id": sid,
                "image": {"bytes": data, "path": None},
                "label": label,
                "split": split,
                "fold": fold,
                "origin": origin,
                "subject_id": "P0",
                "width": 8,
                "height": 8,
                "sha256": sha256_bytes(data),
                **({"parent_id": "r0", "generator": "g", "seed": 0} if origin == "synthetic" else {}),
            }
        )
    return write_manifest(pd.DataFrame(records), tmp_path / "m.parquet", classes=list(classes), overwrite=True)


def _tree(out: Path) -> list[str]:
    return sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_tree_layout_counts_and_png_bytes(small_manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "exp"
    code, stdout, _ = cli(capsys, "export", small_manifest, "--out", out)
    assert code == 0
    assert stdout.strip() == f"exported 4 images (2 classes) to {out}"
    assert _tree(out) == ["anger/s0.png", "anger/s2.png", "classes.json", "export.json", "happy/s1.png", "happy/s3.png"]
    for i, path in enumerate(["anger/s0.png", "happy/s1.png", "anger/s2.png", "happy/s3.png"]):
        assert (out / path).read_bytes() == png_bytes(i)  # embedded and on-disk PNGs copied byte for byte
    assert json.loads((out / "export.json").read_text())["counts"] == {
        "anger": {"real": 2, "synthetic": 0},
        "happy": {"real": 2, "synthetic": 0},
    }
    assert _leftovers(tmp_path) == []  # the staging folder was renamed into place


def test_imagefolder_targets_map_back_to_manifest_labels(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    torchvision = pytest.importorskip("torchvision")
    # Label order that ImageFolder's alphabetical indexing gets wrong, plus a class without images.
    classes = ("neutral", "anger", "surprise", "happy")
    rows = [
        ("a", 0, "train", 0, "real"),
        ("b", 1, "train", 0, "real"),
        ("c", 3, "train", 0, "real"),
        ("d", 0, "train", 0, "real"),
    ]
    out = tmp_path / "exp"
    code, _, err = cli(capsys, "export", _manifest(tmp_path, rows, classes), "--out", out)
    assert code == 0
    assert "ImageFolder indexes classes alphabetically" in err and "no images for surprise" in err
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(classes)  # the empty class too

    order = json.loads((out / "classes.json").read_text())
    assert order == list(classes)
    ds = torchvision.datasets.ImageFolder(out, allow_empty=True)
    labels = {Path(path).stem: order.index(ds.classes[target]) for path, target in ds.samples}
    assert labels == {sid: label for sid, label, *_ in rows}
    assert ds[0][0].size == (8, 8)


def _encoded(fmt: str, **params: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8), 200, dtype=np.uint8)).save(buf, format=fmt, **params)
    return buf.getvalue()


def test_pngs_are_copied_and_other_formats_reencoded(tmp_path: Path) -> None:
    # A PNG that re-encoding would change (fast compression level), so only a byte copy keeps it.
    png = _encoded("PNG", compress_level=1)
    rows = [("jpeg", 0, "train", 0, "real"), ("png", 1, "train", 0, "real")]
    out = tmp_path / "exp"
    export(_manifest(tmp_path, rows, images={"jpeg": _encoded("JPEG"), "png": png}), out)
    assert (out / "happy" / "png.png").read_bytes() == png
    with Image.open(out / "anger" / "jpeg.png") as img:
        assert img.format == "PNG" and img.size == (8, 8)


def test_unsafe_ids_are_replaced(tmp_path: Path) -> None:
    rows = [("cam/1:a", 0, "train", 0, "real"), (".hidden", 1, "train", 0, "real"), ("..", 1, "train", 0, "real")]
    out = tmp_path / "exp"
    export(_manifest(tmp_path, rows), out)
    assert _tree(out) == ["anger/cam_1_a.png", "classes.json", "export.json", "happy/_..png", "happy/_hidden.png"]


def test_ids_that_collide_after_replacement_are_an_error(tmp_path: Path) -> None:
    rows = [("a/b", 0, "train", 0, "real"), ("A:b", 0, "train", 0, "real")]
    with pytest.raises(FesaugError, match=r"'a/b' and 'A:b' would both be exported as anger/A_b.png"):
        export(_manifest(tmp_path, rows), tmp_path / "exp")
    assert not (tmp_path / "exp").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), {"r0", "r1", "r2", "r3", "s0", "n0"}),
        (("--split", "train"), {"r0", "r1", "r2", "s0"}),
        (("--split", "train", "--split", "validation"), {"r0", "r1", "r2", "r3", "s0"}),
        (("--fold", "0"), {"r0", "r1", "s0"}),  # a row without a fold matches no --fold
        (("--exclude-fold", "0"), {"r2", "r3", "n0"}),  # ... and is kept by --exclude-fold
        (("--origin", "synthetic"), {"s0"}),
        (("--split", "train", "--fold", "1"), {"r2"}),
        (("--origin", "real", "--exclude-fold", "1"), {"r0", "r1", "n0"}),
    ],
)
def test_filters_combine_with_and(tmp_path: Path, capsys: pytest.CaptureFixture, args: tuple, expected: set) -> None:
    out = tmp_path / "exp"
    code, stdout, _ = cli(capsys, "export", _manifest(tmp_path), "--out", out, *args)
    assert code == 0 and stdout.startswith(f"exported {len(expected)} images (2 classes)")
    assert {p.stem for p in out.glob("*/*.png")} == expected


def test_no_matching_rows_says_what_the_manifest_has(tmp_path: Path) -> None:
    result = run_cli("export", _manifest(tmp_path), "--out", tmp_path / "exp", "--split", "test", "--fold", "7")
    assert result.returncode == 1 and result.stdout == "" and "Traceback" not in result.stderr
    assert result.stderr.strip() == (
        "Error: no rows match --split test --fold 7; the manifest has splits test, train, "
        "validation, folds 0, 1, origins real, synthetic"
    )
    assert not (tmp_path / "exp").exists()


def test_unknown_origin_and_missing_manifest_are_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = cli(capsys, "export", _manifest(tmp_path), "--out", tmp_path / "exp", "--origin", "fake")
    assert code == 2 and err.strip() == "Error: unknown --origin fake; choose real or synthetic"
    code, _, err = cli(capsys, "export", tmp_path / "nope.parquet", "--out", tmp_path / "exp")
    assert code == 1 and err.startswith("Error: manifest ") and len(err.strip().splitlines()) == 1


def test_unreadable_image_names_the_row_and_leaves_nothing(small_manifest: Path, tmp_path: Path) -> None:
    (tmp_path / "images" / "img2.png").write_bytes(b"not an image")
    with pytest.raises(FesaugError, match=r"row 2 \(s2\): .*img2.png: not an image"):
        export(small_manifest, tmp_path / "exp")
    assert not (tmp_path / "exp").exists() and _leftovers(tmp_path) == []


def test_existing_output_needs_overwrite_and_only_replaces_an_export(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest, out = _manifest(tmp_path), tmp_path / "exp"
    out.mkdir()
    assert cli(capsys, "export", manifest, "--out", out, "--origin", "synthetic")[0] == 0  # an empty OUT is fine
    code, _, err = cli(capsys, "export", manifest, "--out", out)
    assert code == 1 and "is not empty; pass --overwrite" in err
    assert _tree(out) == ["classes.json", "export.json", "happy/s0.png"]

    assert cli(capsys, "export", manifest, "--out", out, "--overwrite", "--fold", "1")[0] == 0
    assert _tree(out) == ["anger/r2.png", "classes.json", "export.json", "happy/r3.png"]  # s0 is gone

    (out / "notes.txt").write_text("mine")
    code, _, err = cli(capsys, "export", manifest, "--out", out, "--overwrite")
    assert code == 1 and "holds notes.txt, which fesaug export did not write" in err
    assert _tree(out) == ["anger/r2.png", "classes.json", "export.json", "happy/r3.png", "notes.txt"]

    # An export that fails half-way (r3 comes after r0..r2) leaves the earlier tree in place.
    (out / "notes.txt").unlink()
    with pytest.raises(FesaugError, match=r"row 3 \(r3\)"):
        export(_manifest(tmp_path, images={"r3": b"junk"}), out, overwrite=True)
    assert _tree(out) == ["anger/r2.png", "classes.json", "export.json", "happy/r3.png"]
    assert _leftovers(tmp_path) == []


def test_overwrite_refuses_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    out = tmp_path / "photos"
    (out / "anger").mkdir(parents=True)  # looks like a class folder, but no export.json lists it
    with pytest.raises(FesaugError, match="holds anger, which fesaug export did not write"):
        export(_manifest(tmp_path), out, overwrite=True)
    assert [p.name for p in out.iterdir()] == ["anger"]


def test_export_json_records_source_sha256_and_balance_folders_are_accepted(tmp_path: Path) -> None:
    run = tmp_path / "balanced"
    run.mkdir()
    _manifest(tmp_path).rename(run / "manifest.parquet")
    result = export(run, tmp_path / "exp", origins=["real"], exclude_folds=[1])
    record = json.loads((tmp_path / "exp" / "export.json").read_text())
    assert record["source"] == {
        "manifest": str((run / "manifest.parquet").resolve()),
        "sha256": hashlib.sha256((run / "manifest.parquet").read_bytes()).hexdigest(),
    }
    assert record["filters"] == {"split": [], "fold": [], "exclude-fold": [1], "origin": ["real"]}
    assert record["counts"] == {"anger": {"real": 2, "synthetic": 0}, "happy": {"real": 1, "synthetic": 0}}
    assert record["total"] == result.total == 3
    assert record["provenance"]["tool"] == "export" and record["provenance"]["config"]["filters"] == record["filters"]


def _rgb_png(seed: int, **save: object) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", **save)
    return buf.getvalue()


def test_a_colour_manifest_exports_rgb_pngs_and_a_gray_one_gray(tmp_path: Path) -> None:
    rows = [("c0", 0, "train", 0, "real"), ("c1", 1, "train", 0, "real"), ("g0", 1, "train", 0, "real")]
    images = {"c0": _rgb_png(0, compress_level=1), "c1": _encoded("JPEG"), "g0": png_bytes(3, size=8)}
    source = _manifest(tmp_path, rows, images=images)
    colour = write_manifest(
        pd.read_parquet(source).assign(image=[{"bytes": images[r[0]], "path": None} for r in rows]),
        tmp_path / "colour.parquet",
        classes=["anger", "happy"],
        meta={"channels": 3},
    )
    export(colour, tmp_path / "rgb")
    assert (tmp_path / "rgb" / "anger" / "c0.png").read_bytes() == images["c0"]  # already RGB: copied
    for name in ("anger/c0.png", "happy/c1.png", "happy/g0.png"):
        with Image.open(tmp_path / "rgb" / name) as img:
            assert img.mode == "RGB", name  # the gray file too: the manifest reads it as RGB
    assert json.loads((tmp_path / "rgb" / "export.json").read_text())["channels"] == 3
    export(source, tmp_path / "gray")  # the same files in a gray manifest
    for name in ("anger/c0.png", "happy/c1.png", "happy/g0.png"):
        with Image.open(tmp_path / "gray" / name) as img:
            assert img.mode == "L", name
    assert (tmp_path / "gray" / "happy" / "g0.png").read_bytes() == images["g0"]
    assert json.loads((tmp_path / "gray" / "export.json").read_text())["channels"] == 1
