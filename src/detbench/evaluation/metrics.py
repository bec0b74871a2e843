"""Detection metrics computed the COCO way, plus precision/recall at named confidences.

``evaluate_detections`` reproduces pycocotools' ``COCOeval`` for ``iouType='bbox'``, area range
'all' and ``maxDets=max_detections`` (agreement to ~1e-15 in the tests), without depending on
pycocotools: numpy only. The details that matter for exact agreement are replicated on purpose:

* IoU is computed from xywh boxes with the same floating-point operations as pycocotools'
  ``bbIou`` (no +1 pixel convention).
* Per image and class, detections are stable-sorted by score (mergesort) and truncated to
  ``max_detections``; greedy matching per IoU threshold lets each detection take the unmatched
  ground truth with the highest IoU >= ``min(t, 1 - 1e-10)``, the *later* ground truth winning
  ties.
* Across images, per class, detections are concatenated in sorted-image-id order and
  stable-sorted by score again; precision is ``tp / (tp + fp + eps)``, made monotone from the
  right and sampled at 101 recall thresholds with ``searchsorted(side='left')``.

Precision and recall at a confidence follow the 2020 study (ultralytics/yolov3 v9): matched at
IoU 0.5, read at confidence 0.1 and averaged over classes; the best-F1 confidence is reported
as well because later versions read P and R there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = [
    "F1_CONFIDENCES",
    "IOU_THRESHOLDS",
    "METRIC_DEFINITIONS",
    "PR_IOU_THRESHOLD",
    "RECALL_THRESHOLDS",
    "ClassMetrics",
    "DetectionMetrics",
    "ImageDetections",
    "ImageGroundTruth",
    "coco_image_ids",
    "evaluate_detections",
    "to_coco_results",
]

# Exactly as pycocotools builds them (np.arange would drift; 0.9 is 0.8999999999999999 here too).
IOU_THRESHOLDS: np.ndarray = np.linspace(0.5, 0.95, 10)
RECALL_THRESHOLDS: np.ndarray = np.linspace(0.0, 1.0, 101)
# Confidences swept for the best-F1 operating point.
F1_CONFIDENCES: np.ndarray = np.linspace(0.0, 1.0, 1001)
# P and R at a confidence are read at the first IoU threshold, as in the 2020 study.
PR_IOU_THRESHOLD: float = float(IOU_THRESHOLDS[0])

# pycocotools adds machine epsilon to the precision denominator; kept for bit-level agreement.
_EPS = float(np.spacing(1))


# --------------------------------------------------------------------------------------------
# Inputs


def _as_boxes(value: Any, what: str) -> np.ndarray:
    boxes = np.asarray(value, dtype=np.float64)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{what}: boxes must have shape (N, 4), got {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{what}: boxes contain NaN or infinity")
    if np.any(boxes[:, 2] < boxes[:, 0]) or np.any(boxes[:, 3] < boxes[:, 1]):
        # pycocotools would give such boxes a negative area and silently ignore them.
        raise ValueError(f"{what}: boxes must be xyxy with x2 >= x1 and y2 >= y1")
    return boxes


def _as_vector(value: Any, length: int, what: str, *, integer: bool) -> np.ndarray:
    array = np.asarray(value)
    if array.size == 0:
        array = array.reshape(0)
    if array.ndim != 1 or array.shape[0] != length:
        raise ValueError(f"{what}: expected shape ({length},), got {array.shape}")
    if not integer:
        array = array.astype(np.float64)
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{what}: contains NaN or infinity")
        return array
    as_int = array.astype(np.int64)
    if not np.array_equal(as_int, array):
        raise ValueError(f"{what}: class indices must be integers")
    return as_int


@dataclass
class ImageGroundTruth:
    """Ground-truth objects of one image: ``boxes`` (N, 4) xyxy pixels, ``classes`` (N,) int."""

    boxes: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes, "ground truth")
        self.classes = _as_vector(
            self.classes, len(self.boxes), "ground-truth classes", integer=True
        )


@dataclass
class ImageDetections:
    """Detections of one image: ``boxes`` (M, 4) xyxy pixels, ``scores`` (M,), ``classes`` (M,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __post_init__(self) -> None:
        self.boxes = _as_boxes(self.boxes, "detections")
        self.scores = _as_vector(self.scores, len(self.boxes), "detection scores", integer=False)
        self.classes = _as_vector(self.classes, len(self.boxes), "detection classes", integer=True)


# --------------------------------------------------------------------------------------------
# Outputs


@dataclass(frozen=True)
class ClassMetrics:
    """Metrics of one class; the metric fields are None when the class has no ground truth."""

    name: str
    num_ground_truth: int
    num_detections: int
    ap50: float | None
    ap50_95: float | None
    precision_at_conf: float | None
    recall_at_conf: float | None
    precision_at_best_f1: float | None
    recall_at_best_f1: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "num_ground_truth": self.num_ground_truth,
            "num_detections": self.num_detections,
            "ap50": _json_float(self.ap50),
            "ap50_95": _json_float(self.ap50_95),
            "precision_at_conf": _json_float(self.precision_at_conf),
            "recall_at_conf": _json_float(self.recall_at_conf),
            "precision_at_best_f1": _json_float(self.precision_at_best_f1),
            "recall_at_best_f1": _json_float(self.recall_at_best_f1),
        }


