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
# get 503. Peak memory is base + this many decodes (see docs/web-app.md, "Serving under load").
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
# Trained cells the model picker holds loaded at once (a YOLOv3 model is ~250 MB of float32).
DEFAULT_MODEL_CACHE = 2


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
    # A joint cell's weights.pt (detbench.web.joint): serves both slots, instead of the two above.
    joint_model: Path | None = None
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
    # The model picker: every evaluated cell under results_dir (and under the training runs'
    # folders), loaded on first use into a cache of at most model_cache_size models.
    results_dir: Path | None = None
    model_cache_size: int = DEFAULT_MODEL_CACHE
    training: TrainingSettings | None = None  # None: the Train page is off

    @property
    def max_request_bytes(self) -> int:
        """The largest request body accepted: an image upload, or a dataset zip when training
        is on."""
        zip_bytes = self.training.max_zip_bytes if self.training is not None else 0
        return max(self.max_upload_bytes, zip_bytes)

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * MIB)


# Training from the page (``detbench serve --allow-training``).
TRAIN_TOKEN_VARIABLE = "DETBENCH_TRAIN_TOKEN"
DEFAULT_TRAIN_QUEUE = 4
DEFAULT_TRAIN_CONCURRENCY = 1
DEFAULT_TRAIN_ZIP_MB = 256.0
DEFAULT_TRAIN_UNPACKED_MB = 2048.0
DEFAULT_TRAIN_ZIP_MEMBERS = 20_000


@dataclasses.dataclass
class TrainingSettings:
    """What ``--allow-training`` and its options configure. Runs are Snakemake runs of
    ``snakefile`` with ``profile``, each in a folder of its own under ``runs_dir``; the form's
    values go over ``base_config`` (whose dataset is "the configured one")."""

    token: str
    runs_dir: Path
    base_config: Path
    snakefile: Path
    profile: Path
    snakemake: Path
    cores: int | None = None
    max_waiting: int = DEFAULT_TRAIN_QUEUE
    concurrency: int = DEFAULT_TRAIN_CONCURRENCY
    max_zip_mb: float = DEFAULT_TRAIN_ZIP_MB
    max_unpacked_mb: float = DEFAULT_TRAIN_UNPACKED_MB
    max_zip_members: int = DEFAULT_TRAIN_ZIP_MEMBERS

    @property
    def max_zip_bytes(self) -> int:
        return int(self.max_zip_mb * MIB)
