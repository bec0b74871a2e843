"""Evaluating one trained cell: metrics.json says what was measured and how, detections.json is
COCO results whose image ids are the sorted image ids, and bad inputs give one-line errors."""

from __future__ import annotations

import copy
import json
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pytest
import torch

from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.errors import DetbenchError
from detbench.evaluation.evaluate import evaluate_cell, predict_split
from detbench.evaluation.inference import load_trained_model
from detbench.study.config import EvalSettings, TrainHyperparameters
from detbench.training.train import TrainOutputs

SETTINGS = EvalSettings(max_detections=20, batch_size=3)
HYP = TrainHyperparameters(workers=0)
CELL = {"platform": "test-cpu", "model": "yolov3-tiny", "batch": "4", "epochs": "2"}


@pytest.fixture(scope="module")
def evaluated(
    tiny_trained_cell: tuple[TrainOutputs, dict],
    synthetic_manifest: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Any]:
    outputs, _ = tiny_trained_cell
    folder = tmp_path_factory.mktemp("evaluated")
    threads = torch.get_num_threads()
    try:
        result = evaluate_cell(
            outputs.weights,
            synthetic_manifest,
            "test",
            SETTINGS,
            HYP,
            folder / "metrics.json",
            folder / "detections.json",
            cell=CELL,
            threads=1,
        )
    finally:
        torch.set_num_threads(threads)
    return {
        "result": result,
        "metrics": json.loads((folder / "metrics.json").read_text(encoding="utf-8")),
        "detections": json.loads((folder / "detections.json").read_text(encoding="utf-8")),
        "weights": outputs.weights,
    }


def test_metrics_json_says_what_was_measured(evaluated: dict[str, Any]) -> None:
    metrics = evaluated["metrics"]
    assert metrics == evaluated["result"]
    assert metrics["split"] == "test" and metrics["num_images"] == 4
    assert metrics["dataset"] == "synthetic-test"
    assert metrics["cell"] == CELL
    assert metrics["img_size"] == 64
    assert metrics["nms"] == {
        "conf_threshold": SETTINGS.conf_threshold,
        "iou_threshold": SETTINGS.nms_iou,
        "max_detections_per_image": SETTINGS.max_detections,
    }
    values = metrics["metrics"]
    for key in ("map50", "map50_95", "precision_at_conf", "recall_at_conf"):
        assert 0.0 <= values[key] <= 1.0, key
    assert values["pr_confidence"] == SETTINGS.pr_confidence
    assert [c["name"] for c in values["per_class"]] == ["RBC", "WBC", "Platelets"]
    assert set(values["definitions"]) >= {"map50", "map50_95", "precision_at_conf"}
    assert set(metrics["val_loss"]) == {"box", "obj", "cls"}
    assert all(np.isfinite(v) and v > 0 for v in metrics["val_loss"].values())
    assert "test split" in metrics["val_loss_definition"]
    assert metrics["eval_seconds"] > 0


def test_detections_json_is_coco_results(
    evaluated: dict[str, Any], synthetic_manifest: Path
) -> None:
    detections = evaluated["detections"]
    records = {r.id: r for r in DatasetManifest.load(synthetic_manifest).records("test")}
    sizes = {i + 1: records[image_id] for i, image_id in enumerate(sorted(records))}
    assert detections, "an untrained-ish model at conf 0.001 still detects something"
    per_image: dict[int, int] = {}
    for entry in detections:
        assert set(entry) == {"image_id", "category_id", "bbox", "score"}
        assert entry["image_id"] in sizes
        assert entry["category_id"] in (1, 2, 3)
        x, y, w, h = entry["bbox"]
        record = sizes[entry["image_id"]]
        assert w >= 0 and h >= 0
        assert x >= 0 and x + w <= record.width + 1e-3
        assert y >= 0 and y + h <= record.height + 1e-3
        assert SETTINGS.conf_threshold <= entry["score"] <= 1
        per_image[entry["image_id"]] = per_image.get(entry["image_id"], 0) + 1
    assert max(per_image.values()) <= SETTINGS.max_detections


