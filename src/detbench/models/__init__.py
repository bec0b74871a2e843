"""YOLOv3 and YOLOv3-tiny in PyTorch, in Darknet's layer order, with Darknet ``.weights`` I/O.

What lives here: the layer graph (``darknet``, ``yolov3``, ``yolov3_tiny``), building a model
by name (``build``), Darknet ``.weights`` files (``weights``; the official files' URLs and
checksums in ``darknet_files``, which needs no torch), starting weights (``pretrained``) and
FLOP counts (``flops``). It may import ``detbench.errors``, ``detbench.atomic`` and
``detbench.data`` helpers, never training or evaluation.

The names below are imported on first use, so ``detbench.models.darknet_files`` can be read
while a workflow is planned without loading torch.

>>> model = build_model("yolov3-tiny", num_classes=3)
>>> model.strides
[32, 16]
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MODEL_NAMES": "detbench.models.build",
    "MODEL_SPECS": "detbench.models.build",
    "build_model": "detbench.models.build",
    "get_model_spec": "detbench.models.build",
    "YOLO": "detbench.models.darknet",
    "ModelSpec": "detbench.models.darknet",
    "WeightsLoadReport": "detbench.models.weights",
    "expected_weights_bytes": "detbench.models.weights",
    "load_darknet_weights": "detbench.models.weights",
    "save_darknet_weights": "detbench.models.weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
