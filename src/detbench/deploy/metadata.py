"""What an exported model says about itself, stored in the ONNX file's metadata properties."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError

ONNX_FORMAT = "detbench-onnx-v1"
# The property holding the whole record; the plain ones beside it are for other tools
# (Netron, a C++ client) that read single keys.
METADATA_KEY = "detbench"
INPUT_NAME = "images"
DETECTIONS_NAME = "detections"
# Preprocessing the model expects: the evaluation's letterbox (uint8 canvas, grey 114) or
# Darknet's letterbox_image (the official COCO weights).
PREPROCESSING = ("letterbox", "darknet")


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """The metadata of an exported model: enough to prepare its input and read its output.

    Input ``images``: float (B, 3, img_size, img_size) RGB in [0, 1]. Outputs: ``detections``
    (B, N, 5 + nc) cx, cy, w, h px, objectness, class probabilities (NMS is the caller's), and
    ``raw<i>`` (B, anchors, ny, nx, 5 + nc) per level, the heads before decoding.
    """

    model: str
    class_names: tuple[str, ...]
    img_size: int
    anchors: tuple[tuple[tuple[int, int], ...], ...]  # per level, output order
    strides: tuple[int, ...]
    dynamic_batch: bool
    half: bool
    opset: int
    preprocessing: str = "letterbox"
    trained: dict[str, Any] = dataclasses.field(default_factory=dict)  # dataset, epochs, ...
    format: str = ONNX_FORMAT

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def properties(self) -> dict[str, str]:
        """The ONNX metadata_props: the whole record plus single keys."""
        return {
            METADATA_KEY: self.to_json(),
            "class_names": json.dumps(list(self.class_names)),
            "input_size": str(self.img_size),
            "anchors": json.dumps([list(map(list, level)) for level in self.anchors]),
            "strides": json.dumps(list(self.strides)),
        }

    @classmethod
    def from_properties(cls, properties: dict[str, str], path: Path) -> ExportedModel:
        """The record in ``properties``; a one-line error naming ``path`` otherwise."""
        raw = properties.get(METADATA_KEY)
        if raw is None:
            raise DetbenchError(
                f"{path}: an ONNX model without detbench's metadata (export one with "
                "`detbench export WEIGHTS --format onnx`)"
            )
        try:
            record = json.loads(raw)
            if record.get("format") != ONNX_FORMAT:
                raise ValueError(f"format {record.get('format')!r}, expected {ONNX_FORMAT}")
            return cls(
                model=str(record["model"]),
                class_names=tuple(str(n) for n in record["class_names"]),
                img_size=int(record["img_size"]),
                anchors=tuple(tuple(tuple(a) for a in level) for level in record["anchors"]),
                strides=tuple(int(s) for s in record["strides"]),
                dynamic_batch=bool(record["dynamic_batch"]),
                half=bool(record["half"]),
                opset=int(record["opset"]),
                preprocessing=str(record.get("preprocessing", "letterbox")),
                trained=dict(record.get("trained", {})),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DetbenchError(f"{path}: detbench metadata unreadable ({exc})") from None