METRIC_DEFINITIONS: dict[str, str] = {
    "map50": "mAP@0.5: mean over classes with ground truth of COCO 101-point interpolated AP "
    "at IoU 0.5 (pycocotools bbox, area 'all', max_detections per image and class)",
    "map50_95": "mAP@0.5:0.95: mean over classes with ground truth and IoU thresholds "
    "0.50:0.05:0.95 of COCO 101-point interpolated AP (the COCO 'AP')",
    "pr_iou_threshold": "IoU at which detections are matched for the precision/recall fields",
    "pr_confidence": "confidence at which precision_at_conf and recall_at_conf are read",
    "precision_at_conf": "mean over classes with ground truth of TP / detections among "
    "detections with score >= pr_confidence (0 for a class with none)",
    "recall_at_conf": "mean over classes with ground truth of TP / ground-truth objects among "
    "detections with score >= pr_confidence",
    "best_f1": "highest F1 = 2PR/(P+R) of the class-mean P and R over confidences 0:0.001:1",
    "best_f1_confidence": "lowest confidence in 0:0.001:1 at which best_f1 is reached",
    "precision_at_best_f1": "class-mean precision at best_f1_confidence",
    "recall_at_best_f1": "class-mean recall at best_f1_confidence",
    "num_images": "number of images evaluated (all images with ground-truth entries)",
    "num_ground_truth": "number of ground-truth objects",
    "num_detections": "number of detections evaluated, after keeping at most max_detections "
    "highest-scoring detections per image and class",
    "max_detections": "detections kept per image and class (pycocotools maxDets)",
    "iou_thresholds": "IoU thresholds averaged in map50_95",
    "per_class": "the same metrics per class; values are null for a class with no ground truth, "
    "which is also left out of every class mean",
}


@dataclass(frozen=True)
class DetectionMetrics:
    """Result of :func:`evaluate_detections`; see ``METRIC_DEFINITIONS`` for each field."""

    map50: float
    map50_95: float
    pr_confidence: float
    precision_at_conf: float
    recall_at_conf: float
    best_f1: float
    best_f1_confidence: float
    precision_at_best_f1: float
    recall_at_best_f1: float
    per_class: tuple[ClassMetrics, ...]
    num_images: int
    num_ground_truth: int
    num_detections: int
    max_detections: int
    iou_thresholds: tuple[float, ...] = field(
        default_factory=lambda: tuple(float(t) for t in IOU_THRESHOLDS)
    )
    pr_iou_threshold: float = PR_IOU_THRESHOLD

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (no NaN: undefined values are None) with a definitions entry."""
        return {
            "map50": _json_float(self.map50),
            "map50_95": _json_float(self.map50_95),
            "pr_iou_threshold": self.pr_iou_threshold,
            "pr_confidence": self.pr_confidence,
            "precision_at_conf": _json_float(self.precision_at_conf),
            "recall_at_conf": _json_float(self.recall_at_conf),
            "best_f1": _json_float(self.best_f1),
            "best_f1_confidence": _json_float(self.best_f1_confidence),
            "precision_at_best_f1": _json_float(self.precision_at_best_f1),
            "recall_at_best_f1": _json_float(self.recall_at_best_f1),
            "num_images": self.num_images,
            "num_ground_truth": self.num_ground_truth,
            "num_detections": self.num_detections,
            "max_detections": self.max_detections,
            "iou_thresholds": list(self.iou_thresholds),
            "per_class": [c.to_dict() for c in self.per_class],
            "definitions": dict(METRIC_DEFINITIONS),
        }


def _json_float(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------
# Matching


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    return np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)


def _coco_iou(dt: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(D, G) IoU of xywh boxes, with the same float operations as pycocotools' ``bbIou``."""
    dx, dy, dw, dh = (dt[:, i, None] for i in range(4))
    gx, gy, gw, gh = (gt[None, :, i] for i in range(4))
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    union = dw * dh + gw * gh - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where((w > 0) & (h > 0), iou, 0.0)


