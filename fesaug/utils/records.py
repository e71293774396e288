"""Versioned records: one schema version per record type, and one chain of migrations to read old ones.

Every record fesaug writes and later reads back (checkpoints, run configurations, evaluation
settings and fold records, balance plans and footers, manifest footers) carries ``schema_version``.
A record type knows its current version and one function per step, ``migrate_vN_to_vN+1``;
reading a record runs the steps from its version to the current one, in order. A record without
``schema_version`` is version 0: what the versions before this scheme wrote, and its one migration
to version 1 holds everything fesaug used to infer from which keys were missing. A record type
that always carried a version (the manifest footer) starts at its ``first`` version instead, and
refuses anything older. A record from a newer fesaug is refused with one line that says so.

So the knowledge of how an old record meant its settings lives in one place per record type, and
code past :meth:`RecordType.read` sees today's layout only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fesaug.utils.errors import FesaugError

__all__ = ["SCHEMA_KEY", "Migration", "RecordType", "fill_missing", "rename_keys"]

SCHEMA_KEY = "schema_version"
Migration = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class RecordType:
    """A record type: its name (in messages), its current ``version`` and its ``migrations``
    (``migrations[v]`` turns version ``v`` into ``v + 1``; one for every ``first <= v < version``).
    ``first`` is the oldest version there is: 0 (no ``schema_version``) unless the record type
    carried one from the start."""

    name: str
    version: int
    migrations: Mapping[int, Migration] = field(default_factory=dict)
    first: int = 0

    def __post_init__(self) -> None:
        missing = [v for v in range(self.first, self.version) if v not in self.migrations]
        if missing:  # a programming error: caught by the test that imports every record type
            raise ValueError(f"{self.name}: no migration from version {missing[0]} to {missing[0] + 1}")

    def stamp(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """``record`` with the current ``schema_version``, for writing."""
        return {**record, SCHEMA_KEY: self.version}

    def version_of(self, record: Mapping[str, Any]) -> int:
        version = record.get(SCHEMA_KEY, 0)
        return version if isinstance(version, int) and not isinstance(version, bool) else -1

    def read(self, record: Mapping[str, Any], *, where: str) -> dict[str, Any]:
        """``record`` migrated to the current version (a copy); ``where`` names it in errors."""
        version = self.version_of(record)
        if version < self.first:
            oldest = f" (its oldest version is {self.first})" if self.first else ""
            raise FesaugError(f"{where}: {self.name} has an invalid {SCHEMA_KEY} {record.get(SCHEMA_KEY)!r}{oldest}")
        if version > self.version:
            raise FesaugError(
                f"{where}: {self.name} schema version {version} was written by a newer fesaug (this one reads up to "
                f"{self.version}); upgrade fesaug to read it"
            )
        out = dict(record)
        for v in range(version, self.version):
            out = self.migrations[v](out)
        out[SCHEMA_KEY] = self.version
        return out


def fill_missing(record: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """``record`` with each key of ``values`` it lacks set to that value, recursing into nested
    mappings present on both sides: a setting added in a version meant, in records made before
    it, the behaviour the migration names here."""
    out = dict(record)
    for key, value in values.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(out[key], Mapping):
            out[key] = fill_missing(out[key], value)
    return out


def rename_keys(record: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """``record`` with keys renamed old → new (a key already under its new name wins)."""
    out = dict(record)
    for old, new in names.items():
        if old in out:
            value = out.pop(old)
            out.setdefault(new, value)
    return out
