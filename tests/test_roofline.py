"""The roofline of a training step: counts checked against the built models and by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from roofline import (
    H100_SXM,
    SCHEMES,
    Hardware,
    consumer_counts,
    count_parameters,
    step_ceiling,
    training_kernels,
)

from detbench.models import MODEL_NAMES, build_model, get_model_spec
from detbench.models.darknet import Conv, LayerSpec, Route, Shortcut, Upsample, YoloHead
from detbench.models.flops import forward_conv_flops


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_parameter_counts_match_the_built_model(name: str) -> None:
    """(The FLOP counts are checked against the built models in test_flops.py.)"""
    with torch.device("meta"):
        model = build_model(name, num_classes=3)
    layers = get_model_spec(name).layers(3)
    assert count_parameters(layers) == sum(p.numel() for p in model.parameters())


def test_one_conv_by_hand() -> None:
    """A 3x3 conv 3 -> 8 channels on 4x4 images, batch 2, bf16 activations."""
    layers: list[LayerSpec] = [Conv(filters=8, size=3)]
    kernels = training_kernels(layers, img_size=4, batch=2, scheme="eager", element=2)
    by_what = {k.what: k for k in kernels}
    flops = 2.0 * (2 * 8 * 4 * 4) * 3 * 9
    x, y, weights = 2 * 3 * 16 * 2, 2 * 8 * 16 * 2, 8 * 3 * 9
    assert by_what["forward"].flops == flops
    assert by_what["forward"].bytes == x + y + weights * 2
    assert by_what["weight gradient"].bytes == x + y + weights * 4
    assert "input gradient" not in by_what  # nothing needs the image's gradient
    assert by_what["statistics"].bytes == y
    assert by_what["backward element-wise"].bytes == 3 * y
    assert by_what["LeakyReLU backward"].bytes == 3 * y
    # parameters: weights, batch norm's scale and shift; SGD reads 3 and writes 2 fp32 copies
    assert by_what["SGD step"].bytes == 5 * 4 * (weights + 16)


def test_a_kernel_is_bound_by_the_slower_of_arithmetic_and_memory() -> None:
    hardware = Hardware("toy", peak_flops=100.0, bandwidth=10.0)  # ridge point: 10 FLOPs/byte
    layers: list[LayerSpec] = [Conv(filters=4, size=1), Conv(filters=64, size=3)]
    kernels = training_kernels(layers, img_size=8, batch=1)
    pointwise = next(k for k in kernels if k.layer == 0 and k.what == "forward")
    wide = next(k for k in kernels if k.layer == 1 and k.what == "forward")
    assert pointwise.flops / pointwise.bytes < hardware.ridge_point
    assert pointwise.seconds(hardware) == pointwise.bytes / hardware.bandwidth
    assert wide.flops / wide.bytes > hardware.ridge_point
    assert wide.seconds(hardware) == wide.flops / hardware.peak_flops


def test_readers_of_each_tensor() -> None:
    layers: list[LayerSpec] = [
        Conv(8, 3, stride=2),  # 0: read by 1 and by the shortcut 2
        Conv(8, 1),  # 1
        Shortcut(from_=-2),  # 2: read by 3 and by the route 6
        Conv(24, 1, batch_normalize=False, activation="linear"),  # 3
        YoloHead(mask=(0, 1, 2)),  # 4: passes 3 on to the loss
        Route(layers=(-4,)),  # 5: passes 1 on
        Route(layers=(-1, 2)),  # 6: concatenates 1 (through 5) and 2
        Upsample(2),  # 7
    ]
    assert consumer_counts(layers) == {0: 2, 1: 2, 2: 2, 3: 1, 6: 1}
    sums = [k for k in training_kernels(layers, 8, 1) if k.what == "gradient sum"]
    assert sorted(k.layer for k in sums) == [0, 1, 2]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_ceilings_are_ordered(name: str) -> None:
    layers = get_model_spec(name).layers(3)
    ceilings = [step_ceiling(layers, 416, 32, H100_SXM, scheme).mfu for scheme in SCHEMES]
    eager, fused, conv_only = ceilings
    assert 0 < eager < fused < conv_only < 1


def test_free_memory_leaves_only_the_convolutions() -> None:
    """With unlimited bandwidth every kernel is bound by its FLOPs; the model convention counts
    the first layer's input gradient, which is never computed, so the ceiling is just above 1."""
    layers = get_model_spec("yolov3-tiny").layers(3)
    unlimited = Hardware("unlimited bandwidth", peak_flops=1e15, bandwidth=math.inf)
    ceiling = step_ceiling(layers, 416, 8, unlimited, "eager")
    first = training_kernels(layers, 416, 8)[0].flops
    model = 3 * forward_conv_flops(layers, 416) * 8
    assert ceiling.mfu == pytest.approx(model / (model - first))
    assert set(ceiling.seconds_by_kind) >= {"conv", "batch norm", "optimizer"}
    assert ceiling.seconds_by_kind["batch norm"] == 0


def test_image_size_must_fit_the_strides() -> None:
    with pytest.raises(ValueError, match="multiple of stride 32"):
        training_kernels(get_model_spec("yolov3").layers(3), 400, 1)


def test_the_benchmark_prints_and_writes_the_ceilings(tmp_path: Path) -> None:
    output = tmp_path / "ceiling.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "mfu_ceiling.py"
    run = subprocess.run(
        [sys.executable, str(script), "--models", "yolov3", "--batches", "32",
         "--peak-tflops", "784", "--output", str(output)],
        capture_output=True, text=True, check=True,
    )
    assert "MFU ceiling %" in run.stdout
    figures = json.loads(output.read_text())
    assert figures["hardware"]["peak_flops"] == 784e12
    by_scheme = {row["scheme"]: row["mfu_ceiling"] for row in figures["results"]}
    hardware = Hardware("run 3", 784e12, H100_SXM.bandwidth)
    layers = get_model_spec("yolov3").layers(3)
    assert by_scheme["eager"] == pytest.approx(step_ceiling(layers, 416, 32, hardware).mfu)
    assert set(by_scheme) == set(SCHEMES)
