"""One joint model for both slots: a cell trained on a merged dataset (blood cells and COCO's
classes, detbench.data.merge) serves ``bccd`` and ``coco`` at once.

The model is loaded once; each slot is a view of it that shows only its classes: ``bccd`` the
blood-cell classes, ``coco`` every other class. So the API keeps its meaning (``model=bccd``
answers with blood cells, ``model=coco`` with common objects) and the page's Blood cells
checkbox becomes a filter of which of the one model's classes are shown. A view's detections
are those NMS would keep with its classes alone (NMS is per class; only the per-image cap is
applied after the filter).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detbench.errors import DetbenchError
from detbench.evaluation.inference import Detections
from detbench.web.registry import (
    BLOOD_CELL_CLASSES,
    MODEL_TITLES,
    ModelRegistry,
    ModelSlot,
    Prediction,
    ServedModel,
    load_bccd_model,
)
from detbench.web.settings import InferenceSettings

JOINT_TITLES = {
    "bccd": "Blood cells (joint model: RBC, WBC, Platelets)",
    "coco": "Common objects (joint model)",
}


class ClassView:
    """A served model with only some of its classes shown (what ServedModel offers the app)."""

    def __init__(self, key: str, served: ServedModel, classes: tuple[str, ...]) -> None:
        self.key = key
        self.served = served
        self.classes = classes
        self.class_ids = np.array([served.class_names.index(c) for c in classes], dtype=np.int64)
        self.architecture = served.architecture
        self.class_names = served.class_names

    def nms_iou_for(self, settings: InferenceSettings) -> float:
        return self.served.nms_iou_for(settings)

    def predict(
        self, image: np.ndarray, confidence: float, settings: InferenceSettings
    ) -> Prediction:
        # Every class's detections first (the cap is per image over all classes), then the cap
        # over this view's classes alone.
        wide = dataclasses.replace(
            settings, max_detections=settings.max_detections * len(self.served.class_names)
        )
        prediction = self.served.predict(image, confidence, wide)
        found = prediction.detections
        keep = np.flatnonzero(np.isin(found.classes, self.class_ids))[: settings.max_detections]
        shown = Detections(found.boxes[keep], found.scores[keep], found.classes[keep])
        return dataclasses.replace(prediction, detections=shown)

    def info(self) -> dict[str, Any]:
        info = self.served.info()
        info.update(
            title=JOINT_TITLES.get(self.key, MODEL_TITLES.get(self.key, self.key)),
            classes=list(self.classes),
            joint=True,
        )
        return info


class JointRegistry(ModelRegistry):
    """Both slots served by one joint model."""

    def __init__(self, device: torch.device, joint: ServedModel) -> None:
        blood = tuple(c for c in joint.class_names if c in BLOOD_CELL_CLASSES)
        others = tuple(c for c in joint.class_names if c not in BLOOD_CELL_CLASSES)
        views = {"bccd": ClassView("bccd", joint, blood), "coco": ClassView("coco", joint, others)}
        super().__init__(device, {key: ModelSlot(key, view) for key, view in views.items()})  # type: ignore[arg-type]
        self.joint = joint


def load_joint_registry(
    path: str | Path, device: torch.device, origin: str | None = None
) -> JointRegistry:
    """A joint cell's ``weights.pt`` serving both slots; it must know the three blood-cell
    classes and at least one other class."""
    path = Path(path)
    if not path.is_file():
        raise DetbenchError(f"--joint-model {path}: file does not exist")
    served = load_bccd_model(path, device, origin, joint=True)
    if len(served.class_names) <= len(BLOOD_CELL_CLASSES):
        raise DetbenchError(
            f"{path}: trained for {list(served.class_names)} only: a joint model also knows "
            "other classes (train it on dataset.source: merge)"
        )
    return JointRegistry(device, served)
