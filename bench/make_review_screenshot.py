"""Draw docs/review-page.png: the review page of a balanced demo set in headless Chromium, one
class chosen, sorted by gate confidence, two faces marked rejected. Demo faces only.

    OMP_NUM_THREADS=1 .venv/bin/python bench/make_review_screenshot.py [--out docs/review-page.png]

Made from a tiny real run (cached under --work): a demo set of 134 images, a `cpu`-preset
FERSNet trained 2 epochs (holdout fold 0), `fesaug balance` with intensities 0.5..1.5, the
FER2013 judge (threshold 0) and identity distances (threshold 5), then `fesaug review`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fesaug.balance.config import BalanceConfig
from fesaug.balance.run import balance
from fesaug.data.demo import make_demo_dataset
from fesaug.review.browser import headless_chromium, open_page
from fesaug.review.page import write_review
from fesaug.synthesis.training import TrainConfig, train

COUNTS = {"anger": 20, "contempt": 8, "disgust": 24, "fear": 10, "happy": 28, "sadness": 12, "surprise": 32}
CONFIG = BalanceConfig(
    min_confidence=0.1,
    intensity=(0.5, 1.5),
    external_judge="fer2013",
    min_external_confidence=0.0,
    max_identity_distance=5.0,
)


def balanced_demo(work: Path) -> Path:
    manifest, ckpt, out = work / "demo" / "manifest.parquet", work / "run" / "checkpoints" / "last.pt", work / "bal"
    if not manifest.exists():
        make_demo_dataset(work / "demo", counts=COUNTS, n_subjects=16, folds=4, overwrite=True)
    if not ckpt.exists():
        train(manifest, work / "run", TrainConfig().updated({"epochs": 2, "holdout_fold": 0}, where="screenshot"))
    if not (out / "manifest.parquet").exists():
        balance(manifest, ckpt, out, CONFIG, overwrite=True, device="cpu")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path("/tmp/fesaug-bench/review-screenshot"))
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "review-page.png")
    p.add_argument("--cls", default="fear", help="the class the screenshot shows")
    args = p.parse_args()
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = write_review(balanced_demo(args.work), args.work / "review")
    with headless_chromium(width=1280, height=900) as web:
        open_page(web, page.index)
        Select(web.find_element(By.ID, "f-class")).select_by_value(args.cls)
        Select(web.find_element(By.ID, "sort-key")).select_by_visible_text("gate confidence")
        Select(web.find_element(By.ID, "sort-dir")).select_by_value("desc")
        cards = web.find_elements(By.CSS_SELECTOR, "#grid .card")
        cards[1].click()
        cards[4].click()
        # The summary is folded so that the controls, the real faces and the cards show.
        web.execute_script("document.querySelector('#summary details').open = false; window.scrollTo(0, 0);")
        time.sleep(0.5)  # lazy thumbnails
        args.out.parent.mkdir(parents=True, exist_ok=True)
        web.save_screenshot(str(args.out))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