def test_detection_image_ids_are_the_sorted_image_ids(
    evaluated: dict[str, Any], synthetic_manifest: Path
) -> None:
    """Each COCO image id k holds exactly the detections of the k-th image id in sorted order."""
    model, metadata = load_trained_model(evaluated["weights"])
    records = DatasetManifest.load(synthetic_manifest).records("test")
    # Reversed order: the mapping must not depend on the order images are evaluated in.
    dataset = DetectionDataset(records[::-1], int(metadata["img_size"]))
    found, _, _ = predict_split(model, dataset, SETTINGS, HYP, torch.device("cpu"), amp=False)
    by_coco_id: dict[int, list[dict[str, Any]]] = {}
    for entry in evaluated["detections"]:
        by_coco_id.setdefault(entry["image_id"], []).append(entry)
    for coco_id, image_id in enumerate(sorted(found), start=1):
        expected = found[image_id]
        got = by_coco_id.get(coco_id, [])
        assert len(got) == len(expected), image_id
        boxes = np.array([e["bbox"] for e in got]).reshape(-1, 4)
        xywh = expected.boxes.copy()
        xywh[:, 2:] -= xywh[:, :2]
        np.testing.assert_allclose(boxes, xywh, atol=2e-3)
        np.testing.assert_allclose([e["score"] for e in got], expected.scores, atol=1e-4)
        assert [e["category_id"] - 1 for e in got] == expected.classes.tolist()


def test_detections_load_into_pycocotools(
    evaluated: dict[str, Any], synthetic_manifest: Path
) -> None:
    coco_module = pytest.importorskip("pycocotools.coco")
    from coco_reference import to_coco_ground_truth

    from detbench.evaluation.metrics import ImageGroundTruth

    records = DatasetManifest.load(synthetic_manifest).records("test")
    gt = to_coco_ground_truth(
        {r.id: ImageGroundTruth(boxes=r.boxes_xyxy(), classes=r.classes) for r in records},
        ["RBC", "WBC", "Platelets"],
        {r.id: (r.width, r.height) for r in records},
    )
    coco = coco_module.COCO()
    coco.dataset = gt
    coco.createIndex()
    # loadRes raises on image ids not in the ground truth (and adds keys to what it is given).
    results = coco.loadRes(copy.deepcopy(evaluated["detections"]))
    assert len(results.getAnnIds()) == len(evaluated["detections"])


@pytest.mark.usefixtures("torch_threads")
def test_evaluation_is_deterministic(
    evaluated: dict[str, Any], synthetic_manifest: Path, tmp_path: Path
) -> None:
    again = evaluate_cell(
        evaluated["weights"],
        synthetic_manifest,
        "test",
        SETTINGS,
        HYP,
        tmp_path / "metrics.json",
        tmp_path / "detections.json",
        cell=CELL,
        threads=1,
    )
    first = {k: v for k, v in evaluated["metrics"].items() if k != "eval_seconds"}
    assert {k: v for k, v in again.items() if k != "eval_seconds"} == first
    detections = json.loads((tmp_path / "detections.json").read_text(encoding="utf-8"))
    assert detections == evaluated["detections"]


