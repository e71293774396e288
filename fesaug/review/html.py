"""The review page's files: ``index.html`` (header, summary, controls), the data as
``data/*.js`` scripts and the static ``review.js`` / ``review.css``.

The data are scripts, not JSON, because a page opened from the file system may not ``fetch()``
files beside it, but may load scripts. They are split in chunks of :data:`CHUNK_ROWS` rows,
column-wise (a list of values per row) to stay small. Every name carries a digest of its content
and ``index.html`` is written last, so a page being rewritten is never a mix of old and new.
"""

from __future__ import annotations

import hashlib
import json
from html import escape
from importlib import resources
from typing import Any

from fesaug.review.data import PageData
from fesaug.review.summary import summary_html

CHUNK_ROWS = 5000
SYNTHETIC_COLUMNS = (
    "id",
    "class",
    "source_class",
    "subject",
    "fold",
    "split",
    "parent",
    "transform",
    "attempt",
    "replaces",
    "img",
    "parent_img",
    "cf_img",
    "scores",
)
REAL_COLUMNS = ("id", "class", "subject", "fold", "split", "img")


def digest_name(stem: str, text: str, suffix: str) -> str:
    """``stem-<first 10 hex digits of the content's sha256><suffix>``."""
    return f"{stem}-{hashlib.sha256(text.encode()).hexdigest()[:10]}{suffix}"


def asset_files() -> dict[str, str]:
    """The static script and style sheet, by their digest names."""
    folder = resources.files("fesaug.review") / "assets"
    js, css = (folder / "review.js").read_text(), (folder / "review.css").read_text()
    return {digest_name("review", js, ".js"): js, digest_name("review", css, ".css"): css}


def data_files(data: PageData, meta: dict[str, Any]) -> dict[str, str]:
    """``data/NAME.js`` texts in load order: ``meta`` first, then the rows in chunks."""

    def script(value: Any) -> str:
        return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False)

    files = {}
    first = "window.FESAUG_REVIEW = {meta: " + script(meta) + ", chunks: []};\n"
    files[digest_name("data/meta", first, ".js")] = first
    score_columns = [s.column for s in data.scores]
    for kind, rows, columns in (("synthetic", data.synthetic, SYNTHETIC_COLUMNS), ("real", data.real, REAL_COLUMNS)):
        for n, start in enumerate(range(0, len(rows), CHUNK_ROWS)):
            values = [
                [[r["scores"][c] for c in score_columns] if k == "scores" else r[k] for k in columns]
                for r in rows[start : start + CHUNK_ROWS]
            ]
            text = (
                "FESAUG_REVIEW.chunks.push(" + script({"kind": kind, "columns": list(columns), "rows": values}) + ");\n"
            )
            files[digest_name(f"data/{kind}-{n:03d}", text, ".js")] = text
    return files


def page_meta(data: PageData) -> dict[str, Any]:
    """What ``review.js`` needs besides the rows (the manifest's digest keys the saved marks)."""
    return {
        "key": data.manifest_sha256,
        "classes": data.classes,
        "scores": [{"column": s.column, "label": s.label, "better": s.better} for s in data.scores],
        "counterfactuals": data.counterfactuals,
    }


