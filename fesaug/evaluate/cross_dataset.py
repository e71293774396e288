"""The split of ``fesaug evaluate --test-manifest B``: train on all of one dataset (A, the
``--manifest``), test on all of another (B).

:func:`read_test_data` reads B: a manifest, or a folder of class folders that
:func:`fesaug.data.ingest.ingest` turns into one (each image its own subject unless a subject
pattern reads ids from the file names). :func:`cross_split` checks the pair, and
:meth:`CrossSplit.write` joins it into one manifest, the *input* of the evaluation's single split:
every row of A in split ``train`` (A's folds and splits are not used; ``fesaug evaluate`` carves
validation subjects from A's subjects as it does from a k-fold training set) and B's rows of the
classes A knows in split ``test``, the only rows held out. From there the k-fold machinery runs
as it is (:mod:`fesaug.evaluate.run`, one split with no held-out fold).

The checks, each one clear error before anything is written:

* B holds real images only: a test on synthetic faces says nothing about real ones;
* no subject id and no image file is in both: that face would be trained and tested on;
* at least one class is in both. A's other classes are trained but not tested; B's other rows
  are left out of the test (the protocol counts them).

The image paths of both are rebased onto one image root, the folder both lie under, so the input
references the images in place like any manifest. Images of any size are resized to the
downstream classifier's size when they are decoded.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from fesaug.data.ingest import ingest
from fesaug.data.manifest import COLUMNS, Manifest, read_manifest, relative_image_root, write_manifest
from fesaug.utils.errors import FesaugError, UsageError
from fesaug.utils.files import file_sha256

# B's sample ids get this prefix in the input, so they cannot collide with A's.
TEST_ID_PREFIX = "test:"
# How many subject ids or files an error names before "and N more".
SHOWN = 5


@dataclass(frozen=True)
class TestData:
    """B as given: a manifest, or a folder ingested into one (``source`` is what was named)."""

    manifest: Manifest
    source: Path
    subject_pattern: str | None = None

    @property
    def is_folder(self) -> bool:
        return self.source.is_dir()

    def record(self) -> dict[str, Any]:
        """What ``evaluate.json`` keeps of B to tell a resumed run from another test set: the
        manifest file's digest, or for a folder the digest of its rows (an ingest writes the
        time into the footer, so two ingests of one folder differ as files)."""
        if not self.is_folder:
            return {"manifest_sha256": file_sha256(self.source)}
        rows = [
            [r.sample_id, r.label_name, None if pd.isna(r.subject_id) else str(r.subject_id), r.sha256]
            for r in self.manifest.df.itertuples()
        ]
        return {"folder_rows_sha256": hashlib.sha256(json.dumps(rows).encode()).hexdigest()}

    def keep_at(self, path: Path) -> TestData:
        """A folder's manifest written at ``path`` (the evaluation's own copy, which the results
        name); its images stay where they are. A manifest given as such is used where it is."""
        if not self.is_folder:
            return self
        if path.exists():  # an earlier run's copy of the same rows is kept as it was written
            kept = dataclasses.replace(self, manifest=read_manifest(path))
            if kept.record() == self.record():
                return kept
        m = self.manifest
        meta = {k: v for k, v in m.meta.items() if k not in ("schema_version", "classes", "image_root")}
        write_manifest(
            m.df, path, classes=m.classes, meta=meta, image_root=relative_image_root(path, m.image_root), overwrite=True
        )
        return dataclasses.replace(self, manifest=read_manifest(path))


@contextlib.contextmanager
def read_test_data(source: str | os.PathLike, subject_pattern: str | None = None) -> Iterator[TestData]:
    """B: the manifest at ``source``, or the class folders at ``source`` ingested (in place, into a
    temporary manifest that lasts for the block; :meth:`TestData.keep_at` keeps it). Without
    ``subject_pattern`` a folder's images have no subject ids: each is its own subject."""
    source = Path(source)
    if not source.is_dir():
        if subject_pattern is not None:
            raise UsageError(
                "--test-subject-pattern reads subject ids from the file names of a --test-manifest folder; "
                f"{source} is a manifest, which has its own"
            )
        yield TestData(read_manifest(source), source)
        return
    with tempfile.TemporaryDirectory(prefix="fesaug-test-data-") as tmp:
        ingested = ingest(source, Path(tmp) / "test-manifest.parquet", subject_pattern=subject_pattern)
        yield TestData(read_manifest(ingested.manifest), source, subject_pattern)


