"""Letterboxing and training augmentation on numpy images (BGR, uint8, HWC) with their boxes.

Boxes here are ``(N, 4)`` float arrays of ``x0, y0, x1, y1`` pixel edges. Every random draw
comes from the ``numpy.random.Generator`` passed in, so a sample's augmentation is a pure
function of that generator's seed (see :mod:`detbench.data.dataset`).
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

PAD_VALUE = (114, 114, 114)  # the grey YOLO letterboxes with


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    flip_lr: float = 0.5
    flip_ud: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    mosaic: float = 0.0  # probability of a 4-image mosaic (needs the dataset's cooperation)
    min_box_size: float = 2.0  # px: smaller boxes left after cropping are dropped
    min_area_fraction: float = 0.1  # of the box's area before cropping


@dataclasses.dataclass(frozen=True)
class Letterbox:
    """How an original image maps onto the square canvas: ``canvas = original * ratio + pad``."""

    ratio: float
    pad_x: float
    pad_y: float

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        out = boxes.astype(np.float64, copy=True)
        out[:, [0, 2]] = (out[:, [0, 2]] - self.pad_x) / self.ratio
        out[:, [1, 3]] = (out[:, [1, 3]] - self.pad_y) / self.ratio
        return out


def resize_long_side(image: np.ndarray, size: int) -> tuple[np.ndarray, float]:
    """Resize so the longer side equals ``size``; return the image and the scale applied."""
    height, width = image.shape[:2]
    ratio = size / max(height, width)
    if ratio == 1.0:
        return image, ratio
    interpolation = cv2.INTER_AREA if ratio < 1 else cv2.INTER_LINEAR
    new_size = (max(1, round(width * ratio)), max(1, round(height * ratio)))
    return cv2.resize(image, new_size, interpolation=interpolation), ratio


def _centre_matrix(width: int, height: int, size: int) -> np.ndarray:
    matrix = np.eye(3)
    matrix[0, 2] = (size - width) / 2
    matrix[1, 2] = (size - height) / 2
    return matrix


def _warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    if np.allclose(matrix[:2, :2], np.eye(2)) and np.allclose(
        matrix[:2, 2], np.round(matrix[:2, 2])
    ):
        # Pure integer translation (plain letterbox): a copy into the canvas, exact and fast.
        canvas = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
        dx, dy = round(matrix[0, 2]), round(matrix[1, 2])
        h, w = image.shape[:2]
        x0, y0 = max(dx, 0), max(dy, 0)
        x1, y1 = min(dx + w, size), min(dy + h, size)
        if x1 > x0 and y1 > y0:
            canvas[y0:y1, x0:x1] = image[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
        return canvas
    return cv2.warpAffine(
        image, matrix[:2], (size, size), flags=cv2.INTER_LINEAR, borderValue=PAD_VALUE
    )


def _transform_boxes(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    # Only scale and translation are used, so boxes stay axis-aligned.
    out = boxes.copy()
    out[:, [0, 2]] = boxes[:, [0, 2]] * matrix[0, 0] + matrix[0, 2]
    out[:, [1, 3]] = boxes[:, [1, 3]] * matrix[1, 1] + matrix[1, 2]
    return out


def letterbox(
    image: np.ndarray, boxes: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, Letterbox]:
    """Centre an image whose long side is already ``size`` on a square grey canvas."""
    height, width = image.shape[:2]
    matrix = _centre_matrix(width, height, size)
    matrix[:2, 2] = np.floor(matrix[:2, 2])
    canvas = _warp(image, matrix, size)
    return canvas, _transform_boxes(boxes, matrix), Letterbox(1.0, matrix[0, 2], matrix[1, 2])


def random_affine(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    size: int,
    settings: AugmentSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterbox with a random scale about the canvas centre and a random translation."""
    height, width = image.shape[:2]
    scale = rng.uniform(1 - settings.scale, 1 + settings.scale)
    shift = rng.uniform(-settings.translate, settings.translate, size=2) * size
    zoom = np.array(
        [[scale, 0, (1 - scale) * size / 2], [0, scale, (1 - scale) * size / 2], [0, 0, 1]]
    )
    move = np.array([[1, 0, shift[0]], [0, 1, shift[1]], [0, 0, 1]])
    matrix = move @ zoom @ _centre_matrix(width, height, size)
    canvas = _warp(image, matrix, size)
    moved = _transform_boxes(boxes, matrix)
    clipped = np.clip(moved, 0, size)
    keep = _box_candidates(moved, clipped, settings)
    return canvas, clipped[keep], classes[keep]


