"""Drawing detections onto an image for the page: boxes, class labels, scores."""

from __future__ import annotations

import base64
from collections.abc import Sequence

import cv2
import numpy as np

# The annotated image is a preview: larger images are scaled down before drawing, so lines and
# labels stay legible and the PNG in the JSON answer stays a few MB at most.
MAX_PREVIEW_SIDE = 1280

# BGR colours, one per class index (cycled). The first three are the blood-cell classes' in the
# order RBC, WBC, Platelets: red, violet, amber.
PALETTE: tuple[tuple[int, int, int], ...] = (
    (40, 40, 220),
    (200, 60, 140),
    (0, 170, 255),
    (60, 180, 60),
    (220, 140, 30),
    (150, 90, 20),
    (30, 120, 200),
    (120, 30, 180),
    (90, 160, 160),
    (20, 90, 60),
)


def class_colour(index: int) -> tuple[int, int, int]:
    return PALETTE[index % len(PALETTE)]


def annotate(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: Sequence[str],
    class_indices: Sequence[int],
    max_side: int = MAX_PREVIEW_SIDE,
) -> np.ndarray:
    """A copy of the BGR ``image`` (scaled so its long side is at most ``max_side``) with
    ``boxes`` (x0, y0, x1, y1 in ``image`` pixels) drawn and labelled."""
    height, width = image.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        canvas = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    else:
        canvas = image.copy()
    long_side = max(canvas.shape[:2])
    thickness = max(1, round(long_side / 400))
    font_scale = max(0.35, long_side / 1400)
    for box, label, index in zip(boxes * scale, labels, class_indices, strict=True):
        x0, y0, x1, y1 = (round(float(v)) for v in box)
        colour = class_colour(int(index))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), colour, thickness, cv2.LINE_AA)
        _draw_label(canvas, label, (x0, y0), colour, font_scale, thickness)
    return canvas


def _draw_label(
    canvas: np.ndarray,
    text: str,
    corner: tuple[int, int],
    colour: tuple[int, int, int],
    font_scale: float,
    thickness: int,
) -> None:
    """The label on a filled background above the box (inside it when there is no room)."""
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_thickness = max(1, thickness // 2)
    (text_w, text_h), baseline = cv2.getTextSize(text, font, font_scale, text_thickness)
    x0, y0 = corner
    top = y0 - text_h - baseline - 2
    if top < 0:
        top = y0
    bottom = top + text_h + baseline + 2
    cv2.rectangle(canvas, (x0, top), (x0 + text_w + 2, bottom), colour, cv2.FILLED)
    cv2.putText(
        canvas,
        text,
        (x0 + 1, bottom - baseline - 1),
        font,
        font_scale,
        (255, 255, 255),
        text_thickness,
        cv2.LINE_AA,
    )


def png_data_url(image: np.ndarray) -> str:
    """``data:image/png;base64,...`` of a BGR image."""
    ok, encoded = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover - only for images OpenCV cannot hold (none reach here)
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