@dataclass(frozen=True)
class CrossSplit:
    """A (``train``) and B (``test``), checked by :func:`cross_split`."""

    train: Manifest
    test: TestData
    scored: list[str]  # in both, with test images: the classes the test scores cover
    not_tested: list[str]  # A's classes without a test image
    excluded: dict[str, int]  # B's classes that A lacks, and their images (left out of the test)
    root: Path  # where both manifests' images lie

    def test_rows(self) -> pd.DataFrame:
        b = self.test.manifest.df
        return b[b["label_name"].isin(self.scored)]

    def describe(self) -> dict[str, Any]:
        """The data side of the protocol (digests are the caller's: it has them already)."""
        rows = self.test_rows()
        unnamed = int(rows["subject_id"].isna().sum())
        test = {
            "path": str(self.test.source),
            "kind": "folder" if self.test.is_folder else "manifest",
            "classes": _present(self.test.manifest),
            "n_images": int(len(rows)),
            "n_subjects": int(rows["subject_id"].nunique()) + unnamed,
            "n_without_subject_id": unnamed,
        }
        if self.test.is_folder:
            test |= {"manifest": str(self.test.manifest.path), "subject_pattern": self.test.subject_pattern}
        return {
            "train_manifest": str(self.train.path),
            "test": test,
            "scored_classes": self.scored,
            "not_tested": self.not_tested,
            "excluded_from_test": self.excluded,
        }

    def write(self, path: Path) -> Path:
        """The input of the evaluation's split at ``path``: A's rows in ``train``, B's scored rows in
        ``test`` (labels in A's class order, sample ids prefixed with :data:`TEST_ID_PREFIX`)."""
        a, classes = self.train, self.train.classes
        train = a.df.assign(split="train", fold=None)
        train["image"] = _rebased(train["image"], a.image_root, self.root)
        # B's own extra columns (AU labels in another AU order, demo parameters) would be read as
        # A's: the test rows carry the core columns only.
        test = self.test_rows()[list(COLUMNS)].copy()
        test["sample_id"] = TEST_ID_PREFIX + test["sample_id"].astype(str)
        test["label"] = [classes.index(c) for c in test["label_name"]]
        test["split"], test["fold"] = "test", None
        test["image"] = _rebased(test["image"], self.test.manifest.image_root, self.root)
        meta = {**a.inherited_meta(), "cross_dataset": self.describe()}
        return write_manifest(
            pd.concat([train, test], ignore_index=True),
            path,
            classes=classes,
            meta=meta,
            image_root=relative_image_root(path, self.root),
            overwrite=True,
        )


def cross_split(a: Manifest, b: TestData) -> CrossSplit:
    """Check that A and B can be trained and tested on (module docstring) and say which classes
    the test scores; raises one :class:`FesaugError` naming the problem and its fix."""
    where = b.source
    bdf = b.manifest.df
    synthetic = int((bdf["origin"] != "real").sum())
    if synthetic:
        raise FesaugError(
            f"{where} has {synthetic} synthetic row(s); the test data must be real images "
            "(pass the manifest of real images it was balanced from, or ingest a folder of real images)"
        )
    present = _present(b.manifest)
    scored = [c for c in a.classes if c in present]
    if not scored:
        raise FesaugError(
            f"no class in common: {a.path} has {', '.join(a.classes)}; {where} has {', '.join(present)}; "
            "nothing could be scored (fesaug ingest reads common spellings of the expression names)"
        )
    both = sorted(set(a.df["subject_id"].dropna().astype(str)) & set(bdf["subject_id"].dropna().astype(str)))
    if both:
        raise FesaugError(
            f"subject id(s) {_some(both)} are in both {a.path} and {where}: those faces would be trained and "
            "tested on. If they are other people, give one dataset distinct ids (re-ingest it with another "
            "subject pattern); if the same, test on data without them"
        )
    same = bdf[bdf["sha256"].isin(set(a.df["sha256"]))]
    if len(same):
        raise FesaugError(
            f"{len(same)} image(s) of {where} are identical to images of {a.path} "
            f"({_some(same['sample_id'].astype(str).tolist())}): the test would score training images; "
            "remove them from one dataset"
        )
    try:
        root = Path(os.path.commonpath([a.image_root.resolve(), b.manifest.image_root.resolve()]))
    except ValueError:  # two Windows drives
        raise FesaugError(
            f"the images of {a.path} and {where} share no folder (another drive?); ingest one of them with --embed"
        ) from None
    excluded = {c: int((bdf["label_name"] == c).sum()) for c in present if c not in a.classes}
    return CrossSplit(a, b, scored, [c for c in a.classes if c not in scored], excluded, root)


def _present(m: Manifest) -> list[str]:
    """The manifest's classes that have rows, in its class order."""
    counts = m.df["label_name"].value_counts()
    return [c for c in m.classes if counts.get(c, 0)]


def _rebased(images: pd.Series, image_root: Path, root: Path) -> list[dict[str, Any]]:
    """Image paths relative to ``image_root`` made relative to ``root``, a folder above it."""
    prefix = PurePosixPath(Path(os.path.relpath(image_root.resolve(), root)).as_posix())
    return [image if image.get("path") is None else {**image, "path": str(prefix / image["path"])} for image in images]


def _some(names: list[str]) -> str:
    more = len(names) - SHOWN
    return ", ".join(names[:SHOWN]) + (f" and {more} more" if more > 0 else "")
