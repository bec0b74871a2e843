"""How fast one training step could possibly be: a roofline of the model's kernels.

Model FLOP utilisation (MFU) counts only the convolutions' multiply-adds, but a training step
also runs kernels that do almost no arithmetic and move whole activation tensors through device
memory: batch norm (statistics, normalisation, and two backward passes), LeakyReLU, residual
adds, concatenation, upsampling, pooling, the optimizer. Each kernel takes at least
``max(flops / peak, bytes / bandwidth)``; kernels of one CUDA stream run one after another, so a
step takes at least the sum. Model FLOPs over that floor, divided by the peak, is the highest
MFU the step can reach on that hardware, whatever the implementation, as long as it runs those
kernels.

The kernels are counted from the layer specs (no model is built) under three schemes:

* ``eager``: the passes PyTorch's kernels make today (channels-last batch norm: statistics,
  normalise, backward reduce, backward element-wise; in-place LeakyReLU and its backward; a
  copy for every concatenation; the gradient of a tensor read by two layers summed in its own
  kernel; the foreach optimizer and EMA on fp32 parameters, and autocast's bf16 weight copies).
* ``fused-bn-act``: one kernel for batch norm + LeakyReLU forward after the statistics, and one
  backward element-wise kernel for both: what a hand-written fused kernel saves.
* ``conv-only``: every kernel other than the convolutions and the optimizer free, as if batch
  norm and activations were folded into the convolutions' prologues and epilogues: the ceiling
  of this architecture, trained with batch norm, on this hardware.

Every convolution runs as three kernels (forward, gradient of the input, gradient of the
weights; the first layer has no input gradient), each bounded by its own FLOPs and bytes:
early YOLO layers with few channels at high resolution are memory-bound on a GPU whose ridge
point is hundreds of FLOPs per byte.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from detbench.models import flops as model_flops
from detbench.models.darknet import (
    Conv,
    LayerSpec,
    MaxPool,
    Route,
    Shortcut,
    Upsample,
    YoloHead,
    infer_shapes,
    layer_sources,
)

Scheme = Literal["eager", "fused-bn-act", "conv-only"]
SCHEMES: tuple[Scheme, ...] = ("eager", "fused-bn-act", "conv-only")

FP32_BYTES = 4
INDEX_BYTES = 8  # max-pool keeps int64 argmax indices for backward on CUDA


@dataclass(frozen=True)
class Hardware:
    """Peak arithmetic rate in the training dtype and device-memory bandwidth."""

    name: str
    peak_flops: float  # FLOP/s
    bandwidth: float  # bytes/s

    @property
    def ridge_point(self) -> float:
        """FLOPs per byte above which a kernel is bound by arithmetic, not memory."""
        return self.peak_flops / self.bandwidth


# NVIDIA's H100 SXM5 datasheet: dense BF16 tensor cores 989.4 TFLOP/s (the 1,979 figure is with
# 2:4 sparsity), HBM3 3.35 TB/s. Nominal figures: the ceiling they give is an upper bound.
H100_SXM = Hardware("H100 SXM5 datasheet (bf16 dense 989.4 TFLOP/s, 3.35 TB/s)", 989.4e12, 3.35e12)


@dataclass(frozen=True)
class Kernel:
    """One kernel of the training step (or one group of identical passes over one tensor)."""

    layer: int
    kind: str  # "conv", "batch norm", "activation", "data movement", "optimizer"
    what: str
    flops: float
    bytes: float

    def seconds(self, hardware: Hardware) -> float:
        return max(self.flops / hardware.peak_flops, self.bytes / hardware.bandwidth)


@dataclass(frozen=True)
class TensorShape:
    channels: int
    height: int
    width: int

    def elements(self, batch: int) -> int:
        return batch * self.channels * self.height * self.width


@dataclass(frozen=True)
class StepCeiling:
    """The floor on one training step's time and the MFU ceiling it implies."""

    scheme: Scheme
    hardware: Hardware
    model_flops: float  # 3 x forward convolution FLOPs, the convention MFU is counted in
    seconds_by_kind: dict[str, float]

    @property
    def seconds(self) -> float:
        return sum(self.seconds_by_kind.values())

    @property
    def mfu(self) -> float:
        return self.model_flops / self.seconds / self.hardware.peak_flops


