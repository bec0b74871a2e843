"""An image as the network takes it, in numpy: the evaluation's letterbox
(DetectionDataset.sample without augmentation), shared by every backend."""

from __future__ import annotations

import cv2
import numpy as np

from detbench.data.augment import Letterbox, letterbox, resize_long_side
from detbench.errors import DetbenchError


def decode(data: bytes, name: str) -> np.ndarray:
    """An encoded image file's bytes as BGR uint8 (H, W, 3), as cv2.imread decodes it."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DetbenchError(f"{name}: not a readable image")
    return image


def letterboxed(image: np.ndarray, img_size: int) -> tuple[np.ndarray, Letterbox]:
    """BGR uint8 image -> (3, S, S) uint8 RGB canvas and its mapping back to the image."""
    resized, ratio = resize_long_side(image, img_size)
    canvas, _, placement = letterbox(resized, np.zeros((0, 4)), img_size)
    chw = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1))
    return chw, Letterbox(ratio, placement.pad_x, placement.pad_y)


def to_float(batch: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """uint8 (B, 3, S, S) -> float in [0, 1], as detbench.evaluation.inference.model_input."""
    if batch.dtype == np.uint8:
        return (batch.astype(np.float32) / np.float32(255)).astype(dtype, copy=False)
    return batch.astype(dtype, copy=False)
