"""Settings of the web app, with their defaults (no heavy imports: the CLI reads them)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from detbench.study.config import EvalSettings

MIB = 1024 * 1024
DEFAULT_MAX_UPLOAD_MB = 16.0
# 25 megapixels: a 6000x4000 camera image. Decoded it is 75 MB of RGB, and a request holds a few
# copies of it at most, so a burst of requests stays within a small server's memory.
DEFAULT_MAX_PIXELS = 25_000_000
# Longer side an upload is decoded at (larger ones are decoded reduced): 4x the BCCD model's
# 416 px input, so the letterbox still averages down; a decoded image is then at most ~8 MB.
DEFAULT_MAX_DECODE_SIDE = 1664
# Uploads decoded and run through a model at once; more wait for up to the queue timeout, then
# get 503. Peak memory is base + this many decodes (see the README's "Serving" section).
DEFAULT_CONCURRENCY = 2
DEFAULT_QUEUE_TIMEOUT_S = 20.0
# Open connections the server holds (their request bodies are in memory); more wait in the
# kernel's listen backlog until one closes.
DEFAULT_MAX_CONNECTIONS = 32
DEFAULT_CONFIDENCE = 0.25
# Below this, an untrained model can send every anchor x class through NMS (slow, useless).
MIN_CONFIDENCE = 0.001
# Darknet's yolov3.cfg / yolov3-tiny.cfg input size, which the official COCO weights were
# evaluated at.
COCO_IMG_SIZE = 416


@dataclasses.dataclass(frozen=True)
class InferenceSettings:
    """NMS settings of the app; the defaults are the evaluation's (config ``evaluate:``), so the
    app's detections at confidence c are the evaluation's detections scoring above c."""

    nms_iou: float = EvalSettings.nms_iou
    max_detections: int = EvalSettings.max_detections


@dataclasses.dataclass
class WebConfig:
    """What ``detbench serve`` (or a test) configures. Model paths that do not exist leave
    their slot empty; the page says so."""

    bccd_model: Path | None = None
    bccd_origin: str | None = None  # how the BCCD model was chosen, shown on the page
    coco_weights: Path | None = None
    coco_img_size: int = COCO_IMG_SIZE
    device: str = "auto"
    # torch (PyTorch, weights.pt) or onnxruntime (an exported model.onnx; no torch loaded).
    backend: str = "torch"
    max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB
    max_pixels: int = DEFAULT_MAX_PIXELS
    default_confidence: float = DEFAULT_CONFIDENCE
    max_decode_side: int = DEFAULT_MAX_DECODE_SIDE
    concurrency: int = DEFAULT_CONCURRENCY
    queue_timeout_s: float = DEFAULT_QUEUE_TIMEOUT_S
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    inference: InferenceSettings = dataclasses.field(default_factory=InferenceSettings)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)
