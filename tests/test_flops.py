"""Model FLOPs in training (detbench.models.flops) and the datasheet peaks behind MFU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from detbench.models import MODEL_NAMES, build_model, get_model_spec
from detbench.models.darknet import Conv, MaxPool
from detbench.models.flops import ModelFlops, forward_conv_flops, training_flops_per_image
from detbench.training.device import datasheet_peak_flops


def hooked_forward_flops(model: nn.Module, img_size: int) -> float:
    """2 x multiply-adds of every Conv2d the built model runs."""
    total = 0.0

    def count(module: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += 2.0 * output.numel() * module.in_channels // module.groups * kh * kw

    handles = [
        m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)
    ]
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, img_size, img_size))
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_counted_flops_equal_what_the_built_model_runs(name: str) -> None:
    layers = get_model_spec(name).layers(3)
    assert forward_conv_flops(layers, 128) == hooked_forward_flops(build_model(name, 3), 128)


def test_by_hand() -> None:
    # 3 -> 4 channels 3x3 at 8x8, pool to 4x4, 4 -> 2 channels 1x1: 2 x (64x4x3x9 + 16x2x4).
    layers = (Conv(4, 3), MaxPool(2, 2), Conv(2, 1, activation="linear"))
    assert forward_conv_flops(layers, 8) == 2 * (64 * 4 * 3 * 9 + 16 * 2 * 4)
    assert training_flops_per_image(layers, 8) == 3 * forward_conv_flops(layers, 8)


def test_darknet_published_figures() -> None:
    """Darknet's published forward cost at 416 px with COCO's 80 classes."""
    yolov3 = forward_conv_flops(get_model_spec("yolov3").layers(80), 416)
    tiny = forward_conv_flops(get_model_spec("yolov3-tiny").layers(80), 416)
    assert yolov3 / 1e9 == pytest.approx(65.9, abs=0.05)
    assert tiny / 1e9 == pytest.approx(5.56, abs=0.02)


def test_utilisation_and_peaks() -> None:
    flops = ModelFlops(per_image=2e11, peak=1e15)
    assert flops.utilisation(1000.0) == {"model_tflops_per_s": 200.0, "mfu": 0.2}
    assert ModelFlops(2e11, None).utilisation(10.0)["mfu"] is None
    assert datasheet_peak_flops("NVIDIA H100 80GB HBM3", "bf16") == 989e12
    assert datasheet_peak_flops("NVIDIA H100 PCIe", "bf16") == 756e12
    assert datasheet_peak_flops("Tesla T4", "fp16") == 65e12
    assert datasheet_peak_flops("Tesla P40", "bf16") is None  # no such mode on a P40
    assert datasheet_peak_flops(None, "fp32") is None
