"""A trained cell's ``weights.pt`` under PyTorch, as the evaluation runs it (channels-last,
``inference_mode``, the evaluation's NMS): eager fp32, or AMP on a GPU (``torch-amp``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from detbench.errors import DetbenchError
from detbench.evaluation.detections import Detections
from detbench.evaluation.inference import load_trained_model, model_input, non_max_suppression
from detbench.study.config import TrainHyperparameters
from detbench.training.device import select_device, select_precision, synchronize

BACKENDS = ("torch", "torch-amp")


def available_backends() -> list[str]:
    """PyTorch eager everywhere; AMP only on a CUDA GPU (on a CPU it is eager fp32 again)."""
    return ["torch", "torch-amp"] if torch.cuda.is_available() else ["torch"]


class TorchModel:
    """A trained model on ``device`` (``auto``: the first GPU if any), in the evaluation's
    memory layout so its detections are the evaluation's to the last bit."""

    def __init__(
        self, path: str | Path, backend: str = "torch", *, device: str = "auto"
    ) -> None:
        if backend not in BACKENDS:
            raise DetbenchError(f"backend {backend!r}: expected one of {', '.join(BACKENDS)}")
        self.backend = backend
        self.torch_device = select_device(device)
        if backend == "torch-amp" and self.torch_device.type != "cuda":
            raise DetbenchError("backend torch-amp: needs a CUDA GPU (PyTorch sees none)")
        self.model, self.trained = load_trained_model(path, self.torch_device)
        self.channels_last = TrainHyperparameters().channels_last
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.precision = select_precision(self.torch_device, amp=backend == "torch-amp")
        self.class_names = tuple(str(n) for n in self.trained["class_names"])
        self.img_size = int(self.trained["img_size"])

    @property
    def device(self) -> str:
        return self.torch_device.type

    @torch.inference_mode()
    def run(self, images: np.ndarray) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """uint8 or float (B, 3, S, S) -> decoded (B, N, 5 + nc) and the raw heads, on the
        device, finished (the GPU waited for)."""
        batch = model_input(
            torch.from_numpy(images), self.torch_device, channels_last=self.channels_last
        )
        dtype = self.precision.dtype
        with torch.autocast(self.torch_device.type, dtype=dtype, enabled=dtype is not None):
            decoded, raw = self.model(batch)
        synchronize(self.torch_device)
        return decoded, raw

    def forward(self, images: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """As :meth:`run`, as float32 numpy arrays."""
        decoded, raw = self.run(images)
        return decoded.float().cpu().numpy(), [r.float().cpu().numpy() for r in raw]

    @torch.inference_mode()
    def suppress(
        self,
        decoded: torch.Tensor,
        *,
        conf_threshold: float,
        iou_threshold: float,
        max_detections: int,
    ) -> list[Detections]:
        """The evaluation's NMS on :meth:`run`'s detections."""
        return non_max_suppression(
            decoded,
            conf_threshold=conf_threshold,
            iou_threshold=iou_threshold,
            max_detections=max_detections,
        )

    def peak_gpu_bytes(self) -> int | None:
        if self.torch_device.type != "cuda":
            return None
        return int(torch.cuda.max_memory_allocated(self.torch_device))
