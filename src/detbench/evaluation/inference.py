"""From network outputs to detections: confidence filter, per-class NMS, and trained-model files.

Shared by evaluation, the benchmarks and the web app, so every consumer filters and suppresses
detections the same way.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Detections and their mapping back to the image live without torch (detections.py), for the
# ONNX Runtime path; imported from here by the PyTorch one.
from detbench.errors import DetbenchError
from detbench.evaluation.detections import Detections as Detections
from detbench.evaluation.detections import to_original_pixels as to_original_pixels

WEIGHTS_FORMAT = "detbench-weights-v1"


def model_input(images: torch.Tensor, device: torch.device, *, channels_last: bool) -> torch.Tensor:
    """uint8 (B, 3, H, W) letterboxed images as the network takes them: on ``device``, float
    in [0, 1], in the memory format of the model's weights (see TrainingState.create). The one
    place training, evaluation and the web app prepare input."""
    batch = images.to(device, non_blocking=True)
    if batch.dtype == torch.uint8:
        batch = batch.float().div_(255)
    if channels_last:
        batch = batch.contiguous(memory_format=torch.channels_last)
    return batch


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    half = boxes[..., 2:4] / 2
    return torch.cat([boxes[..., :2] - half, boxes[..., :2] + half], dim=-1)


def non_max_suppression(
    decoded: torch.Tensor,
    *,
    conf_threshold: float,
    iou_threshold: float,
    max_detections: int,
) -> list[Detections]:
    """Per image: score = objectness x class probability for every class above the threshold
    (multi-label, as Darknet and the 2020 code do), then per-class NMS, best first.

    ``decoded``: (B, N, 5 + nc) rows of cx, cy, w, h (px), objectness, class probabilities.
    """
    # Imported here, not at the top: torchvision's import costs memory and start-up time and
    # is only needed where detections are made, and train jobs never make any.
    import torchvision

    results = []
    decoded = decoded.float()
    for image in decoded:
        image = image[image[:, 4] > conf_threshold]
        scores = image[:, 5:] * image[:, 4:5]
        anchor_index, class_index = (scores > conf_threshold).nonzero(as_tuple=True)
        boxes = xywh_to_xyxy(image[anchor_index, :4])
        box_scores = scores[anchor_index, class_index]
        keep = torchvision.ops.batched_nms(boxes, box_scores, class_index, iou_threshold)
        keep = keep[:max_detections]
        results.append(
            Detections(
                boxes=boxes[keep].cpu().numpy().astype(np.float64),
                scores=box_scores[keep].cpu().numpy().astype(np.float64),
                classes=class_index[keep].cpu().numpy().astype(np.int64),
            )
        )
    return results


def save_trained_model(path: str | Path, model: torch.nn.Module, metadata: dict[str, Any]) -> None:
    from detbench import atomic

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic.torch_save({"format": WEIGHTS_FORMAT, "state_dict": state, **metadata}, path)


def load_trained_model(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Load a model written by :func:`save_trained_model`; returns it in eval mode with its
    metadata (model name, class names, image size, ...)."""
    from detbench.models import build_model

    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DetbenchError(f"{path}: weights file does not exist") from None
    except Exception as exc:
        # torch's message can run to many lines (unpickling advice): keep its first line.
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        detail = re.sub(r"\x1b\[[0-9;]*m", "", detail)
        raise DetbenchError(f"{path}: not a readable detbench weights file ({detail})") from None
    if not isinstance(payload, dict) or payload.get("format") != WEIGHTS_FORMAT:
        raise DetbenchError(f"{path}: not a detbench weights file (format {WEIGHTS_FORMAT})")
    model = build_model(payload["model"], num_classes=len(payload["class_names"]))
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    metadata = {k: v for k, v in payload.items() if k not in ("state_dict", "format")}
    return model, metadata
