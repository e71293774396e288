"""Integrity checks behind ``fesaug audit``: each function finds one family of dataset problems.

A :class:`Problem` is something a user should look at before training: a broken image, identity
leakage between folds or splits, synthetic rows whose provenance does not hold up. Checks report;
they never raise for a problem in the data, so one audit lists everything at once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pandas as pd

from fesaug.data.images import BadImage, decode_image, sha256_bytes
from fesaug.data.manifest import Manifest
from fesaug.utils.errors import FesaugError

# How many sample ids (or subjects, groups...) a problem lists; its ``count`` gives the full number.
EXAMPLES = 10


@dataclass
class Problem:
    """One kind of problem. ``count`` counts what ``message`` counts (rows, subjects, duplicate
    groups or classes); ``sample_ids`` are the first affected rows; ``details`` holds kind-specific
    lists (``subjects``, ``groups``, ``classes``, ``generators``)."""

    kind: str
    message: str
    count: int
    sample_ids: list[str]
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "message": self.message,
            "count": self.count,
            "sample_ids": self.sample_ids,
            **self.details,
        }


def column(df: pd.DataFrame, name: str) -> list:
    """A column as Python values with every missing value as None (pandas uses NaN or pd.NA)."""
    return [None if pd.isna(v) else v for v in df[name].tolist()]


def _ids(ids: list[str], rows: list[int]) -> list[str]:
    return [ids[i] for i in rows[:EXAMPLES]]


def empty_classes(totals: Mapping[str, int]) -> Problem | None:
    empty = [name for name, n in totals.items() if n == 0]
    if not empty:
        return None
    return Problem(
        "empty_class",
        f"{len(empty)} class(es) have no images ({', '.join(empty)}); a classifier cannot learn them "
        "and the imbalance ratio is undefined — add images or drop the class",
        len(empty),
        [],
        {"classes": empty},
    )


def duplicate_images(m: Manifest) -> Problem | None:
    """Rows whose stored sha256 is the same: one image counted twice, possibly under two labels.
    Uses the hashes recorded at ingest, so it runs without reading images; files changed since
    then are reported as ``hash_mismatch``."""
    ids = m.df["sample_id"].tolist()
    groups: dict[str, list[str]] = {}
    for sid, digest in zip(ids, m.df["sha256"].tolist()):
        groups.setdefault(digest, []).append(sid)
    dups = [g for g in groups.values() if len(g) > 1]
    if not dups:
        return None
    rows = sum(len(g) for g in dups)
    return Problem(
        "duplicate_image",
        f"{rows} rows hold only {len(dups)} distinct image(s) (identical bytes), e.g. {', '.join(dups[0][:3])}; "
        "duplicates inflate their class and can sit on both sides of a split — keep one of each",
        len(dups),
        [sid for g in dups for sid in g][:EXAMPLES],
        {"groups": dups[:EXAMPLES]},
    )


def subject_spread(m: Manifest, by: str) -> Problem | None:
    """Subjects with images in more than one fold (``by="fold"``) or split (``by="split"``): the
    same face on both sides of an evaluation. Synthetic rows count too, since they show their
    parent's face."""
    ids, subjects, values = m.df["sample_id"].tolist(), column(m.df, "subject_id"), column(m.df, by)
    seen: dict[str, set] = {}
    for subject, value in zip(subjects, values):
        if subject is not None and value is not None:
            seen.setdefault(subject, set()).add(value)
    leaking = sorted(s for s, vs in seen.items() if len(vs) > 1)
    if not leaking:
        return None
    bad = set(leaking)
    rows = [i for i, s in enumerate(subjects) if s in bad]
    first = leaking[0]
    return Problem(
        f"subject_in_multiple_{by}s",
        f"{len(leaking)} subject(s) have images in more than one {by}, e.g. {first} in {by}s "
        f"{', '.join(map(str, sorted(seen[first])))}; that is identity leakage between training and test — "
        f"re-assign {by}s by subject",
        len(leaking),
        _ids(ids, rows),
        {"subjects": leaking[:EXAMPLES]},
    )


def synthetic_provenance(m: Manifest) -> list[Problem]:
    """Synthetic rows without provenance, with a parent that is not in the manifest, with a parent
    of another subject or fold, or placed in the test split."""
    df = m.df
    ids, parents, generators = df["sample_id"].tolist(), column(df, "parent_id"), column(df, "generator")
    subjects, folds, splits = column(df, "subject_id"), column(df, "fold"), column(df, "split")
    synthetic = [i for i, origin in enumerate(df["origin"].tolist()) if origin == "synthetic"]
    index = {sid: i for i, sid in enumerate(ids)}

    no_provenance = [i for i in synthetic if parents[i] is None or generators[i] is None]
    orphans = [i for i in synthetic if parents[i] is not None and parents[i] not in index]
    mismatched = [
        i
        for i in synthetic
        if parents[i] in index and (subjects[i], folds[i]) != (subjects[index[parents[i]]], folds[index[parents[i]]])
    ]
    in_test = [i for i in synthetic if splits[i] == "test"]

    problems = []
    if no_provenance:
        problems.append(
            Problem(
                "synthetic_without_provenance",
                f"{len(no_provenance)} synthetic row(s) lack a parent_id or generator, e.g. {ids[no_provenance[0]]}; "
                "their origin cannot be traced — drop them or regenerate them with provenance",
                len(no_provenance),
                _ids(ids, no_provenance),
            )
        )
    if orphans:
        i = orphans[0]
        problems.append(
            Problem(
                "synthetic_parent_missing",
                f"{len(orphans)} synthetic row(s) name a parent_id that is not in the manifest, e.g. {ids[i]} -> "
                f"{parents[i]}; their real image is gone — drop or regenerate them",
                len(orphans),
                _ids(ids, orphans),
            )
        )
    if mismatched:
        i = mismatched[0]
        p = index[parents[i]]
        problems.append(
            Problem(
                "synthetic_parent_mismatch",
                f"{len(mismatched)} synthetic row(s) differ from their parent in subject_id or fold, e.g. {ids[i]} "
                f"(subject {subjects[i]}, fold {folds[i]}) vs parent {ids[p]} (subject {subjects[p]}, fold "
                f"{folds[p]}); "
                "a synthetic image must stay with its parent's subject and fold",
                len(mismatched),
                _ids(ids, mismatched),
            )
        )
    if in_test:
        problems.append(
            Problem(
                "synthetic_in_test",
                f"{len(in_test)} synthetic row(s) are in the test split, e.g. {ids[in_test[0]]}; "
                "evaluate on real images only — move them to train or drop them",
                len(in_test),
                _ids(ids, in_test),
            )
        )
    return problems