def layer_inputs(
    layers: Sequence[LayerSpec], img_size: int, in_channels: int = 3
) -> list[tuple[list[TensorShape], TensorShape]]:
    """Each layer's input tensors and output tensor, per image (channels, height, width)."""
    shapes = infer_shapes(layers, in_channels)
    sources = layer_sources(layers)
    for shape in shapes:
        if img_size % shape.stride:
            raise ValueError(f"image size {img_size} is not a multiple of stride {shape.stride}")
    outputs = [TensorShape(s.channels, img_size // s.stride, img_size // s.stride) for s in shapes]
    result: list[tuple[list[TensorShape], TensorShape]] = []
    previous = TensorShape(in_channels, img_size, img_size)
    for i, spec in enumerate(layers):
        if isinstance(spec, Route):
            inputs = [outputs[j] for j in sources[i]]
        elif isinstance(spec, Shortcut):
            inputs = [previous, outputs[sources[i][0]]]
        else:
            inputs = [previous]
        result.append((inputs, outputs[i]))
        previous = outputs[i]
    return result


def conv_flops(spec: Conv, source: TensorShape, output: TensorShape, batch: int) -> float:
    """One pass of a convolution (forward, or either gradient), Darknet's way."""
    return model_flops.conv_flops(output.elements(batch), source.channels, spec.size)


def consumer_counts(layers: Sequence[LayerSpec]) -> dict[int, int]:
    """How many layers read each layer's output (a single-source route and a yolo marker pass
    their input on unchanged, so their readers count for the layer they alias; the loss reads
    a yolo head's input). The gradient of a tensor with k readers is a sum of k parts."""
    sources = layer_sources(layers)
    alias: dict[int, int] = {}

    def resolve(index: int) -> int:
        return alias.get(index, index)

    counts: dict[int, int] = {}
    for i, spec in enumerate(layers):
        if isinstance(spec, Route):
            read = [resolve(j) for j in sources[i]]
            if len(read) == 1:
                alias[i] = read[0]
                continue
        elif isinstance(spec, YoloHead):
            alias[i] = resolve(i - 1)
            read = [resolve(i - 1)]  # the loss
        elif isinstance(spec, Shortcut):
            read = [resolve(i - 1), resolve(sources[i][0])]
        else:
            read = [resolve(i - 1)] if i > 0 else []
        for j in read:
            counts[j] = counts.get(j, 0) + 1
    return counts


def conv_kernels(
    i: int, spec: Conv, source: TensorShape, output: TensorShape, batch: int, element: int
) -> list[Kernel]:
    flops = conv_flops(spec, source, output, batch)
    weights = output.channels * source.channels * spec.size**2
    x, y = source.elements(batch) * element, output.elements(batch) * element
    kernels = [
        Kernel(i, "conv", "forward", flops, x + y + weights * element),
        Kernel(i, "conv", "weight gradient", flops, y + x + weights * FP32_BYTES),
    ]
    if i > 0:  # nothing needs the gradient of the input image
        kernels.append(Kernel(i, "conv", "input gradient", flops, y + x + weights * element))
    return kernels


def normalisation_kernels(
    i: int, spec: Conv, output: TensorShape, batch: int, element: int, scheme: Scheme
) -> list[Kernel]:
    """Batch norm and activation after a convolution, in passes over its output."""
    if scheme == "conv-only":
        return []
    e = output.elements(batch) * element
    leaky = spec.activation == "leaky"
    if not spec.batch_normalize:  # a detection conv: bias only, its gradient is a reduction
        return [Kernel(i, "batch norm", "bias gradient", 0.0, e)]
    if scheme == "fused-bn-act":
        return [
            Kernel(i, "batch norm", "statistics", 0.0, e),
            Kernel(i, "batch norm", "normalise + activation", 0.0, 2 * e),
            Kernel(i, "batch norm", "backward reduce", 0.0, 2 * e),
            Kernel(i, "batch norm", "backward element-wise (+ activation)", 0.0, 3 * e),
        ]
    kernels = [
        Kernel(i, "batch norm", "statistics", 0.0, e),
        Kernel(i, "batch norm", "normalise", 0.0, 2 * e),
        Kernel(i, "batch norm", "backward reduce", 0.0, 2 * e),
        Kernel(i, "batch norm", "backward element-wise", 0.0, 3 * e),
    ]
    if leaky:
        kernels += [
            Kernel(i, "activation", "LeakyReLU", 0.0, 2 * e),
            Kernel(i, "activation", "LeakyReLU backward", 0.0, 3 * e),
        ]
    return kernels


def movement_kernels(
    i: int,
    spec: LayerSpec,
    inputs: list[TensorShape],
    output: TensorShape,
    batch: int,
    element: int,
) -> list[Kernel]:
    """Layers without arithmetic to speak of: every byte they touch is the cost."""
    e_out = output.elements(batch) * element
    if isinstance(spec, Shortcut):
        return [Kernel(i, "data movement", "residual add", 0.0, 3 * e_out)]
    if isinstance(spec, Route) and len(inputs) > 1:
        return [Kernel(i, "data movement", "concatenate", 0.0, 2 * e_out)]
    if isinstance(spec, Upsample):
        e_in = inputs[0].elements(batch) * element
        return [
            Kernel(i, "data movement", "upsample", 0.0, e_in + e_out),
            Kernel(i, "data movement", "upsample backward", 0.0, e_out + e_in),
        ]
    if isinstance(spec, MaxPool):
        e_in = inputs[0].elements(batch) * element
        indices = output.elements(batch) * INDEX_BYTES
        kernels = [
            Kernel(i, "data movement", "max-pool", 0.0, e_in + e_out + indices),
            # zero the input gradient, then scatter the output gradient through the indices
            Kernel(i, "data movement", "max-pool backward", 0.0, 2 * e_in + e_out + indices),
        ]
        if spec.stride == 1:  # Darknet's padding: F.pad copies the input, and back in backward
            kernels.append(Kernel(i, "data movement", "pad + its backward", 0.0, 4 * e_in))
        return kernels
    return []


def optimizer_kernels(parameters: int, element: int) -> list[Kernel]:
    """SGD with momentum and weight decay (read parameter, gradient, momentum; write parameter,
    momentum), the EMA (read both weights, write one), and autocast's low-precision copy of
    every weight in the forward pass: all on fp32 parameters."""
    p = parameters * FP32_BYTES
    return [
        Kernel(-1, "optimizer", "SGD step", 0.0, 5 * p),
        Kernel(-1, "optimizer", "EMA update", 0.0, 3 * p),
        Kernel(-1, "optimizer", "autocast weight copies", 0.0, p + parameters * element),
    ]


def count_parameters(layers: Sequence[LayerSpec], in_channels: int = 3) -> int:
    """Convolution weights and biases, batch-norm scales and shifts."""
    shapes = infer_shapes(layers, in_channels)
    previous = in_channels
    total = 0
    for spec, shape in zip(layers, shapes, strict=True):
        if isinstance(spec, Conv):
            shift_and_scale = 2 if spec.batch_normalize else 1  # else only a bias
            total += spec.filters * (previous * spec.size**2 + shift_and_scale)
        previous = shape.channels
    return total


def training_kernels(
    layers: Sequence[LayerSpec],
    img_size: int,
    batch: int,
    scheme: Scheme = "eager",
    element: int = 2,
) -> list[Kernel]:
    """The kernels of one training step, ``element`` bytes per activation (2 under AMP)."""
    kernels: list[Kernel] = []
    counts = consumer_counts(layers)
    for i, (spec, (inputs, output)) in enumerate(
        zip(layers, layer_inputs(layers, img_size), strict=True)
    ):
        if isinstance(spec, Conv):
            kernels += conv_kernels(i, spec, inputs[0], output, batch, element)
            kernels += normalisation_kernels(i, spec, output, batch, element, scheme)
        elif scheme != "conv-only":
            kernels += movement_kernels(i, spec, inputs, output, batch, element)
        extra_readers = counts.get(i, 1) - 1
        if extra_readers > 0 and scheme != "conv-only":
            e = output.elements(batch) * element
            kernels.append(Kernel(i, "data movement", "gradient sum", 0.0, 3 * e * extra_readers))
    kernels += optimizer_kernels(count_parameters(layers), element)
    return kernels


def step_ceiling(
    layers: Sequence[LayerSpec],
    img_size: int,
    batch: int,
    hardware: Hardware,
    scheme: Scheme = "eager",
    element: int = 2,
) -> StepCeiling:
    by_kind: dict[str, float] = {}
    for kernel in training_kernels(layers, img_size, batch, scheme, element):
        by_kind[kernel.kind] = by_kind.get(kernel.kind, 0.0) + kernel.seconds(hardware)
    training_flops = model_flops.training_flops_per_image(layers, img_size) * batch
    return StepCeiling(scheme, hardware, training_flops, by_kind)
