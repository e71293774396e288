"""Drive the review page in a headless Chromium: for the browser tests, the page benchmark and
the docs' screenshot. Needs ``selenium`` (the ``dev`` extra) and a Chromium with its driver
(Debian: ``apt-get install chromium chromium-driver``); nothing here is used by ``fesaug review``.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fesaug.utils.errors import FesaugError

# Root (as in CI containers) needs --no-sandbox; without the background-networking flags
# Chromium waits on services it cannot reach on a closed network. A fresh profile per run keeps
# one run's saved marks (localStorage) from another's.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
)
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> tuple[str, str]:
    """The Chromium binary and its driver, or a :class:`FesaugError` saying what is missing."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        raise FesaugError("selenium is not installed; pip install 'fesaug[dev]' (or pip install selenium)") from None
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        raise FesaugError(f"{missing} not found; on Debian: apt-get install chromium chromium-driver")
    return browser, driver


@contextlib.contextmanager
def headless_chromium(download_dir: str | Path | None = None, width: int = 1400, height: int = 1000) -> Iterator[Any]:
    """A selenium WebDriver on a headless Chromium with a fresh profile, quit on exit.
    ``download_dir``: where downloads land (without asking)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver = find_chromium()
    with tempfile.TemporaryDirectory(prefix="fesaug-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
            options.add_argument(flag)
        if download_dir is not None:
            options.add_experimental_option(
                "prefs", {"download.default_directory": str(download_dir), "download.prompt_for_download": False}
            )
        web = webdriver.Chrome(service=Service(driver), options=options)
        try:
            if download_dir is not None:
                web.execute_cdp_cmd(
                    "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)}
                )
            yield web
        finally:
            web.quit()


def open_page(web: Any, index: str | Path, timeout: float = 60.0) -> dict[str, Any]:
    """Load ``index`` (a review page's ``index.html``) and wait until its script has shown the
    first cards; returns the page's own timings (``window.FESAUG_REVIEW.ready``)."""
    from selenium.webdriver.support.ui import WebDriverWait

    web.get(Path(index).resolve().as_uri())
    WebDriverWait(web, timeout).until(lambda w: w.execute_script("return document.body.dataset.ready === '1'"))
    return web.execute_script("return window.FESAUG_REVIEW.ready")
