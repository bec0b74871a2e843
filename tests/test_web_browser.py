"""The upload page in a real browser: headless Chromium driven by Selenium.

Selenium talks to Debian's ``chromedriver`` (package chromium-driver, same version as the
``chromium`` package), given by path, so Selenium Manager never runs and nothing is downloaded.
(Playwright would also work with ``executable_path``, but its wheel bundles a Node.js driver
and expects its own browser builds; Selenium + the distribution's driver is the smaller, version-
matched pair.)

The app serves a rigged blood-cell model (see test_web.py) that finds cells in any image, so
the page must show boxes and counts; the counts shown are compared with what the JSON API
answers for the same file and threshold.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from browser import chromium
from test_web import (
    BLOOD,
    IMG_SIZE,
    ServerThread,
    http_post_detect,
    smear_image,
    write_bccd_weights,
    write_coco_weights,
)

from detbench.web import WebConfig, create_app

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BCCD_DIR = Path(os.environ.get("DETBENCH_BCCD_DIR", REPO.parent / "shared" / "data" / "bccd"))
TIMEOUT_S = 120  # the CPU is shared with other jobs; a prediction normally takes ~1 s


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("browser-models")
    config = WebConfig(
        bccd_model=write_bccd_weights(folder / "weights.pt"),
        coco_weights=write_coco_weights(folder / "yolov3-tiny.weights"),
        coco_img_size=IMG_SIZE,
        device="cpu",
    )
    with ServerThread(create_app(config)) as running:
        yield running.url


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path, window_size="1280,1800", timeout_s=TIMEOUT_S) as driver:
        yield driver


def smear_file(folder: Path) -> Path:
    """A real BCCD image when the shared data is here, else a synthetic smear."""
    real = BCCD_DIR / "JPEGImages" / "BloodImage_00000.jpg"
    if real.is_file():
        return real
    path = folder / "synthetic-smear.jpg"
    cv2.imwrite(str(path), smear_image(640, 480))
    return path


def wait_for(driver: Any, script: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.2).until(
        lambda d: d.execute_script(script)
    )


def save_screenshot(driver: Any, path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = os.environ.get("DETBENCH_SCREENSHOT_DIR")
    if folder:
        path = Path(folder) / path.name
        path.parent.mkdir(parents=True, exist_ok=True)
    assert driver.save_screenshot(str(path))
    with capsys.disabled():
        print(f"\nscreenshot of the result page: {path}")


def test_count_blood_cells_in_the_browser(
    server: str, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By

    image_path = smear_file(tmp_path)
    width, height = cv2.imread(str(image_path)).shape[1::-1]
    browser.get(server)
    checkbox = browser.find_element(By.ID, "blood-cells")
    assert checkbox.is_enabled() and not checkbox.is_selected()  # both models: COCO by default
    assert browser.find_element(By.ID, "confidence").get_attribute("value") == "0.25"

    browser.find_element(By.ID, "image").send_keys(str(image_path))
    checkbox.click()
    assert checkbox.is_selected()
    browser.find_element(By.ID, "predict").click()

    natural = wait_for(
        browser,
        "const img = document.getElementById('annotated');"
        "return !document.getElementById('result').hidden && img.complete"
        " && img.naturalWidth > 0 ? [img.naturalWidth, img.naturalHeight] : null;",
    )
    save_screenshot(browser, tmp_path / "web-browser-result.png", capsys)
    assert natural == [width, height]  # the whole image, annotated (<= 1280 px: not scaled)
    assert browser.find_element(By.ID, "error").get_attribute("hidden") is not None

    status, api = http_post_detect(server, image_path.read_bytes(), model="bccd", confidence="0.25")
    assert status == 200
    assert sum(api["counts"].values()) > 0  # the rigged model always finds cells
    expected = ", ".join(f"{name}: {api['counts'].get(name, 0)}" for name in BLOOD)
    assert browser.find_element(By.ID, "counts").text == expected
    rows = browser.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
    assert len(rows) == len(api["detections"])
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[1].text == api["detections"][0]["class"]
    assert "Blood cells" in browser.find_element(By.ID, "summary").text


def test_page_shows_the_api_error_for_a_non_image(
    server: str, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By

    not_an_image = tmp_path / "notes.jpg"
    not_an_image.write_text("just text\n")
    browser.get(server)
    browser.find_element(By.ID, "image").send_keys(str(not_an_image))
    browser.find_element(By.ID, "predict").click()
    message = wait_for(
        browser,
        "const e = document.getElementById('error'); return e.hidden ? null : e.textContent;",
    )
    assert message.startswith("image: not a supported image")
    assert browser.find_element(By.ID, "result").get_attribute("hidden") is not None
