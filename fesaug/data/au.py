"""Facial action units (AUs): FACS ids, the emotion -> AU prototype table, and AU label side files.

``fesaug ingest --au-labels FILE`` reads per-image AU labels from a CSV or JSON file keyed by image
file name; :func:`read_au_labels` turns it into vectors aligned with one sorted ``au_ids`` list,
which is what the manifest's ``au_occurrence``/``au_intensity`` columns and ``au_ids`` footer hold.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fesaug.utils.errors import FesaugError

if TYPE_CHECKING:
    import torch

# Emotion -> prototypical AUs, the EMFACS-style table (Friesen & Ekman, EMFACS-7, 1983; as commonly
# tabulated, e.g. by OpenDBM and Wikipedia's FACS article). CK+ validated its emotion labels against
# FACS criteria of this kind (Lucey et al., CVPR-W 2010, Table 2: e.g. happy needs AU12, contempt AU14).
# Surprise's AU5 is weak (5B); contempt is unilateral (R12A+R14A); some versions of fear omit AU7.
# fesaug.data.demo.AU_PROTOTYPES differs on purpose: it adds optional AUs (sadness +17, happy +25,
# disgust +4) and renders disgust as 9+10+15, since its AU set has no AU16 (lower lip depressor).
EMOTION_AU_PROTOTYPES: dict[str, tuple[int, ...]] = {
    "anger": (4, 5, 7, 23),
    "contempt": (12, 14),
    "disgust": (9, 15, 16),
    "fear": (1, 2, 4, 5, 7, 20, 26),
    "happy": (6, 12),
    "neutral": (),
    "sadness": (1, 4, 15),
    "surprise": (1, 2, 5, 26),
}

# FACS intensity letters A (trace) .. E (maximum) as fractions of the maximum.
INTENSITY_LETTERS = {"A": 0.2, "B": 0.4, "C": 0.6, "D": 0.8, "E": 1.0}
# An intensity counts as an occurrence from FACS "A" (trace) up: the demo dataset's AU_THRESHOLD.
OCCURRENCE_THRESHOLD = 0.2

_AU_ID = re.compile(r"(?i)\s*(?:au)?\s*(\d+)\s*")
# One FACS code token: optional side (L/R/U unilateral), optional "AU", the id, optional intensity letter.
_CODE = re.compile(r"(?i)\s*[LRU]?\s*(?:AU)?\s*(\d+)\s*([A-E])?\s*")


def au_consistency(au_probs: torch.Tensor, au_ids: Sequence[int], target: str) -> torch.Tensor | None:
    """How well predicted AUs fit ``target``: the mean probability of the target's prototype AUs
    (:data:`EMOTION_AU_PROTOTYPES`) among those the AU model knows, per image.
    None when the model knows none of them (e.g. neutral): there is nothing to check."""
    known = [au_ids.index(a) for a in EMOTION_AU_PROTOTYPES.get(target, ()) if a in au_ids]
    return au_probs[:, known].mean(dim=1) if known else None


def parse_au_id(value: object) -> int:
    """A FACS AU id from ``12``, ``"12"``, ``"AU12"``, ``"au12"`` or ``"AU 12"``."""
    m = _AU_ID.fullmatch(value) if isinstance(value, str) else None
    au = int(m.group(1)) if m else value if isinstance(value, int) and not isinstance(value, bool) else None
    if au is None or au < 1:  # FACS numbers AUs from 1
        raise FesaugError(f"{value!r} is not an action unit id; write a positive FACS number such as 12 or AU12")
    return au


@dataclass(frozen=True)
class AULabels:
    """A side file's labels; vectors are aligned with ``au_ids``. An intensity vector is None when its
    entry gave only occurrences; inside one, an AU that occurs with no intensity given is None."""

    path: Path
    au_ids: tuple[int, ...]
    occurrence: dict[str, list[int]]  # file key -> 0/1 per AU
    intensity: dict[str, list[float | None] | None]
    where: dict[str, str]  # file key -> "labels.csv line 3", for messages

    @property
    def has_intensity(self) -> bool:
        return any(v is not None for v in self.intensity.values())


# One entry: AU -> (occurrence, intensity or None). AUs an entry leaves out are absent (0).
_Entry = dict[int, tuple[int, float | None]]


def read_au_labels(path: str | Path) -> AULabels:
    """Read an AU label side file: a CSV with a ``file`` column and either one column per AU
    (``AU12``: 0/1, an intensity 0..1 such as 0.6, or a FACS letter A-E; blank = absent) or an
    ``aus`` column of FACS codes (``1+2+5B+26``); or a JSON object ``{"file.png": [1, 2, 26]}``
    or ``{"file.png": {"AU1": 1, "AU12": 0.6}}``. Every problem is one :class:`FesaugError`."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".json":
            entries = _read_json(path)
        elif path.suffix.lower() == ".csv":
            entries = _read_csv(path)
        else:
            raise FesaugError(f"--au-labels {path}: unknown format; give a .csv or .json file")
    except OSError as exc:
        raise FesaugError(f"cannot read --au-labels {path} ({exc.strerror or exc}); check the path") from None
    except UnicodeDecodeError:
        raise FesaugError(f"--au-labels {path} is not UTF-8 text; save it as UTF-8 CSV or JSON") from None
    if not entries:
        raise FesaugError(f"--au-labels {path} has no entries; add one row (CSV) or key (JSON) per labelled image")
    au_ids = tuple(sorted({au for entry, _ in entries.values() for au in entry}))
    occurrence, intensity = {}, {}
    for key, (entry, _) in entries.items():
        occurrence[key] = [entry.get(au, (0, None))[0] for au in au_ids]
        given = any(i is not None for _, i in entry.values())
        # Absent AUs have intensity 0; occurring ones without a letter/value stay unknown (None).
        values = [entry.get(au, (0, 0.0)) for au in au_ids]
        intensity[key] = [i if i is not None else None if o else 0.0 for o, i in values] if given else None
    return AULabels(path, au_ids, occurrence, intensity, {k: w for k, (_, w) in entries.items()})


