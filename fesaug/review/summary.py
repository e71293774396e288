"""The review page's per-class summary as static HTML: counts, the balance run's acceptance and
gate pass rates, and one small SVG histogram per class and score (readable without
JavaScript, and the same numbers the manifest's footer and rows hold)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from fesaug.review.data import PageData

GATE_LABELS = {
    "fer_branch": "FER branch",
    "au_check": "AU check",
    "judge": "judge",
    "identity": "identity",
    "external": "external judge",
}


def summary_html(data: PageData) -> str:
    """The summary section: a table of counts and rates, then a table of score histograms."""
    gates = sorted(
        {g for s in data.summary for g in s.gate_pass_rates},
        key=lambda g: list(GATE_LABELS).index(g) if g in GATE_LABELS else 99,
    )
    head = [
        "class",
        "real rows",
        "synthetic rows",
        "target",
        "attempts",
        "accepted",
        "short",
        "rejected by a person",
        "marked here",
    ]
    head += [f"{GATE_LABELS.get(g, g)} passed" for g in gates]
    rows = []
    for s in data.summary:
        cells = [
            f'<button type="button" class="class-link" data-class="{escape(s.name)}">{escape(s.name)}</button>',
            str(s.real),
            str(s.synthetic),
            _opt(s.target),
            _opt(s.attempts),
            _pct(s.acceptance),
            _opt(s.shortfall),
            str(s.rejected_by_person),
        ]
        row = "".join(f"<td>{c}</td>" for c in cells) + f'<td data-marked="{escape(s.name)}">0</td>'
        row += "".join(f"<td>{_pct(s.gate_pass_rates.get(g))}</td>" for g in gates)
        rows.append(f"<tr>{row}</tr>")
    table = _table(head, rows, 'id="summary-table"')
    parts = [
        '<section id="summary"><details open><summary><h2>Per class</h2></summary>',
        table,
        '<p class="meta">From the balance run: <em>accepted</em>, the share of candidates all quality gates kept, '
        "and per gate the share it passed. <em>Marked here</em> counts the faces marked rejected on this page.</p>",
    ]
    if data.scores:
        parts += ["<h2>Scores of the synthetic faces, per class</h2>", _histograms(data)]
    parts.append("</details></section>")
    return "\n".join(parts)


def _histograms(data: PageData) -> str:
    head = ["class", *(escape(s.label) for s in data.scores)]
    first = data.summary[0].histograms
    ranges = [
        f'<td class="hist-range">{_num(first[s.column][0][0])} … {_num(first[s.column][0][-1])}</td>'
        for s in data.scores
    ]
    rows = ["<tr><td></td>" + "".join(ranges) + "</tr>"]
    for s in data.summary:
        cells = "".join(f"<td>{histogram_svg(*s.histograms[c.column], c.label)}</td>" for c in data.scores)
        rows.append(f"<tr><td>{escape(s.name)}</td>{cells}</tr>")
    return _table(head, rows, 'id="histograms"')


def histogram_svg(edges: Sequence[float], counts: Sequence[int], label: str, width: int = 120, height: int = 30) -> str:
    """Bars of ``counts`` over the bins ``edges``, each with a tooltip (range and count)."""
    n, top = len(counts), max(max(counts, default=0), 1)
    w = width / max(n, 1)
    bars = []
    for i, c in enumerate(counts):
        h = round(height * c / top, 1)
        tip = f"{label} {_num(edges[i])}–{_num(edges[i + 1])}: {c}"
        bars.append(
            f'<rect x="{i * w + 0.5:.1f}" y="{height - h:.1f}" width="{w - 1:.1f}" height="{h}">'
            f"<title>{escape(tip)}</title></rect>"
        )
    total = sum(counts)
    return (
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" '
        f'aria-label="{escape(label)}: {total} value(s)">{"".join(bars)}</svg>'
    )


def _table(head: Sequence[str], rows: Sequence[str], attrs: str) -> str:
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "\n".join(rows)
    return f'<div class="scroll"><table {attrs}><thead><tr>{header}</tr></thead><tbody>\n{body}\n</tbody></table></div>'


def _opt(value: int | None) -> str:
    return "–" if value is None else str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.0%}"


def _num(value: float) -> str:
    return f"{value:.3g}"
