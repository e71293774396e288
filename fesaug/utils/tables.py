"""Markdown tables, the one way every report, card and benchmark of fesaug writes one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = ["markdown_table"]

_RULES = {"l": "---", "r": "---:", "c": ":---:"}


def markdown_table(header: Sequence[object], rows: Iterable[Sequence[object]], align: str = "") -> list[str]:
    """A GitHub-flavoured Markdown table as lines: ``header``, then one line per row.

    ``align``: one letter per column, ``l``eft, ``r``ight or ``c``entre; columns it does not cover
    (by default all) are left-aligned. Cells are written with ``str``; a ``|`` inside a cell is
    escaped so it cannot split the row."""
    if any(a not in _RULES for a in align):
        raise ValueError(f"align takes l, r and c only, got {align!r}")
    letters = (align + "l" * len(header))[: len(header)]

    def line(cells: Sequence[object]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join(_RULES[a] for a in letters) + "|", *(line(r) for r in rows)]