def _value(raw: object, au: int, where: str) -> tuple[int, float | None] | None:
    """One AU value: 0/1 is an occurrence, a decimal 0..1 or a letter A-E an intensity; None when blank."""
    text = raw.strip() if isinstance(raw, str) else raw
    if text is None or text == "":
        return None
    if isinstance(text, int) or (isinstance(text, str) and re.fullmatch(r"[+-]?\d+", text)):  # bool is an int
        if int(text) in (0, 1):
            return int(text), None
    elif isinstance(text, str) and text.upper() in INTENSITY_LETTERS:
        return 1, INTENSITY_LETTERS[text.upper()]
    else:
        try:
            x = float(text)
        except (TypeError, ValueError):
            x = None
        if x is not None and 0.0 <= x <= 1.0:  # NaN fails this too
            return int(x >= OCCURRENCE_THRESHOLD), x
    raise FesaugError(
        f"{where}: AU{au} value {raw!r} is out of range; give 0/1 (occurrence), an intensity 0..1 or a FACS letter A-E"
    )


def _code(text: object, where: str) -> _Entry:
    """A FACS code such as ``1+2+5B+26`` (or a JSON list of ids): listed AUs occur."""
    tokens = text if isinstance(text, list) else re.split(r"[+,\s]+", str(text).strip())
    entry: _Entry = {}
    for token in tokens:
        if token == "":
            continue
        m = _CODE.fullmatch(str(token)) if isinstance(token, (str, int)) and not isinstance(token, bool) else None
        au = int(m.group(1)) if m else 0
        if au < 1:
            raise FesaugError(
                f"{where}: {token!r} is not an action unit; write FACS codes like 1+2+5B+26 (AU number, optional "
                "intensity letter A-E)"
            )
        if au in entry:
            raise FesaugError(f"{where}: AU{au} is listed twice; list each AU once")
        letter = m.group(2)
        entry[au] = (1, INTENSITY_LETTERS[letter.upper()] if letter else None)
    return entry


def _add(entries: dict[str, tuple[_Entry, str]], key: object, entry: _Entry, where: str, path: Path) -> None:
    key = str(key).strip().replace("\\", "/").removeprefix("./")
    if not key:
        raise FesaugError(f"{where}: empty file name; give the image's path relative to SRC or its file name")
    if key in entries:
        raise FesaugError(
            f"{where}: {key!r} already has AU labels ({entries[key][1]}); keep one entry per file in {path.name}"
        )
    entries[key] = (entry, where)