def _match_greedy(ious: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """(T, D) bool: whether each detection (rows of ``ious``, score order) is a true positive.

    Detections are processed one at a time (greedy, order matters) but all IoU thresholds at
    once. pycocotools accepts IoU >= min(t, 1 - 1e-10) and, scanning ground truth in order with
    ``if iou < best: continue``, keeps the *last* of equally good candidates.
    """
    num_t = len(thresholds)
    num_dt, num_gt = ious.shape
    matched = np.zeros((num_t, num_dt), dtype=bool)
    if num_dt == 0 or num_gt == 0:
        return matched
    floor = np.minimum(thresholds, 1 - 1e-10)[:, None]
    lowest = float(floor.min())
    gt_taken = np.zeros((num_t, num_gt), dtype=bool)
    rows = np.arange(num_t)
    for d in np.flatnonzero(ious.max(axis=1) >= lowest):  # others are FP at every threshold
        row = ious[d]
        eligible = (row[None, :] >= floor) & ~gt_taken
        candidate_iou = np.where(eligible, row[None, :], -1.0)
        best = num_gt - 1 - np.argmax(candidate_iou[:, ::-1], axis=1)  # last of the maxima
        hit = eligible[rows, best]
        matched[hit, d] = True
        gt_taken[rows[hit], best[hit]] = True
    return matched


@dataclass
class _ClassRecord:
    """Per-class detections in pycocotools' accumulation order (before the global sort)."""

    num_ground_truth: int = 0
    scores: list[np.ndarray] = field(default_factory=list)
    matched: list[np.ndarray] = field(default_factory=list)  # each (T, D_image)


def _collect(
    ground_truth: Mapping[str, ImageGroundTruth],
    detections: Mapping[str, ImageDetections],
    num_classes: int,
    max_detections: int,
) -> list[_ClassRecord]:
    records = [_ClassRecord() for _ in range(num_classes)]
    empty = ImageDetections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, dtype=np.int64))
    # pycocotools walks images in sorted-id order; the order decides ties in the global sort.
    for image_id in sorted(ground_truth):
        gt = ground_truth[image_id]
        dets = detections.get(image_id, empty)
        for c in np.union1d(gt.classes, dets.classes).tolist():
            gt_boxes = gt.boxes[gt.classes == c]
            in_class = np.flatnonzero(dets.classes == c)
            order = np.argsort(-dets.scores[in_class], kind="mergesort")[:max_detections]
            keep = in_class[order]
            ious = _coco_iou(xyxy_to_xywh(dets.boxes[keep]), xyxy_to_xywh(gt_boxes))
            record = records[c]
            record.num_ground_truth += len(gt_boxes)
            record.scores.append(dets.scores[keep])
            record.matched.append(_match_greedy(ious, IOU_THRESHOLDS))
    return records


# --------------------------------------------------------------------------------------------
# Accumulation


