"""Model FLOPs, counted from the layer specs as Darknet counts them: every convolution's
multiply-adds, twice (a multiply and an add). Batch norm, activations and the rest are left
out, as model FLOP utilisation (MFU) conventionally counts only the model's arithmetic.

A training step costs three passes of every convolution (forward, gradient of the input,
gradient of the weights): ``TRAINING_PASSES`` x the forward count, as nanoGPT counts 6N per
token (2N forward, 4N backward).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch

from detbench.models.darknet import Conv, LayerSpec, infer_shapes
from detbench.training.device import Precision, datasheet_peak_flops

TRAINING_PASSES = 3


def conv_flops(output_elements: float, in_channels: int, kernel_size: int) -> float:
    """One pass of a convolution (forward, or either gradient): 2 x its multiply-adds."""
    return 2.0 * output_elements * in_channels * kernel_size**2


def forward_conv_flops(layers: Sequence[LayerSpec], img_size: int, in_channels: int = 3) -> float:
    """Forward FLOPs of one ``img_size`` x ``img_size`` image: every convolution's pass."""
    total = 0.0
    previous_channels = in_channels
    for spec, shape in zip(layers, infer_shapes(layers, in_channels), strict=True):
        if isinstance(spec, Conv):
            side = img_size // shape.stride
            total += conv_flops(shape.channels * side * side, previous_channels, spec.size)
        previous_channels = shape.channels
    return total


def training_flops_per_image(layers: Sequence[LayerSpec], img_size: int) -> float:
    """Model FLOPs of training on one image (forward and backward)."""
    return TRAINING_PASSES * forward_conv_flops(layers, img_size)


@dataclasses.dataclass(frozen=True)
class ModelFlops:
    """Model FLOPs of training one image, and the device's datasheet peak (None: unknown)."""

    per_image: float
    peak: float | None

    @classmethod
    def of_training(
        cls,
        layers: Sequence[LayerSpec],
        img_size: int,
        device: torch.device,
        precision: Precision,
    ) -> ModelFlops:
        gpu_name = torch.cuda.get_device_name(device) if device.type == "cuda" else None
        return cls(
            per_image=training_flops_per_image(layers, img_size),
            peak=datasheet_peak_flops(gpu_name, precision.name),
        )

    def utilisation(self, images_per_second: float) -> dict[str, float | None]:
        """Achieved model TFLOP/s at ``images_per_second`` and MFU (None without a peak)."""
        achieved = self.per_image * images_per_second
        return {
            "model_tflops_per_s": achieved / 1e12,
            "mfu": achieved / self.peak if self.peak else None,
        }

    def record(self, images_per_second: float | None) -> dict[str, Any]:
        """The run record's figures over all of a cell's epochs."""
        return {
            "model_flops_per_image": self.per_image,
            "peak_flops_per_s": self.peak,
            "peak_flops_source": "datasheet (dense)" if self.peak else None,
            **self.utilisation(images_per_second or 0.0),
        }
