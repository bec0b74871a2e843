"""The web app on ONNX Runtime (``detbench serve --backend onnxruntime``): an exported cell's
``model.onnx`` as the blood-cell model, in a process that never imports torch.

The input is prepared as the PyTorch backend prepares it (the evaluation's letterbox) and the
detections suppressed by the evaluation's NMS reimplemented in numpy (detbench.deploy), so a
detection shown at confidence c is one the evaluation scored at c, within the export's
agreement with PyTorch (raw heads within 1e-4). The registry, slots and answers are the
PyTorch backend's (detbench.web.registry, importable without torch).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from detbench.data.augment import Letterbox
from detbench.deploy.onnx_backend import OnnxRuntimeModel
from detbench.deploy.preprocess import letterboxed
from detbench.errors import DetbenchError
from detbench.evaluation.detections import to_original_pixels
from detbench.web.registry import (
    BLOOD_CELL_CLASSES,
    MODEL_TITLES,
    ModelRegistry,
    ModelSlot,
    Prediction,
    _load_slot,
)
from detbench.web.settings import InferenceSettings, WebConfig

BACKEND = "onnxruntime"


class OnnxServedModel:
    """An exported model served like :class:`detbench.web.registry.ServedModel` (same
    ``predict``, ``info`` and ``warm_up``), its forward and NMS under one lock per model."""

    darknet_input = False
    nms_iou: float | None = None  # the app's NMS IoU, which is the evaluation's

    def __init__(self, key: str, runner: OnnxRuntimeModel, description: str) -> None:
        self.key = key
        self.runner = runner
        self.architecture = runner.metadata.model
        self.class_names = runner.class_names
        self.img_size = runner.img_size
        self.device = runner.device
        self.source = runner.path
        self.description = description
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {
            "loaded": True,
            "title": MODEL_TITLES.get(self.key, self.key),
            "architecture": self.architecture,
            "classes": list(self.class_names),
            "img_size": self.img_size,
            "source": str(self.source),
            "description": self.description,
            "precision": "fp16" if self.runner.metadata.half else "fp32",
            "backend": BACKEND,
        }

    def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        canvas, placement = letterboxed(image, self.img_size)
        return canvas[None], placement

    def nms_iou_for(self, settings: InferenceSettings) -> float:
        return settings.nms_iou

    def predict(
        self, image: np.ndarray, confidence: float, settings: InferenceSettings
    ) -> Prediction:
        height, width = image.shape[:2]
        batch, placement = self.preprocess(image)
        with self._lock:
            start = time.perf_counter()
            decoded, _ = self.runner.run(batch)
            found = self.runner.suppress(
                decoded,
                conf_threshold=confidence,
                iou_threshold=settings.nms_iou,
                max_detections=settings.max_detections,
            )[0]
            elapsed_ms = (time.perf_counter() - start) * 1000
        return Prediction(
            width=width,
            height=height,
            detections=to_original_pixels(found, placement, width, height, drop_empty=True),
            class_names=self.class_names,
            inference_ms=elapsed_ms,
        )

    def warm_up(self) -> None:
        grey = np.full((self.img_size, self.img_size, 3), 114, dtype=np.uint8)
        self.predict(grey, 0.5, InferenceSettings())


def load_onnx_bccd_model(path: str | Path, origin: str | None = None) -> OnnxServedModel:
    """An exported cell (model.onnx with detbench's metadata) as the blood-cell model."""
    path = Path(path)
    if path.suffix != ".onnx" and _is_torch_checkpoint(path):
        raise DetbenchError(
            f"{path}: a PyTorch checkpoint, not an ONNX model; the onnxruntime backend serves "
            f"exported models (detbench export {path} --format onnx)"
        )
    runner = OnnxRuntimeModel(path, BACKEND)
    names = runner.class_names
    if sorted(names) != sorted(BLOOD_CELL_CLASSES):
        raise DetbenchError(
            f"{path}: exported for classes {list(names)}, not the blood-cell classes "
            f"{', '.join(BLOOD_CELL_CLASSES)}"
        )
    trained = runner.metadata.trained
    summary = (
        f"{runner.metadata.model} trained on {trained.get('dataset', '?')} "
        f"({trained.get('epochs', '?')} epochs, batch {trained.get('batch', '?')}), input "
        f"{runner.img_size} px, exported to ONNX, served by ONNX Runtime"
    )
    served = OnnxServedModel("bccd", runner, f"{summary}; {origin}" if origin else summary)
    served.warm_up()
    return served


def _is_torch_checkpoint(path: Path) -> bool:
    """torch.save's zip format (a .pt given where an .onnx was meant)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) == b"PK\x03\x04"
    except OSError:
        return False


def onnx_registry(config: WebConfig) -> ModelRegistry:
    """The app's registry on ONNX Runtime: the blood-cell slot from an exported model."""
    if config.coco_weights is not None:
        raise DetbenchError(
            "--coco-weights: the onnxruntime backend serves exported blood-cell models; serve "
            "Darknet's COCO weights with --backend torch"
        )
    slots = {
        "bccd": _load_slot(
            "bccd",
            config.bccd_model,
            "--bccd-model",
            lambda p: load_onnx_bccd_model(p, config.bccd_origin),
        ),
        "coco": ModelSlot("coco", None, "not offered by the onnxruntime backend"),
    }
    registry = ModelRegistry(f"cpu ({BACKEND})", slots)  # type: ignore[arg-type]
    if not registry.available():
        reason = slots["bccd"].absent_reason
        raise DetbenchError(f"detbench serve: no model to serve (bccd: {reason})")
    return registry