def _interpolated_precision(tp: np.ndarray, num_gt: int) -> np.ndarray:
    """(T, 101) precision envelope sampled at RECALL_THRESHOLDS, as COCOeval.accumulate."""
    num_t, num_dt = tp.shape
    samples = np.zeros((num_t, len(RECALL_THRESHOLDS)))
    if num_dt == 0:
        return samples
    tp_sum = np.cumsum(tp, axis=1, dtype=np.float64)
    fp_sum = np.cumsum(~tp, axis=1, dtype=np.float64)
    recall = tp_sum / num_gt
    precision = tp_sum / (fp_sum + tp_sum + _EPS)
    # Monotone envelope from the right.
    envelope = np.maximum.accumulate(precision[:, ::-1], axis=1)[:, ::-1]
    for t in range(num_t):
        idx = np.searchsorted(recall[t], RECALL_THRESHOLDS, side="left")
        valid = idx < num_dt  # recall thresholds beyond the last recall sample as 0
        samples[t, valid] = envelope[t, idx[valid]]
    return samples


def _precision_recall_at(
    scores_desc: np.ndarray, tp: np.ndarray, num_gt: int, confidences: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """P and R counting detections with score >= each confidence (``scores_desc`` sorted)."""
    # Number of detections with score >= c: -score ascending, count of -score <= -c.
    count = np.searchsorted(-scores_desc, -confidences, side="right")
    tp_cum = np.concatenate([[0], np.cumsum(tp)])
    true_pos = tp_cum[count].astype(np.float64)
    return true_pos / np.maximum(count, 1), true_pos / num_gt


@dataclass
class _ClassSummary:
    num_ground_truth: int
    num_detections: int
    ap: np.ndarray | None  # (T,) AP per IoU threshold; None without ground truth
    precision_sweep: np.ndarray | None  # at F1_CONFIDENCES
    recall_sweep: np.ndarray | None
    precision_at_conf: float | None
    recall_at_conf: float | None


def _summarise_class(record: _ClassRecord, pr_confidence: float) -> _ClassSummary:
    scores = np.concatenate(record.scores) if record.scores else np.zeros(0)
    matched = (
        np.concatenate(record.matched, axis=1)
        if record.matched
        else np.zeros((len(IOU_THRESHOLDS), 0), dtype=bool)
    )
    num_gt = record.num_ground_truth
    if num_gt == 0:  # pycocotools reports -1 and leaves the class out of the means
        return _ClassSummary(0, len(scores), None, None, None, None, None)
    order = np.argsort(-scores, kind="mergesort")
    scores, matched = scores[order], matched[:, order]
    ap = _interpolated_precision(matched, num_gt).mean(axis=1)
    tp50 = matched[0]
    p_sweep, r_sweep = _precision_recall_at(scores, tp50, num_gt, F1_CONFIDENCES)
    p_conf, r_conf = _precision_recall_at(scores, tp50, num_gt, np.array([pr_confidence]))
    return _ClassSummary(
        num_gt, len(scores), ap, p_sweep, r_sweep, float(p_conf[0]), float(r_conf[0])
    )


def _f1(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    denominator = precision + recall
    safe = np.where(denominator > 0, denominator, 1.0)
    return np.where(denominator > 0, 2 * precision * recall / safe, 0.0)


# --------------------------------------------------------------------------------------------
# Public entry point


def evaluate_detections(
    ground_truth: Mapping[str, ImageGroundTruth],
    detections: Mapping[str, ImageDetections],
    class_names: Sequence[str],
    *,
    pr_confidence: float = 0.1,
    max_detections: int = 100,
) -> DetectionMetrics:
    """Evaluate detections against ground truth; pycocotools-equivalent AP plus P/R/F1.

    Every image in ``ground_truth`` is evaluated (an image missing from ``detections`` has
    none). Class ``i`` corresponds to COCO category id ``i + 1``. Raises ValueError for an image
    in ``detections`` that is not in ``ground_truth``, a class index outside ``class_names``,
    or when no class has any ground truth (every metric would be undefined).
    """
    num_classes = len(class_names)
    if num_classes == 0:
        raise ValueError("class_names is empty")
    if max_detections < 1:
        raise ValueError(f"max_detections must be >= 1, got {max_detections}")
    if not 0.0 <= pr_confidence <= 1.0:
        raise ValueError(f"pr_confidence must be in [0, 1], got {pr_confidence}")
    unknown = sorted(set(detections) - set(ground_truth))
    if unknown:
        raise ValueError(f"detections for images without ground truth: {unknown[:5]}")
    for image_id, item in [*ground_truth.items(), *detections.items()]:
        if len(item.classes) and (item.classes.min() < 0 or item.classes.max() >= num_classes):
            raise ValueError(f"{image_id}: class index outside 0..{num_classes - 1}")

    records = _collect(ground_truth, detections, num_classes, max_detections)
    summaries = [_summarise_class(r, pr_confidence) for r in records]
    scored = [s for s in summaries if s.ap is not None]
    if not scored:
        raise ValueError("ground truth contains no objects: detection metrics are undefined")

    ap = np.stack([s.ap for s in scored])  # (K, T)
    p_sweep = np.mean([s.precision_sweep for s in scored], axis=0)
    r_sweep = np.mean([s.recall_sweep for s in scored], axis=0)
    best = int(np.argmax(_f1(p_sweep, r_sweep)))  # first maximum: the lowest confidence

    per_class = tuple(
        _class_metrics(name, summary, best)
        for name, summary in zip(class_names, summaries, strict=True)
    )
    return DetectionMetrics(
        map50=float(ap[:, 0].mean()),
        map50_95=float(ap.mean()),
        pr_confidence=float(pr_confidence),
        precision_at_conf=float(np.mean([s.precision_at_conf for s in scored])),
        recall_at_conf=float(np.mean([s.recall_at_conf for s in scored])),
        best_f1=float(_f1(p_sweep, r_sweep)[best]),
        best_f1_confidence=float(F1_CONFIDENCES[best]),
        precision_at_best_f1=float(p_sweep[best]),
        recall_at_best_f1=float(r_sweep[best]),
        per_class=per_class,
        num_images=len(ground_truth),
        num_ground_truth=sum(s.num_ground_truth for s in summaries),
        num_detections=sum(s.num_detections for s in summaries),
        max_detections=int(max_detections),
    )


def _class_metrics(name: str, summary: _ClassSummary, best: int) -> ClassMetrics:
    if summary.ap is None:
        return ClassMetrics(name, 0, summary.num_detections, None, None, None, None, None, None)
    assert summary.precision_sweep is not None and summary.recall_sweep is not None
    return ClassMetrics(
        name=name,
        num_ground_truth=summary.num_ground_truth,
        num_detections=summary.num_detections,
        ap50=float(summary.ap[0]),
        ap50_95=float(summary.ap.mean()),
        precision_at_conf=summary.precision_at_conf,
        recall_at_conf=summary.recall_at_conf,
        precision_at_best_f1=float(summary.precision_sweep[best]),
        recall_at_best_f1=float(summary.recall_sweep[best]),
    )


# --------------------------------------------------------------------------------------------
# COCO JSON


def coco_image_ids(image_ids: Iterable[str]) -> dict[str, int]:
    """COCO integer ids for image ids: 1, 2, ... in sorted order (as to_coco_ground_truth)."""
    return {image_id: index + 1 for index, image_id in enumerate(sorted(image_ids))}


def to_coco_results(
    detections: Mapping[str, ImageDetections], image_id_map: Mapping[str, int]
) -> list[dict[str, Any]]:
    """COCO results JSON (bbox xywh, score), in input order. Values keep every digit (JSON
    writes the shortest text that reads back as the same float): COCOeval on the file then
    scores what evaluate_detections scored, since rounding would tie low scores and move boxes
    across IoU thresholds."""
    results = []
    for image_id, dets in detections.items():
        if image_id not in image_id_map:
            raise ValueError(f"{image_id}: not in image_id_map")
        coco_id = int(image_id_map[image_id])
        for box, score, cls in zip(
            xyxy_to_xywh(dets.boxes).tolist(),
            dets.scores.tolist(),
            dets.classes.tolist(),
            strict=True,
        ):
            results.append(
                {
                    "image_id": coco_id,
                    "category_id": cls + 1,
                    "bbox": box,
                    "score": score,
                }
            )
    return results
