"""Training from the page in a real browser (headless Chromium driven by Selenium, as in
test_web_browser.py): submit a tiny training with the token, watch its progress reach done,
follow "Test this model" and get that model's detections for an uploaded image."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
from browser import chromium
from test_web import ServerThread, http_post_detect, write_bccd_weights
from test_web_browser import save_screenshot, smear_file
from test_web_training import TIMEOUT_S, TOKEN, training_settings

from detbench.web import WebConfig, create_app

pytestmark = pytest.mark.slow


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    config = WebConfig(
        bccd_model=write_bccd_weights(tmp_path / "weights.pt"),
        device="cpu",
        training=training_settings(tmp_path),
    )
    app = create_app(config)
    try:
        with ServerThread(app) as running:
            yield running.url
    finally:
        app.extensions["detbench"]["training_queue"].close()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    with chromium(tmp_path, window_size="1280,1800", timeout_s=TIMEOUT_S) as driver:
        yield driver


def wait_for(driver: Any, script: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT_S, poll_frequency=0.5).until(
        lambda d: d.execute_script(script)
    )


def test_train_from_the_page_then_test_the_model(
    server: str, browser: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from selenium.webdriver.common.by import By

    browser.get(f"{server}/train")
    assert browser.find_element(By.ID, "epochs").get_attribute("value") == "1"
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "train").click()

    # Progress without reloading: the page polls until the run ends.
    seen_states = set()
    final = None
    for _ in range(TIMEOUT_S * 2):
        state = browser.find_element(By.ID, "run-state").get_attribute("data-state")
        seen_states.add(state)
        if state in ("done", "failed", "cancelled"):
            final = state
            break
        time.sleep(0.5)
    progress = browser.find_element(By.ID, "run-progress").text
    assert final == "done", (seen_states, progress, browser.find_element(By.ID, "run-log").text)
    assert "running" in seen_states
    assert progress.startswith("epoch 1 / 1; losses: box ") and "interim mAP@0.5" in progress
    evaluated = r"evaluated: mAP@0\.5 [01]\.\d{3}, mAP@0\.5:0\.95 [01]\.\d{3} on the test split"
    assert re.search(evaluated + r" \(2 images\)$", progress), progress
    assert browser.find_element(By.ID, "run-failure").get_attribute("hidden") is not None
    cell = browser.find_element(By.ID, "run-title").text.split(": ", 1)[1]
    assert cell.startswith("web-1/yolov3-tiny/b2_e1")
    save_screenshot(browser, tmp_path / "web-train-done.png", capsys)
    # The runs list (a reloaded page finds the run there) has it, done, with its test link.
    row = wait_for(
        browser,
        "const row = document.querySelector('#runs-table tbody tr');"
        "return row && row.textContent.includes('done') ? row.innerText : null;",
    )
    assert row.split() == ["1", cell, "done", "Test", "this", "model"], row

    # "Test this model": the upload page with the new cell chosen.
    browser.find_element(By.ID, "test-model").click()
    wait_for(browser, "return document.getElementById('cell') !== null;")
    assert browser.find_element(By.ID, "cell").get_attribute("value") == cell
    image_path = smear_file(tmp_path)
    browser.find_element(By.ID, "image").send_keys(str(image_path))
    # One epoch on four images leaves the model nearly untrained: its scores are far below the
    # default threshold, so the slider goes to its lowest (the evaluation's 0.001).
    browser.execute_script(
        "const s = document.getElementById('confidence'); s.value = s.min;"
        "s.dispatchEvent(new Event('input'));"
    )
    assert browser.find_element(By.ID, "confidence-value").text == "0.001"
    browser.find_element(By.ID, "predict").click()
    wait_for(
        browser,
        "const img = document.getElementById('annotated');"
        "return !document.getElementById('result').hidden && img.complete && img.naturalWidth;",
    )
    save_screenshot(browser, tmp_path / "web-train-tested.png", capsys)
    assert browser.find_element(By.ID, "summary").text.startswith(f"{cell} (yolov3-tiny): ")
    status, api = http_post_detect(server, image_path.read_bytes(), model=cell, confidence="0.001")
    assert status == 200 and api["model"] == cell and api["detections"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#detections tbody tr")
    assert len(rows) == len(api["detections"])
    first = rows[0].find_elements(By.TAG_NAME, "td")
    assert first[1].text == api["detections"][0]["class"]
    assert api["detections"][0]["class"] in ("RBC", "WBC", "Platelets")
    width, height = cv2.imread(str(image_path)).shape[1::-1]
    assert (api["width"], api["height"]) == (width, height)
