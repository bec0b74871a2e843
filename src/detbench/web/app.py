"""The Flask app: the upload page, ``POST /api/detect``, ``GET /api/models``, ``GET /healthz``.

Uploads are parsed into memory (never a temporary file, let alone one named after the user's
file) and bounded by ``MAX_CONTENT_LENGTH``; images are decoded with a pixel limit checked
from the header first (:mod:`detbench.web.images`).
"""

from __future__ import annotations

import io
import logging
import math
import threading
import time
from functools import partial
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from flask import Flask, Request, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from detbench.errors import DetbenchError
from detbench.web.draw import annotate, png_data_url
from detbench.web.images import ImageRejected, decode_upload
from detbench.web.model_picker import CellModel, ModelPicker
from detbench.web.registry import (
    BLOOD_CELL_CLASSES,
    MODEL_KEYS,
    ModelRegistry,
    ModelUnavailable,
)
from detbench.web.settings import MIN_CONFIDENCE, WebConfig

if TYPE_CHECKING:
    from detbench.web.training_queue import TrainingQueue

log = logging.getLogger("detbench.web")


class InMemoryRequest(Request):
    """Werkzeug spools file parts over 500 kB to a temporary file; keep them in memory instead
    (MAX_CONTENT_LENGTH bounds their size)."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(config: WebConfig, registry: ModelRegistry | None = None) -> Flask:
    """The app for ``config``; models are loaded here, once (unless ``registry`` is given).
    With ``config.training`` the Train page's queue starts here too."""
    if registry is None and config.joint_model is not None:
        from detbench.web.joint import load_joint_registry

        registry = load_joint_registry(
            config.joint_model, resolve_device(config.device), config.bccd_origin
        )
    if registry is None and config.backend == "onnxruntime":
        from detbench.web.onnx_serving import onnx_registry

        registry = onnx_registry(config)  # no torch in this process
    elif registry is None:
        registry = ModelRegistry.from_files(
            resolve_device(config.device),
            bccd_model=config.bccd_model,
            bccd_origin=config.bccd_origin,
            coco_weights=config.coco_weights,
            coco_img_size=config.coco_img_size,
        )
    app = Flask(__name__)
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = config.max_upload_bytes
    training_queue = None
    if config.training is not None:
        from detbench.web.train_routes import add_training

        training_queue = add_training(app, config.training)
    picker = ModelPicker(
        partial(picker_results_dirs, config, training_queue),
        registry.device,
        config.model_cache_size,
    )
    app.extensions["detbench"] = {
        "config": config,
        "registry": registry,
        "picker": picker,
        "training_queue": training_queue,
    }
    # Decoding and inference hold most of a request's memory: at most `concurrency` at once.
    slots = threading.BoundedSemaphore(config.concurrency)

    @app.after_request
    def security_headers(response: Any) -> Any:
        # Everything the page loads is its own; the annotated image is a data: URL.
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; img-src 'self' data:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/")
    def index() -> str:
        return render_template(
            "index.html",
            slots={key: registry.slots[key].info() for key in MODEL_KEYS},
            blood_cell_classes=",".join(BLOOD_CELL_CLASSES),
            joint=getattr(registry, "joint", None),
            config=config,
            device=str(registry.device),
            cells=picker.models(),
            cell_label=cell_label,
            training=config.training is not None,
            selected=request.args.get("model", ""),
        )

    @app.get("/api/models")
    def models() -> Any:
        return jsonify(models_body(registry, picker))

    @app.get("/healthz")
    def healthz() -> Any:
        available = registry.available()
        body = {
            "status": "ok" if available else "no model loaded",
            "device": str(registry.device),
            "models": {key: slot.info() for key, slot in registry.slots.items()},
            "limits": {
                "max_upload_bytes": config.max_upload_bytes,
                "max_pixels": config.max_pixels,
            },
        }
        return jsonify(body), 200 if available else 503

    @app.post("/api/detect")
    def detect() -> Any:
        started = time.perf_counter()
        key = request.form.get("model") or (registry.available() or ["bccd"])[0]
        try:
            served = registry.get(key) if key in MODEL_KEYS else picker.get(key)
        except ModelUnavailable as error:
            raise ApiError(400, str(error)) from None
        confidence = _parse_confidence(request.form.get("confidence"), config.default_confidence)
        upload = request.files.get("image")
        if upload is None:
            raise ApiError(400, "no file in the form field 'image'")
        if not slots.acquire(timeout=config.queue_timeout_s):
            raise ApiError(
                503,
                f"server busy: {config.concurrency} images are being processed and others "
                f"waited {config.queue_timeout_s:g} s; try again in a moment",
            )
        try:
            body = _detect(upload.read(), key, served, confidence, config)
        finally:
            slots.release()
        body["total_ms"] = round((time.perf_counter() - started) * 1000, 2)
        log.info(
            "%s on %dx%d at confidence %g: %d detections, inference %.0f ms, total %.0f ms",
            key,
            body["width"],
            body["height"],
            confidence,
            len(body["detections"]),
            body["inference_ms"],
            body["total_ms"],
        )
        return jsonify(body)

    @app.errorhandler(ApiError)
    def api_error(error: ApiError) -> Any:
        response = jsonify({"error": error.message})
        if error.status == 503:
            response.headers["Retry-After"] = "5"
        return response, error.status

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        status = error.code or 500
        if status == 413:
            message = upload_too_large_message(config)
        else:
            message = error.description or error.name
        if request.path.startswith("/api/") or status == 413:
            return jsonify({"error": message}), status
        return error

    return app


