"""An exported model (``model.onnx`` with detbench's metadata) under ONNX Runtime, without torch."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from detbench.deploy.metadata import DETECTIONS_NAME, INPUT_NAME, ExportedModel
from detbench.deploy.nms import non_max_suppression
from detbench.deploy.preprocess import to_float
from detbench.errors import DetbenchError
from detbench.evaluation.detections import Detections

# Backend name -> ONNX Runtime execution provider.
PROVIDERS = {
    "onnxruntime": "CPUExecutionProvider",
    "onnxruntime-cuda": "CUDAExecutionProvider",
    "onnxruntime-tensorrt": "TensorrtExecutionProvider",
}
# The package that brings each provider, for the one-line error when it is missing.
PROVIDER_PACKAGES = {
    "CPUExecutionProvider": "onnxruntime",
    "CUDAExecutionProvider": "onnxruntime-gpu",
    "TensorrtExecutionProvider": "onnxruntime-gpu (with TensorRT's libraries)",
}


def import_onnxruntime() -> Any:
    """The onnxruntime module, or a one-line error naming the package to install."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise DetbenchError(
            "ONNX Runtime is not installed: pip install onnxruntime (or 'detbench[deploy]')"
        ) from None


def available_backends() -> list[str]:
    """The ONNX Runtime backends this machine can run (none without onnxruntime)."""
    try:
        providers = import_onnxruntime().get_available_providers()
    except DetbenchError:
        return []
    return [name for name, provider in PROVIDERS.items() if provider in providers]


def read_metadata(path: str | Path) -> ExportedModel:
    """The detbench metadata of an ONNX file (read with onnx, without loading a session)."""
    path = Path(path)
    try:
        import onnx
    except ImportError:
        message = "onnx is not installed: pip install onnx (or 'detbench[deploy]')"
        raise DetbenchError(message) from None
    if not path.is_file():
        raise DetbenchError(f"{path}: ONNX model file does not exist")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:120]
        raise DetbenchError(f"{path}: not an ONNX model ({detail})") from None
    properties = {prop.key: prop.value for prop in proto.metadata_props}
    return ExportedModel.from_properties(properties, path)


class OnnxRuntimeModel:
    """One exported model in an ONNX Runtime session.

    ``threads``: intra-op threads (None: ONNX Runtime's default, one per core).
    """

    def __init__(
        self, path: str | Path, backend: str = "onnxruntime", *, threads: int | None = None
    ) -> None:
        self.path = Path(path)
        self.backend = backend
        ort = import_onnxruntime()
        provider = PROVIDERS.get(backend)
        if provider is None:
            raise DetbenchError(f"backend {backend!r}: expected one of {', '.join(PROVIDERS)}")
        if provider not in ort.get_available_providers():
            raise DetbenchError(
                f"backend {backend}: ONNX Runtime's {provider} is not installed here "
                f"(install {PROVIDER_PACKAGES[provider]})"
            )
        if not self.path.is_file():
            raise DetbenchError(f"{self.path}: ONNX model file does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=[provider])
        except Exception as exc:
            detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            message = f"{self.path}: not an ONNX model ONNX Runtime loads ({detail})"
            raise DetbenchError(message) from None
        # From the session, so serving needs no onnx package.
        properties = dict(self.session.get_modelmeta().custom_metadata_map)
        self.metadata = ExportedModel.from_properties(properties, self.path)
        self.class_names = self.metadata.class_names
        self.img_size = self.metadata.img_size
        self.input_dtype = np.float16 if self.metadata.half else np.float32
        self.output_names = [output.name for output in self.session.get_outputs()]

    @property
    def device(self) -> str:
        return "cpu" if self.backend == "onnxruntime" else "cuda"

    def run(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """uint8 or float (B, 3, S, S) -> decoded (B, N, 5 + nc) float32 and the raw heads."""
        outputs = self.session.run(None, {INPUT_NAME: to_float(images, self.input_dtype)})
        named = dict(zip(self.output_names, outputs, strict=True))
        raw = [value for name, value in named.items() if name != DETECTIONS_NAME]
        return named[DETECTIONS_NAME].astype(np.float32, copy=False), raw

    forward = run

    def suppress(
        self,
        decoded: np.ndarray,
        *,
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """The evaluation's NMS, in numpy, on :meth:`run`'s detections."""
        return non_max_suppression(
            decoded,
            conf_threshold=conf_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )

    def peak_gpu_bytes(self) -> int | None:
        return None  # ONNX Runtime's arena does not report a peak
