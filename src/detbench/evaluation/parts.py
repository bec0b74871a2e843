"""Per-part metrics of a model trained on a merged dataset (detbench.data.merge).

A part is scored as if evaluated alone with the same weights: its images only, and of the
model's detections only those of the part's classes, renumbered to the part's own class ids, so
that the part's mAP@0.5, mAP@.5:.95, P and R are those of its domain (a COCO detection on a
blood smear does not count against the blood-cell classes, nor the other way round).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from detbench.data.merge import MergedPart, manifest_parts
from detbench.evaluation.metrics import (
    ImageDetections,
    ImageGroundTruth,
    evaluate_detections,
)

# The fields of a part's entry in metrics.json, besides its per-class metrics.
PART_METRIC_KEYS = ("map50", "map50_95", "precision_at_conf", "recall_at_conf")


def restrict_to_part(detections: ImageDetections, part: MergedPart) -> ImageDetections:
    """The detections of the part's classes, with the part's own class ids."""
    keep = (detections.classes >= part.offset) & (
        detections.classes < part.offset + len(part.class_names)
    )
    return ImageDetections(
        boxes=detections.boxes[keep],
        scores=detections.scores[keep],
        classes=detections.classes[keep] - part.offset,
    )


def part_ground_truth(truth: ImageGroundTruth, part: MergedPart) -> ImageGroundTruth:
    """An image's ground truth with the part's own class ids (its boxes are all the part's)."""
    return ImageGroundTruth(boxes=truth.boxes, classes=np.asarray(truth.classes) - part.offset)


def part_metrics(
    manifest_raw: Mapping[str, Any],
    split: str,
    ground_truth: Mapping[str, ImageGroundTruth],
    detections: Mapping[str, ImageDetections],
    *,
    pr_confidence: float,
    max_detections: int,
) -> dict[str, dict[str, Any]]:
    """Part name -> its metrics on ``split``: {} for a dataset that is not a merge."""
    parts = manifest_parts(manifest_raw)
    if not parts:
        return {}
    image_part = {entry["id"]: entry["part"] for entry in manifest_raw["splits"][split]}
    results = {}
    for part in parts:
        ids = [image_id for image_id in ground_truth if image_part.get(image_id) == part.name]
        truth = {i: part_ground_truth(ground_truth[i], part) for i in ids}
        found = {i: restrict_to_part(detections[i], part) for i in ids if i in detections}
        entry: dict[str, Any] = {
            "split": part.splits.get(split),
            "dataset": part.dataset,
            "num_images": len(ids),
            "classes": list(part.merged_names),
        }
        try:
            metrics = evaluate_detections(
                truth,
                found,
                part.merged_names,
                pr_confidence=pr_confidence,
                max_detections=max_detections,
            ).to_dict()
        except ValueError:  # no image, or no object, of this part in the split
            metrics = None
        if metrics is None:
            entry.update(dict.fromkeys(PART_METRIC_KEYS), per_class=[])
        else:
            entry.update({key: metrics[key] for key in PART_METRIC_KEYS})
            entry["num_ground_truth"] = metrics["num_ground_truth"]
            entry["per_class"] = metrics["per_class"]
        results[part.name] = entry
    return results