def picker_results_dirs(config: WebConfig, training_queue: TrainingQueue | None) -> list[Path]:
    """The folders the model picker lists cells from: --results, then the training runs'."""
    own = [config.results_dir] if config.results_dir is not None else []
    return own + (training_queue.results_dirs() if training_queue is not None else [])


def models_body(registry: ModelRegistry, picker: ModelPicker) -> dict[str, Any]:
    """``GET /api/models``: the two fixed models, then every evaluated cell (any ``id`` here is
    a valid ``model`` for ``POST /api/detect``), and what the cache holds."""
    fixed = [
        {"id": key, "fixed": True, **registry.slots[key].info()}
        for key in MODEL_KEYS
        if registry.slots[key].served is not None
    ]
    cells = [{**model.to_json(), "fixed": False} for model in picker.models()]
    return {
        "models": fixed + cells,
        "cache": {"capacity": picker.capacity, "loaded": picker.loaded()},
    }


def cell_label(model: CellModel) -> str:
    """One line per cell in the page's model list: what it is and how good and slow it was."""
    score = "not scored" if model.map50 is None else f"mAP@0.5 {model.map50:.3f}"
    trained = "" if model.train_seconds is None else f", trained {model.train_seconds:.0f} s"
    return f"{model.id}: {model.dataset}, {score} ({model.eval_split} split){trained}"


def upload_too_large_message(config: WebConfig) -> str:
    return (
        f"upload too large: at most {config.max_upload_mb:g} MiB "
        f"({config.max_upload_bytes:,} bytes) per request"
    )


def _detect(
    data: bytes, key: str, served: Any, confidence: float, config: WebConfig
) -> dict[str, Any]:
    """Decode one upload (reduced when large), detect, and build the JSON answer."""
    try:
        image = decode_upload(data, config.max_pixels, config.max_decode_side)
    except ImageRejected as error:
        raise ApiError(400, f"image: {error}") from None
    seen = served.predict(image.pixels, confidence, config.inference)
    prediction = seen.in_size(image.width, image.height)
    body: dict[str, Any] = {
        "model": key,
        "architecture": served.architecture,
        "width": prediction.width,
        "height": prediction.height,
        "confidence": confidence,
        "nms_iou": served.nms_iou_for(config.inference),
        "detections": prediction.detection_list(),
        "counts": prediction.counts(),
        "inference_ms": round(prediction.inference_ms, 2),
    }
    if image.scale != 1.0:
        body["decoded_size"] = [seen.width, seen.height]
    if _truthy(request.form.get("annotate")):
        labels = [
            f"{label} {score:.2f}"
            for label, score in zip(seen.labels(), seen.detections.scores, strict=True)
        ]
        # Drawn on the decoded pixels: a 5000 px upload is annotated at max_decode_side.
        drawn = annotate(image.pixels, seen.detections.boxes, labels, seen.detections.classes)
        body["annotated_image"] = png_data_url(drawn)
        body["annotated_size"] = [drawn.shape[1], drawn.shape[0]]
    return body


def resolve_device(requested: str) -> Any:
    """``--device``: auto, cpu, cuda, cuda:N (a torch.device); a one-line error naming the
    option otherwise."""
    import torch

    from detbench.training.device import select_device

    try:
        device = torch.device(requested) if requested != "auto" else None
    except RuntimeError:
        raise DetbenchError(
            f"--device {requested}: not a device name (auto, cpu, cuda, cuda:N)"
        ) from None
    if device is not None and device.type == "cuda" and not torch.cuda.is_available():
        raise DetbenchError(f"--device {requested}: no CUDA GPU here (use --device auto or cpu)")
    return select_device(requested)


def _parse_confidence(raw: str | None, default: float) -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"confidence: {raw[:40]!r} is not a number") from None
    if not math.isfinite(value) or not MIN_CONFIDENCE <= value <= 1:
        raise ApiError(400, f"confidence: must be between {MIN_CONFIDENCE} and 1, got {raw[:40]}")
    return value


def _truthy(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")
