"""The evaluation's confidence filter and per-class NMS
(detbench.evaluation.inference.non_max_suppression) in numpy, for backends without torch."""

from __future__ import annotations

import numpy as np

from detbench.evaluation.detections import Detections


def non_max_suppression(
    decoded: np.ndarray, *, conf_threshold: float, iou_threshold: float, max_detections: int
) -> list[Detections]:
    """Per image: score = objectness x class probability for every class above the threshold
    (multi-label), per-class greedy NMS (a box is dropped when its IoU with a kept box of its
    class exceeds ``iou_threshold``, as torchvision's), best first, at most ``max_detections``.

    ``decoded``: (B, N, 5 + nc) rows of cx, cy, w, h (px), objectness, class probabilities.
    """
    results = []
    for image in decoded.astype(np.float32, copy=False):
        image = image[image[:, 4] > conf_threshold]
        scores = image[:, 5:] * image[:, 4:5]
        anchor_index, class_index = np.nonzero(scores > conf_threshold)
        centre, half = image[anchor_index, :2], image[anchor_index, 2:4] / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        box_scores = scores[anchor_index, class_index]
        keep = _batched_nms(boxes, box_scores, class_index, iou_threshold)[:max_detections]
        results.append(
            Detections(
                boxes=boxes[keep].astype(np.float64),
                scores=box_scores[keep].astype(np.float64),
                classes=class_index[keep].astype(np.int64),
            )
        )
    return results


def _batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> np.ndarray:
    """Indices kept by per-class NMS, in decreasing score."""
    kept = [_nms(np.flatnonzero(classes == c), boxes, scores, iou_threshold) for c in set(classes)]
    if not kept:
        return np.zeros(0, dtype=np.int64)
    keep = np.concatenate(kept)
    return keep[np.argsort(-scores[keep], kind="stable")]


def _nms(index: np.ndarray, boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    order = index[np.argsort(-scores[index], kind="stable")]
    x0, y0, x1, y1 = (boxes[order, i] for i in range(4))
    areas = (x1 - x0) * (y1 - y0)
    alive = np.ones(len(order), dtype=bool)
    keep = []
    for i in range(len(order)):
        if not alive[i]:
            continue
        keep.append(order[i])
        rest = slice(i + 1, None)
        width = np.maximum(0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]))
        height = np.maximum(0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]))
        inter = width * height
        with np.errstate(divide="ignore", invalid="ignore"):  # boxes of no area: never dropped
            iou = inter / (areas[i] + areas[rest] - inter)
        alive[rest] &= ~(iou > threshold)
    return np.array(keep, dtype=np.int64)
