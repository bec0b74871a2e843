"""Headless Chromium for the browser tests, driven by Selenium through Debian's chromedriver.

Selenium is given the driver by path (package chromium-driver, version-matched to ``chromium``),
so Selenium Manager never runs and nothing is downloaded. Tests skip, saying what to install,
when either is missing (.ci/run installs both).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("DETBENCH_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DETBENCH_CHROMEDRIVER", "/usr/bin/chromedriver"))
CHROME_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


@contextlib.contextmanager
def chromium(folder: Path, window_size: str, timeout_s: float) -> Iterator[Any]:
    """A Selenium driver for headless Chromium, its profile and driver log under ``folder``."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="pip install selenium")
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not os.access(path, os.X_OK):
            pytest.skip(f"{path} not found: apt-get install {package} (see .ci/run)")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROME_FLAGS, f"--window-size={window_size}"):
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={folder / 'chromium-profile'}")
    service = webdriver.ChromeService(
        executable_path=str(CHROMEDRIVER), log_output=str(folder / "chromedriver.log")
    )
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(timeout_s)
    try:
        yield driver
    finally:
        driver.quit()
