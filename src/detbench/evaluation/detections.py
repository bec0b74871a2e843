"""Detections of one image and their mapping back to the original image, without torch: the
ONNX Runtime path (detbench.deploy) shares them with the PyTorch one."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass
class Detections:
    """Detections of one image: boxes (N, 4) x0, y0, x1, y1 px, scores (N,), classes (N,)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def to_original_pixels(
    found: Detections, placement: Any, width: int, height: int, *, drop_empty: bool = False
) -> Detections:
    """Detections on the network's canvas mapped back to the original image (``placement``:
    its Letterbox or Darknet placement), clipped to its ``width`` x ``height``.

    ``drop_empty``: drop boxes left with no area (they lay entirely in the padding), as the web
    app does; the evaluation keeps them, as pycocotools would score them.
    """
    if not len(found):
        return Detections(np.zeros((0, 4)), found.scores, found.classes)
    boxes = placement.to_original(found.boxes)
    boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
    boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    if not drop_empty:
        return Detections(boxes=boxes, scores=found.scores, classes=found.classes)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    return Detections(boxes[keep], found.scores[keep], found.classes[keep])
