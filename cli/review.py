"""`fesaug review`: a static page to look at, sort and reject the synthetic faces of a balanced set."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("review")
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("review"),
    show_default=True,
    help="Folder for the page (index.html, thumbs/, data/); an earlier review folder is updated, thumbnails reused.",
)
@click.option(
    "--thumb-size",
    type=click.IntRange(16, 512),
    default=96,
    show_default=True,
    help="Longest side of the thumbnails in pixels (smaller images are kept as they are).",
)
def review_command(source: Path, out: Path, thumb_size: int) -> None:
    """Write a page to review the synthetic faces of SOURCE (a `fesaug balance` folder or manifest).

    \b
    Open OUT/index.html in a browser (no server needed). Mark bad faces (click, or x on the
    focused one), download rejects.txt and replace them with the same balance command:
      fesaug review ck-balanced --out ck-review
      fesaug balance --manifest ck.parquet --checkpoint best.pt --out ck-balanced --reject rejects.txt
    """
    from fesaug.review.page import write_review

    r = write_review(source, out, thumb_size=thumb_size, progress=True)
    click.echo(
        f"wrote {r.index} ({r.synthetic} synthetic, {r.real} real row(s); {r.thumbnails_made} thumbnail(s) made, "
        f"{r.thumbnails_cached} reused) in {r.seconds['total']:.1f} s"
    )
    click.echo(f"open it in a browser: {r.index.resolve().as_uri()}")