def _box_candidates(before: np.ndarray, after: np.ndarray, settings: AugmentSettings) -> np.ndarray:
    """Keep boxes that are still large enough and mostly inside the canvas after cropping."""
    w0, h0 = before[:, 2] - before[:, 0], before[:, 3] - before[:, 1]
    w1, h1 = after[:, 2] - after[:, 0], after[:, 3] - after[:, 1]
    area_fraction = (w1 * h1) / np.maximum(w0 * h0, 1e-9)
    return (
        (w1 > settings.min_box_size)
        & (h1 > settings.min_box_size)
        & (area_fraction > settings.min_area_fraction)
    )


def augment_hsv(
    image: np.ndarray, settings: AugmentSettings, rng: np.random.Generator
) -> np.ndarray:
    """Random gains on hue, saturation and value through lookup tables (in place is avoided)."""
    if not (settings.hsv_h or settings.hsv_s or settings.hsv_v):
        return image
    gains = rng.uniform(-1, 1, 3) * [settings.hsv_h, settings.hsv_s, settings.hsv_v] + 1
    x = np.arange(256, dtype=np.float32)
    lut_hue = ((x * gains[0]) % 180).astype(np.uint8)
    lut_sat = np.clip(x * gains[1], 0, 255).astype(np.uint8)
    lut_val = np.clip(x * gains[2], 0, 255).astype(np.uint8)
    # One 3-channel table maps each channel through its own column: no split and merge.
    table = np.stack((lut_hue, lut_sat, lut_val), axis=-1).reshape(256, 1, 3)
    hsv = cv2.LUT(cv2.cvtColor(image, cv2.COLOR_BGR2HSV), table)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def random_flips(
    image: np.ndarray, boxes: np.ndarray, settings: AugmentSettings, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    size_y, size_x = image.shape[:2]
    draws = rng.random(2)
    # cv2.flip rather than a reversed numpy view made contiguous: the same pixels, about ten
    # times faster (a strided copy of a 416 px image costs half a millisecond).
    if draws[0] < settings.flip_lr:
        image = cv2.flip(image, 1)
        boxes = boxes.copy()
        boxes[:, [0, 2]] = size_x - boxes[:, [2, 0]]
    if draws[1] < settings.flip_ud:
        image = cv2.flip(image, 0)
        boxes = boxes.copy()
        boxes[:, [1, 3]] = size_y - boxes[:, [3, 1]]
    return np.ascontiguousarray(image), boxes


def mosaic(
    images: list[np.ndarray],
    boxes: list[np.ndarray],
    classes: list[np.ndarray],
    size: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Four images (long side ``size``) around a random centre of a 2*size canvas.

    The result goes through :func:`augment` like a single image, whose centred affine crops it
    back to ``size``: objects keep their scale while each sample carries four images' worth of
    objects and context (YOLOv4's mosaic, used by the 2020 study's code).
    """
    canvas = np.full((2 * size, 2 * size, 3), PAD_VALUE, dtype=np.uint8)
    xc, yc = (int(v) for v in rng.uniform(0.5 * size, 1.5 * size, 2))
    all_boxes, all_classes = [], []
    for quadrant, (image, image_boxes, image_classes) in enumerate(
        zip(images, boxes, classes, strict=True)
    ):
        h, w = image.shape[:2]
        # Corners of the placed image: it touches the centre from its quadrant's side.
        x0 = xc - w if quadrant in (0, 2) else xc
        y0 = yc - h if quadrant in (0, 1) else yc
        cx0, cy0 = max(x0, 0), max(y0, 0)
        cx1, cy1 = min(x0 + w, 2 * size), min(y0 + h, 2 * size)
        canvas[cy0:cy1, cx0:cx1] = image[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
        moved = image_boxes + np.array([x0, y0, x0, y0], dtype=np.float64)
        clipped = np.clip(moved, [cx0, cy0, cx0, cy0], [cx1, cy1, cx1, cy1])
        all_boxes.append(clipped)
        all_classes.append(image_classes)
    return canvas, np.concatenate(all_boxes), np.concatenate(all_classes)


def augment(
    image: np.ndarray,
    boxes: np.ndarray,
    classes: np.ndarray,
    size: int,
    settings: AugmentSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The full training transform: random letterbox affine, HSV jitter, flips."""
    canvas, boxes, classes = random_affine(image, boxes, classes, size, settings, rng)
    canvas = augment_hsv(canvas, settings, rng)
    canvas, boxes = random_flips(canvas, boxes, settings, rng)
    return canvas, boxes, classes