def index_html(data: PageData, scripts: list[str], stylesheet: str, made: dict[str, Any]) -> str:
    """The page; ``scripts``: data files then ``review.js``, in load order; ``made``: the
    provenance of the page (its command and time are shown)."""
    m = data.manifest
    run = m.meta.get("balance") or {}
    generator = run.get("checkpoint_sha256")
    made_by = (m.meta.get("provenance") or {}).get("command")
    notes = "".join(f'<p class="note">{escape(n)}</p>' for n in data.notes)
    cf = (
        f"Each card shows the source face, the synthetic face and {escape(data.counterfactuals)}."
        if data.counterfactuals
        else "Each card shows the source face and the synthetic face made from it."
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>fesaug review: {escape(m.path.parent.name or str(m.path))}</title>
<link rel="stylesheet" href="{escape(stylesheet)}">
</head>
<body>
<header>
<h1>Review of the synthetic faces in <code>{escape(str(m.path))}</code></h1>
<p class="meta">{len(data.synthetic)} synthetic and {len(data.real)} real row(s), {len(data.classes)} class(es)\
{f" · generator <code>{escape(generator[:12])}</code>" if generator else ""}\
{f" · made by <code>{escape(made_by)}</code>" if made_by else ""} · page made {escape(made.get("created_at", ""))}\
 by <code>{escape(made.get("command", ""))}</code></p>
<p class="meta">{cf} Choose a class to compare with its real faces.</p>
<p class="keys">Mark a face rejected: click it, or move with <kbd>←</kbd><kbd>→</kbd> (<kbd>j</kbd><kbd>k</kbd>) and \
<kbd>↑</kbd><kbd>↓</kbd> and press <kbd>x</kbd> (or <kbd>Space</kbd>). Then <em>Download rejects.txt</em> and run \
<code>fesaug balance … --reject rejects.txt</code> (the same balance command) to replace those faces. \
Marks are kept in this browser until you clear them.</p>
{notes}
</header>
{summary_html(data)}
{controls_html(data)}
<section id="real" hidden><h2>Real faces of <span class="which"></span> <small class="count"></small></h2>\
<div class="strip"></div><button type="button" id="real-more" hidden>Show all</button></section>
<div id="status" aria-live="polite">Loading…</div>
<main id="grid"></main>
<div id="sentinel"></div>
<noscript><p class="note">The faces need JavaScript; the summary above does not.</p></noscript>
{"".join(f'<script src="{escape(s)}"></script>{chr(10)}' for s in scripts)}</body>
</html>
"""


def controls_html(data: PageData) -> str:
    """Filters, thresholds, sort order and the mark actions."""
    classes = "".join(f'<option value="{escape(c)}">{escape(c)}</option>' for c in data.classes)
    subjects = sorted({r["subject"] for r in data.synthetic if r["subject"]})
    datalist = "".join(f'<option value="{escape(s)}">' for s in subjects)
    thresholds = "".join(
        f'<label title="{escape(s.label)}: keep faces with a score in this range">{escape(s.label)} '
        + "".join(
            f'<input type="number" id="{end}-{escape(s.column)}" step="any" placeholder="{end}" '
            f'aria-label="{escape(s.label)} {end}">'
            for end in ("min", "max")
        )
        + "</label>"
        for s in data.scores
    )
    sort_options = '<option value="order">class, then as generated</option>'
    sort_options += '<option value="subject">subject</option><option value="source_class">source class</option>'
    sort_options += "".join(f'<option value="score:{j}">{escape(s.label)}</option>' for j, s in enumerate(data.scores))
    return f"""<section id="controls">
<fieldset><label>class <select id="f-class"><option value="">all</option>{classes}</select></label>
<label>source class <select id="f-source"><option value="">all</option>{classes}</select></label>
<label>subject <input type="text" id="f-subject" list="subjects" placeholder="any"></label>
<datalist id="subjects">{datalist}</datalist>
<label>show <select id="f-marked"><option value="">all</option><option value="unmarked">unmarked</option>\
<option value="marked">marked rejected</option></select></label></fieldset>
<fieldset><label>sort by <select id="sort-key">{sort_options}</select></label>
<select id="sort-dir" aria-label="sort direction"><option value="asc">ascending</option>\
<option value="desc">descending</option></select></fieldset>
<fieldset>{thresholds}</fieldset>
<fieldset class="actions"><button type="button" id="download" disabled>Download rejects.txt</button>
<label>load marks <input type="file" id="load" accept=".txt,text/plain"></label>
<button type="button" id="clear">Unmark all</button></fieldset>
</section>"""