def _read_csv(path: Path) -> dict[str, tuple[_Entry, str]]:
    entries: dict[str, tuple[_Entry, str]] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        lower = {h.lower(): raw for h, raw in zip(header, reader.fieldnames or [])}
        if "file" not in lower:
            raise FesaugError(
                f"--au-labels {path} line 1: no 'file' column (header: {','.join(header)}); name the image column "
                "'file'"
            )
        # Columns named like AUs ("AU12", "au 12", "12") are labels; any other column (emotion,
        # subject, author ...) is ignored, except one that starts like an AU (OpenFace's "AU12_r"),
        # which is refused rather than silently dropped.
        au_cols: dict[str, int] = {}
        for h, raw in zip(header, reader.fieldnames or []):
            if h.lower() == "aus" or not _AU_ID.fullmatch(h):
                if re.match(r"(?i)au\s*_?\d", h):
                    raise FesaugError(
                        f"--au-labels {path} line 1: column {h!r} starts like an AU but is not one; "
                        "name AU columns AU1, AU12, ... (OpenFace's AU12_r/AU12_c: keep one, rename it AU12)"
                    )
                continue
            au = _parse_au_id_at(h, f"--au-labels {path} line 1: column {h!r}")
            if au in au_cols.values():
                raise FesaugError(f"--au-labels {path} line 1: two columns name AU{au}; keep one")
            au_cols[raw] = au
        if "aus" in lower and au_cols:
            raise FesaugError(f"--au-labels {path} line 1: has both an 'aus' column and AU columns; use one of the two")
        if "aus" not in lower and not au_cols:
            raise FesaugError(
                f"--au-labels {path} line 1: no AU columns; add columns like AU1, AU12 or one 'aus' column of FACS "
                "codes (1+2+5B+26)"
            )
        try:
            for row in reader:
                where = f"{path.name} line {reader.line_num}"
                if "aus" in lower:
                    entry = _code(row[lower["aus"]] or "", where)
                else:
                    values = {au: _value(row[raw], au, where) for raw, au in au_cols.items()}
                    entry = {au: v for au, v in values.items() if v is not None}
                _add(entries, row[lower["file"]] or "", entry, where, path)
        except csv.Error as exc:
            raise FesaugError(
                f"--au-labels {path} line {reader.line_num}: not valid CSV ({exc}); fix the file"
            ) from None
    return entries


def _read_json(path: Path) -> dict[str, tuple[_Entry, str]]:
    try:  # objects as lists of pairs: json.load would silently drop duplicate keys
        data = json.loads(path.read_text(encoding="utf-8-sig"), object_pairs_hook=list)
    except json.JSONDecodeError as exc:
        raise FesaugError(f"--au-labels {path} line {exc.lineno}: not valid JSON ({exc.msg}); fix the file") from None
    if not isinstance(data, list) or any(not isinstance(p, tuple) or not isinstance(p[1], (list, str)) for p in data):
        raise FesaugError(
            f'--au-labels {path}: expected an object of file name -> AU list or object, e.g. {{"a.png": [1, 2, 26]}}'
        )
    entries: dict[str, tuple[_Entry, str]] = {}
    for key, value in data:
        where = f"{path.name} entry {key!r}"
        if isinstance(value, list) and value and all(isinstance(p, tuple) for p in value):  # {"AU1": 1, ...}
            ids = [_parse_au_id_at(k, where) for k, _ in value]
            if len(set(ids)) != len(ids):
                raise FesaugError(f"{where}: an AU is given twice; give each AU once")
            values = {au: _value(v, au, where) for au, (_, v) in zip(ids, value)}
            entry = {au: v for au, v in values.items() if v is not None}
        else:  # [1, 2, "5B"] or "1+2+5B"
            entry = _code(value, where)
        _add(entries, key, entry, where, path)
    return entries


def _parse_au_id_at(value: object, where: str) -> int:
    """:func:`parse_au_id`, its error prefixed with where the value came from."""
    try:
        return parse_au_id(value)
    except FesaugError as exc:
        raise FesaugError(f"{where}: {exc}") from None
