"""The model registry: each model's spec by name, and a freshly initialised model."""

from __future__ import annotations

from detbench.errors import DetbenchError
from detbench.models.darknet import YOLO, ModelSpec
from detbench.models.yolov3 import YOLOV3
from detbench.models.yolov3_tiny import YOLOV3_TINY

MODEL_SPECS: dict[str, ModelSpec] = {spec.name: spec for spec in (YOLOV3, YOLOV3_TINY)}
MODEL_NAMES: tuple[str, ...] = tuple(MODEL_SPECS)  # ("yolov3", "yolov3-tiny")


def get_model_spec(name: str) -> ModelSpec:
    try:
        return MODEL_SPECS[name]
    except KeyError:
        raise DetbenchError(
            f"model: unknown model {name!r}, expected one of {', '.join(MODEL_NAMES)}"
        ) from None


def build_model(name: str, num_classes: int = 80) -> YOLO:
    """A freshly initialised model (PyTorch default init; see ``YOLO.initialize_biases``)."""
    spec = get_model_spec(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DetbenchError(f"num_classes: must be a positive integer, got {num_classes!r}")
    return YOLO(spec, num_classes)
