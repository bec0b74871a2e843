"""Per-part metrics of a merged dataset (detbench.evaluation.parts): a part's images and classes
scored as if alone, with hand-made detections whose scores are known."""

from __future__ import annotations

import numpy as np
import pytest

from detbench.data.merge import MergedPart
from detbench.evaluation.metrics import ImageDetections, ImageGroundTruth, evaluate_detections
from detbench.evaluation.parts import part_metrics

COCO = MergedPart("coco", "coco", ("person", "car"), ("person", "car"), 0, {"test": "val2017"})
BLOOD = MergedPart("blood", "synthetic", ("RBC", "WBC"), ("RBC", "WBC"), 2, {"test": "test"})
RAW = {
    "parts": [COCO.to_json(), BLOOD.to_json()],
    "splits": {
        "test": [
            {"id": "coco/1", "part": "coco"},
            {"id": "coco/2", "part": "coco"},
            {"id": "blood/1", "part": "blood"},
        ]
    },
}


def truth(boxes: list[list[float]], classes: list[int]) -> ImageGroundTruth:
    return ImageGroundTruth(boxes=np.array(boxes, float).reshape(-1, 4), classes=np.array(classes))


def found(boxes: list[list[float]], scores: list[float], classes: list[int]) -> ImageDetections:
    return ImageDetections(
        boxes=np.array(boxes, float).reshape(-1, 4),
        scores=np.array(scores, float),
        classes=np.array(classes),
    )


GROUND_TRUTH = {
    "coco/1": truth([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]),
    "coco/2": truth([[5, 5, 15, 15]], [0]),
    "blood/1": truth([[0, 0, 8, 8], [10, 10, 18, 18]], [2, 3]),
}
DETECTIONS = {
    # A hit on the person, a miss on the car, and a blood-cell class on a COCO image.
    "coco/1": found(
        [[0, 0, 10, 10], [60, 60, 70, 70], [20, 20, 40, 40]], [0.9, 0.8, 0.7], [0, 1, 2]
    ),
    "coco/2": found([[5, 5, 15, 15]], [0.6], [0]),
    # The RBC found; a 'car' on a blood smear (another part's class: not the blood part's).
    "blood/1": found([[0, 0, 8, 8], [10, 10, 18, 18]], [0.95, 0.9], [2, 1]),
}


def test_each_part_is_its_images_and_classes_alone() -> None:
    parts = part_metrics(
        RAW, "test", GROUND_TRUTH, DETECTIONS, pr_confidence=0.5, max_detections=10
    )
    assert set(parts) == {"coco", "blood"}
    coco = evaluate_detections(
        {k: GROUND_TRUTH[k] for k in ("coco/1", "coco/2")},
        {
            "coco/1": found([[0, 0, 10, 10], [60, 60, 70, 70]], [0.9, 0.8], [0, 1]),
            "coco/2": DETECTIONS["coco/2"],
        },
        ["person", "car"],
        pr_confidence=0.5,
        max_detections=10,
    )
    assert parts["coco"]["map50"] == pytest.approx(coco.map50) == 0.5  # person 1, car 0
    assert parts["coco"]["recall_at_conf"] == pytest.approx(0.5)
    assert parts["coco"]["num_images"] == 2 and parts["coco"]["split"] == "val2017"
    blood = parts["blood"]
    # The RBC is found; the WBC has only a COCO class on it, which does not count here.
    assert blood["map50"] == pytest.approx(0.5)
    assert blood["precision_at_conf"] == pytest.approx(0.5)  # RBC 1, WBC no detections: 0
    assert [c["name"] for c in blood["per_class"]] == ["RBC", "WBC"]
    assert [c["num_detections"] for c in blood["per_class"]] == [1, 0]


def test_a_single_dataset_has_no_parts() -> None:
    raw = {"splits": {"test": [{"id": "a"}]}}
    ground_truth = {"a": truth([[0, 0, 4, 4]], [0])}
    assert part_metrics(raw, "test", ground_truth, {}, pr_confidence=0.1, max_detections=5) == {}


def test_a_part_without_objects_in_the_split_has_no_metrics() -> None:
    ground_truth = dict(GROUND_TRUTH, **{"blood/1": truth([], [])})
    parts = part_metrics(RAW, "test", ground_truth, DETECTIONS, pr_confidence=0.5, max_detections=9)
    assert parts["blood"]["map50"] is None and parts["blood"]["num_images"] == 1
    assert parts["coco"]["map50"] == pytest.approx(0.5)