def generator_leakage(m: Manifest) -> Problem | None:
    """Synthetic rows made by a generator that saw held-out faces during its training.

    Reads the footer key ``generator_training`` = ``{generator: {"folds": [...], "subjects":
    [...]}}`` (written by the balance command) and ``holdout_folds`` (a list of folds). Held-out
    subjects are those with rows in split ``test`` or in a holdout fold. A generator leaks when its
    training subjects include a held-out subject or its training folds include a holdout fold.
    Manifests without ``generator_training`` are not checked.
    """
    training = m.meta.get("generator_training")
    if not training:
        return None
    if not isinstance(training, dict) or not all(isinstance(v, dict) for v in training.values()):
        raise FesaugError(
            f"{m.path}: footer 'generator_training' must map each generator to "
            "{'folds': [...], 'subjects': [...]}; re-create the manifest"
        )
    df = m.df
    holdout_folds = set(m.meta.get("holdout_folds") or [])
    subjects, folds, splits = column(df, "subject_id"), column(df, "fold"), column(df, "split")
    held_out = {
        s for s, f, sp in zip(subjects, folds, splits) if s is not None and (sp == "test" or f in holdout_folds)
    }
    leaky: dict[str, list] = {}
    for generator, seen in training.items():
        leaked = sorted(held_out & set(map(str, seen.get("subjects") or [])))
        leaked += [f"fold {f}" for f in sorted(holdout_folds & set(seen.get("folds") or []))]
        if leaked:
            leaky[generator] = leaked
    ids, generators = df["sample_id"].tolist(), column(df, "generator")
    rows = [i for i, (o, g) in enumerate(zip(df["origin"].tolist(), generators)) if o == "synthetic" and g in leaky]
    if not rows:
        return None
    first = generators[rows[0]]
    return Problem(
        "generator_saw_test_subjects",
        f"{len(rows)} synthetic row(s) come from generator(s) trained on held-out faces, e.g. {first} saw "
        f"{', '.join(leaky[first][:3])}; their images carry test identities into training — "
        "retrain the generator without the held-out folds",
        len(rows),
        _ids(ids, rows),
        {"generators": sorted({generators[i] for i in rows})},
    )


def image_problems(m: Manifest, *, workers: int | None = None) -> list[Problem]:
    """Read every image once (embedded bytes or file): missing files, undecodable bytes, and bytes
    that no longer match the sha256 stored at ingest. File reads run in a thread pool; they
    dominate for images on disk, and PIL decodes with the GIL released."""
    stored = m.df["sha256"].tolist()

    def scan(i: int) -> tuple[str, str] | None:
        try:
            data = m.image_bytes(i)
        except BadImage as exc:
            return "missing_image", f"{exc.where} ({exc.reason})"
        try:
            # Only a failure needs the location; formatting it for every row measurably slows big audits.
            decode_image(data, where="", channels=m.channels)
        except BadImage as exc:
            return "unreadable_image", f"{m.image_location(i)} ({exc.reason})"
        if sha256_bytes(data) != stored[i]:
            return "hash_mismatch", m.image_location(i)
        return None

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(scan, range(len(m))))
    ids = m.df["sample_id"].tolist()
    found: dict[str, list[int]] = {}
    for i, result in enumerate(results):
        if result is not None:
            found.setdefault(result[0], []).append(i)
    what = {
        "missing_image": "image file(s) are missing or cannot be read",
        "unreadable_image": "image(s) are corrupt or not images",
        "hash_mismatch": "image(s) changed since the manifest was written (sha256 differs)",
    }
    fix = {
        "missing_image": "restore the files or re-ingest",
        "unreadable_image": "replace or remove them and re-ingest",
        "hash_mismatch": "restore the originals or re-ingest",
    }
    return [
        Problem(
            kind,
            f"{len(found[kind])} {what[kind]}, e.g. {results[found[kind][0]][1]}; {fix[kind]}",
            len(found[kind]),
            _ids(ids, found[kind]),
        )
        for kind in what
        if kind in found
    ]


def all_problems(m: Manifest, totals: Mapping[str, int], *, check_images: bool) -> list[Problem]:
    """Every check, image reads included unless ``check_images`` is false."""
    found: Iterable[Problem | None] = [
        *(image_problems(m) if check_images else []),
        duplicate_images(m),
        empty_classes(totals),
        subject_spread(m, "fold"),
        subject_spread(m, "split"),
        *synthetic_provenance(m),
        generator_leakage(m),
    ]
    return [p for p in found if p is not None]
