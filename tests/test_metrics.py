"""Tests for detbench.evaluation.metrics: hand-computed cases and agreement with pycocotools'
COCOeval."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from coco_reference import to_coco_ground_truth

from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.data.prepare import convert_dataset, prepare_voc_dataset
from detbench.evaluation.evaluate import predict_split
from detbench.evaluation.inference import load_trained_model
from detbench.evaluation.metrics import (
    IOU_THRESHOLDS,
    RECALL_THRESHOLDS,
    DetectionMetrics,
    ImageDetections,
    ImageGroundTruth,
    coco_image_ids,
    evaluate_detections,
    to_coco_results,
)
from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
from detbench.training.train import TrainOutputs, train

pycocotools_coco = pytest.importorskip("pycocotools.coco")
pycocotools_cocoeval = pytest.importorskip("pycocotools.cocoeval")


def gt(boxes: list[list[float]], classes: list[int]) -> ImageGroundTruth:
    return ImageGroundTruth(np.array(boxes, dtype=float), np.array(classes))


def det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> ImageDetections:
    return ImageDetections(np.array(boxes, dtype=float), np.array(scores), np.array(classes))


BOX_A = [0.0, 0.0, 10.0, 10.0]
BOX_B = [20.0, 20.0, 40.0, 30.0]
FAR = [100.0, 100.0, 110.0, 110.0]


# --------------------------------------------------------------------------------------------
# Hand-made cases


def test_perfect_detections_score_one_everywhere() -> None:
    truth = {"img1": gt([BOX_A, BOX_B], [0, 1]), "img2": gt([BOX_B], [1])}
    dets = {
        "img1": det([BOX_A, BOX_B], [0.9, 0.8], [0, 1]),
        "img2": det([BOX_B], [0.7], [1]),
    }
    m = evaluate_detections(truth, dets, ["a", "b"])
    # Not exactly 1: like pycocotools, precision is tp / (tp + fp + machine epsilon).
    assert m.map50 == pytest.approx(1.0)
    assert m.map50_95 == pytest.approx(1.0)
    assert m.precision_at_conf == 1.0
    assert m.recall_at_conf == 1.0
    assert m.best_f1 == 1.0
    assert [c.ap50_95 for c in m.per_class] == pytest.approx([1.0, 1.0])
    assert [c.num_ground_truth for c in m.per_class] == [1, 2]
    assert m.num_images == 2 and m.num_ground_truth == 3 and m.num_detections == 3


def test_false_positive_scored_above_the_true_positive_halves_ap() -> None:
    # Sorted: FP (0.9) then TP (0.8): precision [0, 1/2] -> envelope [1/2, 1/2] -> AP 1/2.
    m = evaluate_detections(
        {"i": gt([BOX_A], [0])}, {"i": det([FAR, BOX_A], [0.9, 0.8], [0, 0])}, ["a"]
    )
    assert m.map50 == pytest.approx(0.5)
    assert m.map50_95 == pytest.approx(0.5)


def test_missed_object_caps_recall_at_half() -> None:
    # Recall reaches 0.5 with precision 1: the recall thresholds 0.00..0.50 (51 of 101) score 1.
    m = evaluate_detections(
        {"i": gt([BOX_A, BOX_B], [0, 0])}, {"i": det([BOX_A], [0.9], [0])}, ["a"]
    )
    assert np.count_nonzero(RECALL_THRESHOLDS <= 0.5) == 51
    assert m.map50 == pytest.approx(51 / 101)
    assert m.precision_at_conf == 1.0
    assert m.recall_at_conf == 0.5


def test_class_without_ground_truth_is_left_out_of_the_means() -> None:
    truth = {"i": gt([BOX_A], [0])}
    dets = {"i": det([BOX_A, BOX_B, FAR], [0.9, 0.8, 0.7], [0, 1, 1])}
    m = evaluate_detections(truth, dets, ["a", "b"])
    assert m.map50 == pytest.approx(1.0) and m.map50_95 == pytest.approx(1.0)
    assert m.precision_at_conf == 1.0 and m.recall_at_conf == 1.0
    b = m.per_class[1]
    assert (b.name, b.num_ground_truth, b.num_detections) == ("b", 0, 2)
    assert b.ap50 is None and b.ap50_95 is None and b.recall_at_conf is None
    as_dict = m.to_dict()
    json.dumps(as_dict, allow_nan=False)  # no NaN anywhere
    assert as_dict["per_class"][1]["ap50"] is None


def test_duplicate_detection_is_a_false_positive() -> None:
    # Two objects; the first is detected twice. TP, FP, TP: precision [1, 1/2, 2/3] -> envelope
    # [1, 2/3, 2/3]; recall [1/2, 1/2, 1]: 51 thresholds at 1, 50 at 2/3.
    truth = {"i": gt([BOX_A, BOX_B], [0, 0])}
    dets = {"i": det([BOX_A, BOX_A, BOX_B], [0.9, 0.8, 0.7], [0, 0, 0])}
    m = evaluate_detections(truth, dets, ["a"])
    assert m.map50 == pytest.approx((51 + 50 * 2 / 3) / 101)
    assert m.precision_at_conf == pytest.approx(2 / 3)
    assert m.recall_at_conf == 1.0


def test_iou_055_counts_at_thresholds_050_and_055_only() -> None:
    # Inside the ground truth, IoU = 55 / 100 exactly; pycocotools accepts IoU >= threshold.
    m = evaluate_detections(
        {"i": gt([BOX_A], [0])}, {"i": det([[0.0, 0.0, 10.0, 5.5]], [0.9], [0])}, ["a"]
    )
    assert IOU_THRESHOLDS[1] == 0.55
    assert m.map50 == pytest.approx(1.0)
    assert m.map50_95 == pytest.approx(2 / 10)


def test_precision_recall_at_confidence_ignores_detections_below_it() -> None:
    truth = {"i": gt([BOX_A, BOX_B, FAR, [50, 50, 60, 60]], [0, 0, 0, 0])}
    dets = {
        "i": det(
            [BOX_A, BOX_B, [200, 200, 210, 210], FAR, [300, 300, 310, 310]],
            [0.9, 0.5, 0.3, 0.05, 0.02],
            [0, 0, 0, 0, 0],
        )
    }
    m = evaluate_detections(truth, dets, ["a"])
    assert m.pr_confidence == 0.1
    assert m.precision_at_conf == pytest.approx(2 / 3)  # 2 TP among the 3 scored >= 0.1
    assert m.recall_at_conf == pytest.approx(2 / 4)
    low = evaluate_detections(truth, dets, ["a"], pr_confidence=0.0)
    assert low.precision_at_conf == pytest.approx(3 / 5)
    assert low.recall_at_conf == pytest.approx(3 / 4)


def test_best_f1_confidence_is_the_lowest_confidence_reaching_the_best_f1() -> None:
    # TP 0.9, TP 0.8, FP 0.4005, FP 0.2 for two objects: F1 = 1 once both FPs are dropped,
    # i.e. from confidence 0.401 up to 0.8.
    truth = {"i": gt([BOX_A, BOX_B], [0, 0])}
    dets = {"i": det([BOX_A, BOX_B, FAR, FAR], [0.9, 0.8, 0.4005, 0.2], [0, 0, 0, 0])}
    m = evaluate_detections(truth, dets, ["a"])
    assert m.best_f1 == pytest.approx(1.0)
    assert m.best_f1_confidence == pytest.approx(0.401)
    assert m.precision_at_best_f1 == 1.0 and m.recall_at_best_f1 == 1.0
    assert m.precision_at_conf == pytest.approx(2 / 4)  # both FPs count at confidence 0.1
    assert m.per_class[0].precision_at_best_f1 == 1.0


def test_image_without_detections_entry_counts_its_objects_as_missed() -> None:
    truth = {"i1": gt([BOX_A], [0]), "i2": gt([BOX_B], [0])}
    m = evaluate_detections(truth, {"i1": det([BOX_A], [0.9], [0])}, ["a"])
    assert m.recall_at_conf == 0.5
    assert m.num_images == 2


def test_to_dict_is_json_with_clear_keys() -> None:
    m = evaluate_detections({"i": gt([BOX_A], [0])}, {"i": det([BOX_A], [0.9], [0])}, ["a"])
    d = m.to_dict()
    json.dumps(d, allow_nan=False)
    for key in (
        "map50",
        "map50_95",
        "precision_at_conf",
        "recall_at_conf",
        "pr_confidence",
        "best_f1",
        "best_f1_confidence",
        "precision_at_best_f1",
        "recall_at_best_f1",
    ):
        assert key in d and key in d["definitions"]
    assert d["pr_iou_threshold"] == 0.5
    assert len(d["iou_thresholds"]) == 10
    assert isinstance(m, DetectionMetrics)


@pytest.mark.parametrize(
    ("truth", "dets", "match"),
    [
        ({"i": gt([BOX_A], [0])}, {"j": det([BOX_A], [0.9], [0])}, "without ground truth"),
        ({"i": gt([BOX_A], [0])}, {"i": det([BOX_A], [0.9], [2])}, "class index"),
        ({"i": gt([BOX_A], [2])}, {}, "class index"),
        ({"i": gt([], [])}, {}, "no objects"),
    ],
)
def test_invalid_inputs_raise_value_error(truth, dets, match) -> None:
    with pytest.raises(ValueError, match=match):
        evaluate_detections(truth, dets, ["a", "b"])


def test_malformed_arrays_raise_value_error() -> None:
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        ImageGroundTruth(np.zeros((2, 5)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="x2 >= x1"):
        ImageGroundTruth(np.array([[10.0, 0, 0, 10]]), np.array([0]))
    with pytest.raises(ValueError, match="detection scores"):
        ImageDetections(np.zeros((2, 4)), np.zeros(3), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="integers"):
        ImageDetections(np.zeros((1, 4)), np.ones(1), np.array([0.5]))


def test_coco_json_helpers() -> None:
    truth = {"b_img": gt([[1, 2, 11, 22]], [1]), "a_img": gt([], [])}
    coco = to_coco_ground_truth(truth, ["x", "y"], {"a_img": (640, 480), "b_img": (320, 240)})
    assert [(i["id"], i["file_name"], i["width"]) for i in coco["images"]] == [
        (1, "a_img", 640),
        (2, "b_img", 320),
    ]
    (ann,) = coco["annotations"]
    assert ann == {
        "id": 1,
        "image_id": 2,
        "category_id": 2,
        "bbox": [1.0, 2.0, 10.0, 20.0],
        "area": 200.0,
        "iscrowd": 0,
    }
    assert coco["categories"] == [{"id": 1, "name": "x"}, {"id": 2, "name": "y"}]
    results = to_coco_results(
        {"b_img": det([[1.23456, 2, 3.5, 4]], [0.1234567], [0])}, coco_image_ids(truth)
    )
    # Every digit kept, through JSON too: COCOeval reading the file scores these very values.
    expected = {"image_id": 2, "category_id": 1, "bbox": [1.23456, 2.0, 3.5 - 1.23456, 2.0]}
    assert results == [{**expected, "score": 0.1234567}]
    assert json.loads(json.dumps(results)) == results
    json.dumps(coco, allow_nan=False)
    with pytest.raises(ValueError, match="no image size"):
        to_coco_ground_truth(truth, ["x", "y"], {"a_img": (1, 1)})


# --------------------------------------------------------------------------------------------
# Agreement with pycocotools


def pycocotools_reference(
    truth: dict[str, ImageGroundTruth],
    dets: dict[str, ImageDetections],
    class_names: list[str],
    max_detections: int,
) -> tuple[float, float, list[tuple[float, float] | None], np.ndarray]:
    """(mAP@0.5, mAP@0.5:0.95, per-class (AP50, AP50:95) or None, COCOeval stats)."""
    sizes = dict.fromkeys(truth, (640, 480))
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = pycocotools_coco.COCO()
        coco_gt.dataset = to_coco_ground_truth(truth, class_names, sizes)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(to_coco_results(dets, coco_image_ids(truth)))
        evaluator = pycocotools_cocoeval.COCOeval(coco_gt, coco_dt, "bbox")
        evaluator.params.maxDets = [1, 10, max_detections]
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    # (T, R, K) at area 'all' and the largest maxDets.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    per_class: list[tuple[float, float] | None] = []
    for k in range(len(class_names)):
        if np.all(precision[:, :, k] == -1):
            per_class.append(None)
        else:
            ap = precision[:, :, k].mean(axis=1)
            per_class.append((float(ap[0]), float(ap.mean())))
    valid = precision[0][precision[0] > -1]
    map50 = float(valid.mean())
    map50_95 = float(precision[precision > -1].mean())
    return map50, map50_95, per_class, np.asarray(evaluator.stats)


def grid(values: np.ndarray) -> np.ndarray:
    """Snap to 1/8 pixel: exact in binary, so equal IoUs and IoUs exactly at a threshold are
    common (the ties the matching must break as pycocotools does)."""
    return np.round(np.asarray(values) * 8) / 8


def random_scenario(
    seed: int,
) -> tuple[dict[str, ImageGroundTruth], dict[str, ImageDetections], list[str], int]:
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(1, 5))
    class_names = [f"class{k}" for k in range(num_classes)]
    gt_classes = num_classes - 1 if num_classes > 1 and rng.random() < 0.4 else num_classes
    max_detections = int(rng.choice([10, 20, 100, 100]))
    num_images = int(rng.integers(1, 26))
    image_ids = [f"BloodImage_{i:05d}" for i in rng.choice(1000, num_images, replace=False)]
    score_decimals = int(rng.choice([2, 5]))  # 2 decimals -> many tied scores
    crowded_image = int(rng.integers(num_images)) if rng.random() < 0.5 else -1

    def random_boxes(n: int) -> np.ndarray:
        xy = rng.uniform(0, 500, (n, 2))
        wh = rng.uniform(5, 120, (n, 2))
        return grid(np.concatenate([xy, xy + wh], axis=1))

    def jitter(boxes: np.ndarray, scale: float) -> np.ndarray:
        wh = np.repeat(boxes[:, 2:] - boxes[:, :2], 2, axis=0).reshape(-1, 4)
        out = grid(boxes + rng.normal(0, scale, boxes.shape) * wh)
        out[:, 2:] = np.maximum(out[:, 2:], out[:, :2])
        return out

    def random_scores(n: int) -> np.ndarray:
        return np.round(rng.uniform(0, 1, n), score_decimals)

    truth: dict[str, ImageGroundTruth] = {}
    dets: dict[str, ImageDetections] = {}
    for index, image_id in enumerate(image_ids):
        n = int(rng.integers(0, 9))
        boxes = random_boxes(n)
        classes = rng.integers(0, gt_classes, n)
        if n and rng.random() < 0.3:  # an exact duplicate object: IoU ties between GTs
            boxes = np.concatenate([boxes, boxes[:1]])
            classes = np.concatenate([classes, classes[:1]])
        truth[image_id] = ImageGroundTruth(boxes, classes)

        found = rng.random(len(boxes)) < 0.85
        d_boxes = [jitter(boxes[found], float(rng.choice([0.02, 0.08, 0.2])))]
        d_classes = [np.where(rng.random(found.sum()) < 0.9, classes[found], 0)]
        repeats = rng.random(len(boxes)) < 0.2  # duplicate detections of the same object
        d_boxes.append(jitter(boxes[repeats], 0.05))
        d_classes.append(classes[repeats])
        fps = int(rng.integers(0, 6))
        d_boxes.append(random_boxes(fps))
        d_classes.append(rng.integers(0, num_classes, fps))
        if index == crowded_image and len(boxes):  # more than max_detections of one class
            many = max_detections + int(rng.integers(1, 30))
            d_boxes.append(jitter(np.repeat(boxes[:1], many, axis=0), 0.1))
            d_classes.append(np.repeat(classes[:1], many))
        d_all = np.concatenate(d_boxes)
        if len(d_all) or rng.random() < 0.5:  # otherwise leave the image out of `dets`
            dets[image_id] = ImageDetections(
                d_all, random_scores(len(d_all)), np.concatenate(d_classes)
            )
    # pycocotools needs at least one object and one detection to run at all.
    first = image_ids[0]
    if sum(len(t.boxes) for t in truth.values()) == 0:
        truth[first] = ImageGroundTruth(random_boxes(1), np.array([0]))
    if sum(len(d.boxes) for d in dets.values()) == 0:
        dets[first] = ImageDetections(jitter(truth[first].boxes[:1], 0.05), [0.5], [0])
    # Insertion order must not matter: pycocotools walks sorted image ids.
    shuffled = list(dets.items())
    rng.shuffle(shuffled)
    return truth, dict(shuffled), class_names, max_detections


@pytest.mark.parametrize("seed", range(60))
def test_agrees_with_pycocotools(seed: int) -> None:
    truth, dets, class_names, max_detections = random_scenario(seed)
    ours = evaluate_detections(truth, dets, class_names, max_detections=max_detections)
    map50, map50_95, per_class, stats = pycocotools_reference(
        truth, dets, class_names, max_detections
    )
    assert ours.map50 == pytest.approx(map50, abs=1e-3)
    assert ours.map50_95 == pytest.approx(map50_95, abs=1e-3)
    assert ours.map50 == pytest.approx(stats[1], abs=1e-3)
    if max_detections == 100:  # summarize() reads stats[0] at maxDets=100 only
        assert ours.map50_95 == pytest.approx(stats[0], abs=1e-3)
    for mine, reference in zip(ours.per_class, per_class, strict=True):
        if reference is None:
            assert mine.ap50 is None and mine.ap50_95 is None
        else:
            assert (mine.ap50, mine.ap50_95) == pytest.approx(reference, abs=1e-3)


def test_agreement_covers_the_tricky_cases() -> None:
    """The random scenarios do include what they are meant to exercise."""
    saw_absent_class = saw_truncation = saw_ties = False
    for seed in range(60):
        truth, dets, class_names, max_detections = random_scenario(seed)
        gt_classes = set(np.concatenate([t.classes for t in truth.values()]).tolist())
        saw_absent_class |= len(gt_classes) < len(class_names)
        for d in dets.values():
            saw_truncation |= bool(len(d.classes) and np.bincount(d.classes).max() > max_detections)
            saw_ties |= len(np.unique(d.scores)) < len(d.scores)
    assert saw_absent_class and saw_truncation and saw_ties


def test_three_thousand_detections_over_a_hundred_images() -> None:
    rng = np.random.default_rng(0)
    truth, dets = {}, {}
    for i in range(100):
        xy = rng.uniform(0, 500, (8, 2))
        boxes = np.concatenate([xy, xy + rng.uniform(10, 100, (8, 2))], axis=1)
        classes = rng.integers(0, 3, 8)
        truth[f"BloodImage_{i:05d}"] = ImageGroundTruth(boxes, classes)
        d_boxes = np.repeat(boxes, 4, axis=0)[:30] + rng.normal(0, 3, (30, 4))
        d_boxes[:, 2:] = np.maximum(d_boxes[:, 2:], d_boxes[:, :2])
        dets[f"BloodImage_{i:05d}"] = ImageDetections(
            d_boxes, rng.uniform(0.001, 1, 30), np.repeat(classes, 4)[:30]
        )
    m = evaluate_detections(truth, dets, ["RBC", "WBC", "Platelets"])
    assert m.num_detections == 3000
    assert 0 < m.map50_95 < m.map50 <= 1


@pytest.mark.slow
def test_agrees_with_pycocotools_on_real_bccd_detections(bccd_dir: Path, tmp_path: Path) -> None:
    """A model trained on the real BCCD (briefly: the many low-score detections of a young
    model are the hard case for ranking) predicts the val split; detbench and COCOeval score
    the same detections."""
    class_names = ["RBC", "WBC", "Platelets"]
    dataset = {
        "name": "bccd",
        "source": str(bccd_dir),
        "classes": class_names,
        "train_split": "train",
        "eval_split": "val",
    }
    prepare_voc_dataset(dataset, tmp_path / "voc")
    convert_dataset(dataset, tmp_path / "voc", tmp_path / "yolo")
    manifest_path = tmp_path / "yolo" / "manifest.json"
    settings = TrainSettings("yolov3-tiny", 8, 2, img_size=256, hyp=TrainHyperparameters(lr0=0.02))
    cell = tmp_path / "cell"
    outputs = TrainOutputs.in_folder(cell)
    train(settings, manifest_path, outputs, threads=2)
    model, metadata = load_trained_model(outputs.weights)
    records = DatasetManifest.load(manifest_path).records("val")
    found, _, _ = predict_split(
        model,
        DetectionDataset(records, int(metadata["img_size"])),
        EvalSettings(),
        settings.hyp,
        torch.device("cpu"),
        amp=False,
    )
    truth = {r.id: ImageGroundTruth(r.boxes_xyxy(), r.classes) for r in records}
    dets = {k: ImageDetections(d.boxes, d.scores, d.classes) for k, d in found.items()}
    assert sum(len(d.scores) for d in dets.values()) > 20 * len(records)

    ours = evaluate_detections(truth, dets, class_names)
    map50, map50_95, per_class, _ = pycocotools_reference(truth, dets, class_names, 100)
    assert ours.map50 == pytest.approx(map50, abs=1e-9)
    assert ours.map50_95 == pytest.approx(map50_95, abs=1e-9)
    for mine, reference in zip(ours.per_class, per_class, strict=True):
        assert reference is not None
        assert (mine.ap50, mine.ap50_95) == pytest.approx(reference, abs=1e-9)
