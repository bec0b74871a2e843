"""report.html in a real browser: headless Chromium (Debian's) driven by Selenium.

The Snakemake report is a React page that renders its results from embedded data, so reading
the HTML proves little: here a person's clicks open a plot entry, and the image shown must be a
decoded PNG of a real size; a table entry must show the study table in its frame. Selenium
talks to Debian's ``chromedriver`` by path (package chromium-driver, version-matched to
``chromium``), so Selenium Manager never runs and nothing is downloaded. A screenshot of the
plot is kept under the test's tmp_path and its path printed (a CI artifact).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import chromium

pytestmark = pytest.mark.slow

TIMEOUT_S = 60  # a 5 MB page of embedded data on a CPU shared with other jobs
MIN_PLOT_PX = (400, 250)  # natural size of a decoded figure; a broken image is 0 x 0


@pytest.fixture(scope="module")
def report_html(tiny_study_run: Any) -> Path:
    return tiny_study_run.workdir / "report.html"


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path, window_size="1600,1200", timeout_s=TIMEOUT_S) as driver:
        yield driver


def _click_text(driver: Any, text: str) -> None:
    """Click the report's menu link whose label is ``text`` (categories, subcategories)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    locator = (By.XPATH, f"//a[span[normalize-space()={_xpath_literal(text)}]]")
    WebDriverWait(driver, TIMEOUT_S).until(expected_conditions.element_to_be_clickable(locator))
    driver.find_element(*locator).click()


def _xpath_literal(text: str) -> str:
    return f'"{text}"' if '"' not in text else f"'{text}'"


def _open_entry(driver: Any, label: str) -> None:
    """Click the view (eye) button of the result row whose first label is ``label``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    row = f"//table//tr[td[1][normalize-space()={_xpath_literal(label)}]]"
    locator = (By.XPATH, f"{row}//a[@type='button'][1]")
    WebDriverWait(driver, TIMEOUT_S).until(expected_conditions.element_to_be_clickable(locator))
    driver.find_element(*locator).click()


def test_plot_entry_renders_as_an_image(
    report_html: Path, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report_html.as_uri())
    _click_text(browser, "Training time")
    _click_text(browser, "Train time vs epochs")
    _open_entry(browser, "8")  # the "batch" label of train_time_b8.png

    def shown_plot(driver: Any) -> dict[str, Any] | None:
        size = driver.execute_script(
            """
            const img = document.querySelector("img[src^='data:image/png']");
            if (!img || !img.complete) return null;
            const box = img.getBoundingClientRect();
            return {natural: [img.naturalWidth, img.naturalHeight],
                    shown: [box.width, box.height], name: img.src.slice(0, 120)};
            """
        )
        return size if size and size["natural"][0] > 0 else None

    plot = WebDriverWait(browser, TIMEOUT_S).until(shown_plot)
    screenshot = tmp_path / "report-plot.png"
    assert browser.save_screenshot(str(screenshot))
    with capsys.disabled():
        print(f"\nscreenshot of the report's plot entry: {screenshot}")
    assert "train_time_b8.png" in plot["name"], plot
    natural_w, natural_h = plot["natural"]
    shown_w, shown_h = plot["shown"]
    assert natural_w >= MIN_PLOT_PX[0] and natural_h >= MIN_PLOT_PX[1], plot
    assert shown_w >= 300 and shown_h >= 200, f"the plot is not displayed at a usable size: {plot}"
    assert browser.find_element(By.XPATH, "//*[contains(., 'Train time vs epochs')]")


def test_study_table_entry_shows_the_table(report_html: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(report_html.as_uri())
    _click_text(browser, "Platforms")
    _click_text(browser, "Study tables (platform × model)")
    _open_entry(browser, "test-cpu")  # the first test-cpu row (its yolov3 table)
    frame = WebDriverWait(browser, TIMEOUT_S).until(
        lambda driver: driver.find_element(By.CSS_SELECTOR, "iframe[src^='data:text/html']")
    )
    browser.switch_to.frame(frame)
    headers = WebDriverWait(browser, TIMEOUT_S).until(
        lambda driver: [th.text for th in driver.find_elements(By.TAG_NAME, "th")] or None
    )
    assert headers[:4] == ["Batch", "Epochs", "User time (s)", "% CPU"]
    assert "Max RSS (kB)" in headers and "mAP@0.5" in headers
    rows = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 4  # batch {4, 8} x epochs {1, 2}
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("test-cpu — ")
