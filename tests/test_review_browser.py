"""The review page in a real browser (headless Chromium, driven by selenium), opened from the
file system as a user would: filter a class, sort by a score, mark two faces (mouse and
keyboard), download rejects.txt, then `fesaug balance --reject` replaces exactly those rows.
Skips, saying why, where Chromium, its driver or selenium is missing (CI installs them)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fesaug.balance.config import BalanceConfig
from fesaug.balance.run import balance
from fesaug.data.demo import make_demo_dataset
from fesaug.data.manifest import read_manifest
from fesaug.review.page import write_review
from fesaug.synthesis.training import train
from fesaug.utils.errors import FesaugError

from .conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

COUNTS = {"anger": 6, "contempt": 3, "disgust": 7, "fear": 3, "happy": 8, "sadness": 4, "surprise": 9}
CONFIG = BalanceConfig(min_confidence=0.0, batch_size=8)


@pytest.fixture(scope="module")
def chromium() -> None:
    from fesaug.review.browser import find_chromium

    try:
        find_chromium()
    except FesaugError as exc:
        pytest.skip(f"no headless browser for the review page: {exc}")


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    demo = make_demo_dataset(tmp_path_factory.mktemp("demo"), counts=COUNTS, n_subjects=8, size=32, folds=4)
    ckpt = train(demo, tmp_path_factory.mktemp("run") / "run", tiny_config(holdout_fold=0, epochs=1)).best_checkpoint
    out = tmp_path_factory.mktemp("out") / "balanced"
    balance(demo, ckpt, out, CONFIG, device="cpu")
    return {"demo": demo, "checkpoint": ckpt, "balanced": out}


def _wait_for(path: Path, timeout: float = 20.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.is_file() and not list(path.parent.glob("*.crdownload")):
            return path.read_text()
        time.sleep(0.1)
    raise AssertionError(
        f"{path} was not downloaded within {timeout} s; the folder holds {list(path.parent.iterdir())}"
    )


def test_mark_two_faces_in_a_browser_download_rejects_and_replace_them(
    chromium: None, run: dict[str, Path], tmp_path: Path
) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    from fesaug.review.browser import headless_chromium, open_page

    page = write_review(run["balanced"], tmp_path / "review")
    m = read_manifest(run["balanced"] / "manifest.parquet")
    syn = m.df[m.df["origin"] == "synthetic"]
    cls = syn["label_name"].value_counts().index[0]  # the class with the most synthetic faces
    mine = syn[syn["label_name"] == cls]
    by_confidence = mine.assign(order=range(len(mine))).sort_values(["confidence", "order"], ascending=[False, True])
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with headless_chromium(downloads) as web:
        open_page(web, page.index)
        assert web.find_element(By.ID, "status").text.startswith(f"{len(syn)} of {len(syn)} synthetic faces match")
        # Source class and subject filters keep only matching faces.
        source = m.classes[int(syn["source_label"].mode()[0])]
        Select(web.find_element(By.ID, "f-source")).select_by_value(source)
        shown = [c.get_attribute("data-id") for c in web.find_elements(By.CSS_SELECTOR, "#grid .card")]
        assert sorted(shown) == sorted(syn.loc[syn["source_label"] == m.classes.index(source), "sample_id"])
        Select(web.find_element(By.ID, "f-source")).select_by_value("")
        subject = syn["subject_id"].iloc[0]
        web.find_element(By.ID, "f-subject").send_keys(subject)
        shown = [c.get_attribute("data-id") for c in web.find_elements(By.CSS_SELECTOR, "#grid .card")]
        assert sorted(shown) == sorted(syn.loc[syn["subject_id"] == subject, "sample_id"])
        web.find_element(By.ID, "f-subject").clear()  # no event: the next change reads every filter afresh
        Select(web.find_element(By.ID, "f-class")).select_by_value(cls)
        Select(web.find_element(By.ID, "sort-key")).select_by_visible_text("gate confidence")
        Select(web.find_element(By.ID, "sort-dir")).select_by_value("desc")
        cards = web.find_elements(By.CSS_SELECTOR, "#grid .card")
        assert [c.get_attribute("data-id") for c in cards] == by_confidence["sample_id"].tolist()
        # The real faces of the class are shown for comparison.
        assert len(web.find_elements(By.CSS_SELECTOR, "#real .strip img")) == int(
            ((m.df["origin"] == "real") & (m.df["label_name"] == cls)).sum()
        )
        # A threshold keeps the faces at or above it.
        scores = by_confidence["confidence"].astype(float).round(6)  # as the page holds them
        web.find_element(By.ID, "min-confidence").send_keys(f"{scores.iloc[1]:.6f}", Keys.TAB)
        kept = web.find_elements(By.CSS_SELECTOR, "#grid .card")
        assert len(kept) == int((scores >= scores.iloc[1]).sum()) >= 2
        # Mark the first by mouse, the second by keyboard (move right, press x).
        kept[0].click()
        ActionChains(web).send_keys(Keys.ARROW_RIGHT, "x").perform()
        marked = [c.get_attribute("data-id") for c in web.find_elements(By.CSS_SELECTOR, "#grid .card.rejected")]
        expected = by_confidence["sample_id"].tolist()[:2]
        assert marked == expected
        assert "2 marked rejected" in web.find_element(By.ID, "status").text
        assert web.find_element(By.CSS_SELECTOR, f'td[data-marked="{cls}"]').text == "2"
        web.find_element(By.ID, "download").click()
        text = _wait_for(downloads / "rejects.txt")
        # Marks survive a reload of the page (kept in the browser's storage).
        open_page(web, page.index)
        assert "2 marked rejected" in web.find_element(By.ID, "status").text
    in_page_order = [sid for sid in syn["sample_id"] if sid in expected]
    assert text == "".join(f"{sid}\n" for sid in in_page_order)
    # The same balance command with --reject replaces exactly those two rows.
    result = balance(
        run["demo"], run["checkpoint"], run["balanced"], CONFIG, device="cpu", reject=downloads / "rejects.txt"
    )
    after = read_manifest(run["balanced"] / "manifest.parquet").df
    replaced = after[after["replaces"].notna()]
    assert sorted(replaced["replaces"]) == sorted(expected) and result.rejected_by_person[cls] == 2
    unchanged = after[after["replaces"].isna()]
    assert unchanged["sample_id"].tolist() == [s for s in m.df["sample_id"] if s not in expected]
    assert (unchanged["sha256"].to_numpy() == m.df.loc[~m.df["sample_id"].isin(expected), "sha256"].to_numpy()).all()
    # The page made again shows the replacements; only their thumbnails (and counterfactuals) are new.
    again = write_review(run["balanced"], tmp_path / "review")
    assert 2 <= again.thumbnails_made <= 4 and again.synthetic == len(syn)