def test_class_names_must_match_the_dataset(
    evaluated: dict[str, Any], synthetic_manifest: Path, tmp_path: Path
) -> None:
    raw = json.loads(synthetic_manifest.read_text(encoding="utf-8"))
    raw["class_names"] = ["cat", "dog", "bird"]
    raw["label_dir"] = str(synthetic_manifest.parent / raw["label_dir"])
    other = tmp_path / "manifest.json"
    other.write_text(json.dumps(raw), encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        evaluate_cell(
            evaluated["weights"],
            other,
            "test",
            SETTINGS,
            HYP,
            tmp_path / "m.json",
            tmp_path / "d.json",
        )
    message = str(info.value)
    assert "\n" not in message and str(evaluated["weights"]) in message and "cat" in message
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("problem", ["missing", "not a weights file", "a pickle of other objects"])
def test_bad_weights_file_is_a_one_line_error(
    synthetic_manifest: Path, tmp_path: Path, problem: str
) -> None:
    weights = tmp_path / "weights.pt"
    if problem == "not a weights file":
        weights.write_bytes(b"PK\x03\x04 not really")
    elif problem == "a pickle of other objects":
        # torch refuses it under weights_only=True, with a long multi-line explanation
        torch.save({"format": "detbench-weights-v1", "path": PurePosixPath("x")}, weights)
    with pytest.raises(DetbenchError) as info:
        evaluate_cell(
            weights,
            synthetic_manifest,
            "test",
            SETTINGS,
            HYP,
            tmp_path / "m.json",
            tmp_path / "d.json",
        )
    assert str(info.value).startswith(f"{weights}: ") and "\n" not in str(info.value)


def test_missing_manifest_is_a_one_line_error(evaluated: dict[str, Any], tmp_path: Path) -> None:
    manifest = evaluated["weights"].parent  # not a dataset folder
    with pytest.raises(DetbenchError, match=r"manifest\.json: dataset manifest does not exist"):
        evaluate_cell(
            evaluated["weights"],
            manifest,
            "test",
            SETTINGS,
            HYP,
            tmp_path / "m.json",
            tmp_path / "d.json",
        )


def test_unknown_split_is_a_one_line_error(
    evaluated: dict[str, Any], synthetic_manifest: Path, tmp_path: Path
) -> None:
    with pytest.raises(DetbenchError, match=r"manifest\.json: no split 'holdout'"):
        evaluate_cell(
            evaluated["weights"],
            synthetic_manifest,
            "holdout",
            SETTINGS,
            HYP,
            tmp_path / "m.json",
            tmp_path / "d.json",
        )


@pytest.mark.usefixtures("torch_threads")
def test_cocoeval_on_detections_json_gives_metrics_json(tmp_path: Path) -> None:
    """pycocotools' COCOeval reading a cell's detections.json scores exactly what metrics.json
    reports. A cell trained one epoch is the hard case: its many low scores lie close together
    (rounded, they would tie and rank otherwise) and its boxes sit near the IoU thresholds."""
    coco_module = pytest.importorskip("pycocotools.coco")
    cocoeval_module = pytest.importorskip("pycocotools.cocoeval")
    from coco_reference import to_coco_ground_truth

    from detbench.data.synthetic import generate_synthetic_voc
    from detbench.data.voc import convert_voc_to_yolo
    from detbench.evaluation.metrics import ImageGroundTruth
    from detbench.study.config import TrainSettings
    from detbench.training.train import train

    # 16 test images: with the usual 4, a one-epoch model places no box well enough.
    classes = ["RBC", "WBC", "Platelets"]
    generate_synthetic_voc(
        tmp_path / "voc", num_images={"train": 8, "test": 16}, image_size=(128, 96), seed=0
    )
    convert_voc_to_yolo(
        tmp_path / "voc", tmp_path / "yolo", class_names=classes, splits=["train", "test"],
        dataset_name="synthetic-16",
    )
    manifest = tmp_path / "yolo" / "manifest.json"
    # No EMA and no warm-up: the evaluated weights are the trained ones, which place a few
    # boxes on objects (an untrained model's mAP is 0 both ways and would prove nothing).
    hyp = TrainHyperparameters(workers=0, ema=False, warmup_epochs=0)
    settings = TrainSettings("yolov3-tiny", batch=4, epochs=1, img_size=64, seed=0, hyp=hyp)
    outputs = TrainOutputs.in_folder(tmp_path / "cell")
    train(settings, manifest, outputs, threads=1)
    evaluation = EvalSettings()
    metrics_path, detections_path = tmp_path / "metrics.json", tmp_path / "detections.json"
    evaluate_cell(
        outputs.weights, manifest, "test", evaluation, hyp, metrics_path,
        detections_path, cell=CELL, threads=1,
    )
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))["metrics"]
    assert metrics["map50"] > 0 and metrics["map50_95"] > 0, metrics

    records = DatasetManifest.load(manifest).records("test")
    coco = coco_module.COCO()
    coco.dataset = to_coco_ground_truth(
        {r.id: ImageGroundTruth(boxes=r.boxes_xyxy(), classes=r.classes) for r in records},
        classes,
        {r.id: (r.width, r.height) for r in records},
    )
    coco.createIndex()
    evaluator = cocoeval_module.COCOeval(coco, coco.loadRes(str(detections_path)), "bbox")
    evaluator.params.maxDets = [1, 10, evaluation.max_detections]
    evaluator.evaluate()
    evaluator.accumulate()
    precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (IoU, recall, class), area all
    map50 = float(precision[0][precision[0] > -1].mean())
    map50_95 = float(precision[precision > -1].mean())
    assert metrics["map50"] == pytest.approx(map50, rel=0, abs=1e-9)
    assert metrics["map50_95"] == pytest.approx(map50_95, rel=0, abs=1e-9)
