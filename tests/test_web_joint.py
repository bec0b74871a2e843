"""The web app serving one joint model (a cell trained on a merged dataset: COCO's 80 classes
then the blood cells): both API models answer from it, each with its own classes, and the page's
Blood cells checkbox filters them. The model is rigged as in test_web.py: a real YOLOv3-tiny
with 83 classes whose detection convs predict known boxes whatever the image."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from test_web import (
    BLOOD,
    IMG_SIZE,
    encode,
    expected_detections,
    post_image,
    rig_model,
    smear_image,
)

from detbench.data.coco import COCO_CLASSES
from detbench.errors import DetbenchError
from detbench.evaluation.inference import save_trained_model
from detbench.models import build_model
from detbench.web import WebConfig, create_app
from detbench.web.registry import InferenceSettings

JOINT_CLASSES = [*COCO_CLASSES, *BLOOD]
# Rigged: RBC (81x82 px boxes), person (60 px) and Platelets (23x27 px) in every grid cell.
RIGGED = ("RBC", "person", "Platelets")


def write_joint_weights(path: Path, classes: list[str] = JOINT_CLASSES) -> Path:
    indices = tuple(classes.index(name) for name in RIGGED)
    model = rig_model(build_model("yolov3-tiny", num_classes=len(classes)), indices)
    metadata = {
        "model": "yolov3-tiny",
        "class_names": classes,
        "img_size": IMG_SIZE,
        "dataset": "joint",
        "epochs": 1,
        "batch": 1,
    }
    save_trained_model(path, model, metadata)
    return path


@pytest.fixture(scope="module")
def joint_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    path = write_joint_weights(tmp_path_factory.mktemp("joint") / "weights.pt")
    return create_app(WebConfig(joint_model=path, device="cpu"))


def detect(app: Any, side: int, **fields: str) -> dict[str, Any]:
    response = post_image(app.test_client(), encode(smear_image(side, side)), **fields)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def test_one_model_serves_blood_cells_and_common_objects(joint_app: Any) -> None:
    registry = joint_app.extensions["detbench"]["registry"]
    bccd, coco = registry.get("bccd"), registry.get("coco")
    assert bccd.served is coco.served  # one model in memory
    blood = detect(joint_app, 128, model="bccd")
    objects = detect(joint_app, 128, model="coco")
    assert blood["model"] == "bccd" and objects["model"] == "coco"
    assert blood["counts"] == {"RBC": 16, "Platelets": 64}
    assert objects["counts"] == {"person": 16}
    expected = expected_detections(128, RIGGED)
    found = sorted(
        (d["class"], tuple(d["box"])) for d in blood["detections"] + objects["detections"]
    )
    assert [name for name, _ in found] == [name for name, _ in expected]
    for (_, box), (_, want) in zip(found, expected, strict=True):
        assert box == pytest.approx(want, abs=0.06)


def test_the_default_model_and_the_confidence_keep_their_meaning(joint_app: Any) -> None:
    # No model field: the first available slot, bccd, as with two models.
    body = detect(joint_app, 96, confidence="0.5")
    assert body["model"] == "bccd" and body["counts"] == {"RBC": 16}
    assert all(d["score"] > 0.5 for d in body["detections"])


def test_each_view_caps_its_own_detections(joint_app: Any) -> None:
    registry = joint_app.extensions["detbench"]["registry"]
    view = registry.get("bccd")
    image = smear_image(128, 128)
    capped = view.predict(image, 0.25, InferenceSettings(max_detections=20))
    # The person boxes score higher than the platelets: a cap over all classes would leave
    # fewer blood cells than the 20 the view keeps of its own.
    assert len(capped.detections) == 20
    assert Counter(capped.labels()) == {"RBC": 16, "Platelets": 4}


def test_healthz_and_page_say_one_joint_model(joint_app: Any) -> None:
    client = joint_app.test_client()
    health = client.get("/healthz").get_json()
    assert health["models"]["bccd"]["joint"] and health["models"]["coco"]["joint"]
    assert health["models"]["bccd"]["classes"] == list(BLOOD)
    assert health["models"]["coco"]["classes"] == list(COCO_CLASSES)
    page = client.get("/").get_data(as_text=True)
    assert 'id="joint-model"' in page and "83 classes" in page
    checkbox = page[page.index('id="blood-cells"') :].split(">", 1)[0]
    assert "disabled" not in checkbox  # both views available: the filter can be switched


def test_a_model_without_blood_cells_is_refused(tmp_path: Path) -> None:
    path = write_joint_weights(tmp_path / "w.pt", [*COCO_CLASSES[:2], "x", "y", "RBC", "Platelets"])
    with pytest.raises(DetbenchError, match="a joint model must know the blood-cell classes"):
        create_app(WebConfig(joint_model=path, device="cpu"))


def test_serve_takes_a_joint_model_instead_of_the_two(tmp_path: Path) -> None:
    from detbench.cli import build_parser, serve_config

    path = write_joint_weights(tmp_path / "w.pt")
    config = serve_config(build_parser().parse_args(["serve", "--joint-model", str(path)]))
    assert config.joint_model == path and config.bccd_model is None
    args = build_parser().parse_args(
        ["serve", "--joint-model", str(path), "--coco-weights", str(path)]
    )
    with pytest.raises(DetbenchError, match="--joint-model serves both models"):
        serve_config(args)


def test_the_best_blood_cell_cell_is_never_a_joint_one(tmp_path: Path) -> None:
    import json

    from detbench.web.registry import best_bccd_cell

    rows = [("joint", 8, 0.9), ("synthetic", 4, 0.5)]  # the joint cell scores higher overall
    for dataset, batch, _ in rows:
        folder = tmp_path / f"p/yolov3-tiny/b{batch}_e2"
        folder.mkdir(parents=True)
        (folder / "weights.pt").write_bytes(b"w")
        metrics = {"parts": {"bccd": {}}} if dataset == "joint" else {}
        (folder / "metrics.json").write_text(json.dumps(metrics))
    lines = ["platform,model,batch,epochs,dataset,eval_split,map50"]
    lines += [f"p,yolov3-tiny,{b},2,{d},test,{m}" for d, b, m in rows]
    (tmp_path / "summary.csv").write_text("\n".join(lines) + "\n")
    best = best_bccd_cell(tmp_path)
    assert (best.dataset, best.batch) == ("synthetic", 4)
