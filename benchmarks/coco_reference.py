"""COCO JSON for pycocotools, to check detbench's metrics against the reference: the ground
truth as a COCO instances file.

Only the benchmarks and the tests need these (the evaluate job writes results JSON with
detbench.evaluation.metrics.to_coco_results); the tests import this module from benchmarks/.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from detbench.evaluation.metrics import ImageGroundTruth, coco_image_ids, xyxy_to_xywh


def to_coco_ground_truth(
    ground_truth: Mapping[str, ImageGroundTruth],
    class_names: Sequence[str],
    image_sizes: Mapping[str, tuple[int, int]],
) -> dict[str, Any]:
    """COCO instances JSON for the ground truth; ``image_sizes[id]`` is ``(width, height)``.

    Images get ids 1, 2, ... in sorted image-id order and ``file_name`` = image id; annotation
    ids start at 1 (pycocotools treats a match with id 0 as no match); category id = class + 1.
    """
    id_map = coco_image_ids(ground_truth)
    images = []
    annotations = []
    for image_id, coco_id in id_map.items():
        if image_id not in image_sizes:
            raise ValueError(f"{image_id}: no image size given")
        width, height = image_sizes[image_id]
        images.append(
            {"id": coco_id, "file_name": image_id, "width": int(width), "height": int(height)}
        )
        gt = ground_truth[image_id]
        for box, cls in zip(xyxy_to_xywh(gt.boxes).tolist(), gt.classes.tolist(), strict=True):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": coco_id,
                    "category_id": cls + 1,
                    "bbox": box,
                    "area": box[2] * box[3],
                    "iscrowd": 0,
                }
            )
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(class_names)]
    return {"images": images, "annotations": annotations, "categories": categories}

