"""The model picker: every evaluated cell under --results served per request by its id, a
bounded cache of loaded models, cells appearing while the server runs."""

from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Any

import pytest
from test_web import (
    BLOOD,
    IMG_SIZE,
    encode,
    error_of,
    post_image,
    smear_image,
    write_bccd_weights,
    write_coco_weights,
)

from detbench.study.cells import Cell
from detbench.web import WebConfig, create_app

RIGGED_COUNTS = {"RBC": 16, "WBC": 16, "Platelets": 64}  # a 128 px image, see test_web.py


def write_cell(results: Path, cell: Cell, *, map50: float = 0.5, evaluated: bool = True) -> Path:
    """A finished cell (weights.pt, run.json, metrics.json) of the rigged blood-cell model."""
    folder = cell.folder(results)
    folder.mkdir(parents=True, exist_ok=True)
    write_bccd_weights(folder / "weights.pt")
    (folder / "run.json").write_text(json.dumps({"train_seconds": 12.5, "dataset": "rigged"}))
    if evaluated:
        metrics = {"dataset": "rigged", "split": "test", "metrics": {"map50": map50}}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


@pytest.fixture(scope="module")
def coco_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_coco_weights(tmp_path_factory.mktemp("coco") / "yolov3-tiny.weights")


def make_app(results: Path, coco_weights: Path, cache: int = 2) -> Any:
    config = WebConfig(
        coco_weights=coco_weights,
        coco_img_size=IMG_SIZE,
        device="cpu",
        results_dir=results,
        model_cache_size=cache,
    )
    return create_app(config)


def test_cells_are_listed_and_served_by_id(tmp_path: Path, coco_weights: Path) -> None:
    results = tmp_path / "results"
    write_cell(results, Cell("p40", "yolov3-tiny", 8, 20), map50=0.61)
    write_cell(results, Cell("p40", "yolov3-tiny", 8, 20, repeat=1), evaluated=False)
    app = make_app(results, coco_weights)
    client = app.test_client()

    listed = client.get("/api/models").get_json()
    ids = [model["id"] for model in listed["models"]]
    assert ids == ["coco", "p40/yolov3-tiny/b8_e20"]  # the unevaluated repeat is not finished
    cell = listed["models"][1]
    assert (cell["batch"], cell["epochs"], cell["map50"], cell["train_seconds"]) == (
        8,
        20,
        0.61,
        12.5,
    )
    assert listed["cache"] == {"capacity": 2, "loaded": []}

    image = encode(smear_image(IMG_SIZE, IMG_SIZE))
    response = post_image(client, image, model="p40/yolov3-tiny/b8_e20")
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert body["model"] == "p40/yolov3-tiny/b8_e20" and body["counts"] == RIGGED_COUNTS
    # The fixed keys keep working beside the cells.
    assert post_image(client, image, model="coco").status_code == 200
    for unknown in ("p40/yolov3/b1_e1", "../results/p40/yolov3-tiny/b8_e20", "p40//b8_e20"):
        message = error_of(post_image(client, image, model=unknown), 400)
        assert message.startswith(f"unknown model {unknown!r}: expected bccd, coco or a cell id")

    # A cell that finishes while the server runs is offered at once, on the page too.
    write_cell(results, Cell("web-1", "yolov3-tiny", 2, 1))
    ids = [model["id"] for model in client.get("/api/models").get_json()["models"]]
    assert "web-1/yolov3-tiny/b2_e1" in ids
    assert post_image(client, image, model="web-1/yolov3-tiny/b2_e1").status_code == 200
    page = client.get("/?model=web-1/yolov3-tiny/b2_e1").get_data(as_text=True)
    assert '<option value="web-1/yolov3-tiny/b2_e1" selected>' in page
    assert "p40/yolov3-tiny/b8_e20: rigged, mAP@0.5 0.610 (test split), trained 12 s" in page


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def _cached_parameter_mib(app: Any) -> float:
    picker = app.extensions["detbench"]["picker"]
    served = list(picker._cache.values())
    total = sum(p.numel() * p.element_size() for s in served for p in s.model.parameters())
    return total / 2**20


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_model_cache_bound_holds_with_more_cells_than_it_holds(
    tmp_path: Path, coco_weights: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results"
    cells = [Cell("p", "yolov3-tiny", 2, epochs) for epochs in range(1, 7)]  # 6 cells, room for 2
    for cell in cells:
        write_cell(results, cell)
    app = make_app(results, coco_weights, cache=2)
    picker = app.extensions["detbench"]["picker"]
    client = app.test_client()
    image = encode(smear_image(IMG_SIZE, IMG_SIZE))

    for cell in cells[:2]:
        assert post_image(client, image, model=cell.label()).status_code == 200
    gc.collect()
    one_model_mib = _cached_parameter_mib(app) / 2
    full = _rss_mib()
    peak_cached = 0.0
    for _ in range(2):
        for cell in cells:
            assert post_image(client, image, model=cell.label()).status_code == 200
            assert len(picker.loaded()) <= 2
            peak_cached = max(peak_cached, _cached_parameter_mib(app))
    gc.collect()
    grown = _rss_mib() - full
    assert picker.loaded() == [cells[-2].label(), cells[-1].label()]
    with capsys.disabled():
        print(
            f"\nmodel cache of 2 over 6 yolov3-tiny cells: parameters held at most "
            f"{peak_cached:.1f} MiB (one model {one_model_mib:.1f} MiB); resident memory grew "
            f"{grown:.1f} MiB after 12 more loads"
        )
    assert peak_cached <= 2 * one_model_mib + 0.1
    # Without the bound, 4 more models would stay resident.
    assert grown < 2 * one_model_mib, f"RSS grew {grown:.0f} MiB"


def test_blood_cell_classes_do_not_limit_cells(tmp_path: Path, coco_weights: Path) -> None:
    """A cell trained on an uploaded dataset detects its own classes."""
    from test_web import rig_model

    from detbench.evaluation.inference import save_trained_model
    from detbench.models import build_model

    results = tmp_path / "results"
    folder = write_cell(results, Cell("web-2", "yolov3-tiny", 2, 1))
    model = rig_model(build_model("yolov3-tiny", num_classes=3), (0, 1, 2))
    metadata = {"model": "yolov3-tiny", "class_names": ["cat", "dog", "fox"], "img_size": IMG_SIZE}
    save_trained_model(folder / "weights.pt", model, metadata)
    client = make_app(results, coco_weights).test_client()
    body = post_image(
        client, encode(smear_image(IMG_SIZE, IMG_SIZE)), model="web-2/yolov3-tiny/b2_e1"
    )
    assert body.get_json()["counts"] == {"cat": 16, "dog": 16, "fox": 64}
    assert set(BLOOD).isdisjoint(body.get_json()["counts"])
