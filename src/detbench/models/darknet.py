"""A small Darknet-style network builder and the YOLO model built on it.

A network is a flat sequence of layer specs that mirror the sections of a Darknet ``.cfg`` file
(``[convolutional]``, ``[shortcut]``, ``[route]``, ``[upsample]``, ``[maxpool]``, ``[yolo]``).
Keeping Darknet's flat layer order, rather than a nested PyTorch design, means that layer ``i``
here is layer ``i`` in Darknet's printout and cfg: route/shortcut indices can be copied from the
cfg, and Darknet ``.weights`` files (a plain stream of conv tensors in layer order) map 1:1 onto
``model.layers``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Batch norm: eps as in Darknet's inference normalisation (sqrt(var + 1e-5)), so the official
# COCO weights give Darknet's outputs. Momentum 0.03 (running = 0.97 * running + 0.03 * batch) is
# the ultralytics/yolov3 training value this study reproduces; Darknet's own rolling average uses
# 0.01. Momentum only affects training, never inference with loaded weights.
BN_EPS = 1e-5
BN_MOMENTUM = 0.03
LEAKY_SLOPE = 0.1

# decode() caps t_wh before exp(): a box can be at most 1000 anchors wide/high (>= 10,000 px for
# the smallest anchor, far beyond any input), so real detections are never changed, while a wild
# value early in training cannot overflow to inf (exp overflows float32 at ~88.7).
MAX_LOG_WH = math.log(1e3)


# --------------------------------------------------------------------------------------------
# Layer specs: one dataclass per Darknet cfg section type.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Conv:
    """``[convolutional]`` with ``pad=1``: "same" padding of ``size // 2``."""

    filters: int
    size: int
    stride: int = 1
    batch_normalize: bool = True
    activation: Literal["leaky", "linear"] = "leaky"

    def __post_init__(self) -> None:
        if self.activation not in ("leaky", "linear"):
            raise ValueError(f"unsupported activation {self.activation!r}")


@dataclass(frozen=True)
class Shortcut:
    """``[shortcut]``: previous output + output of layer ``from_`` (linear activation)."""

    from_: int = -3


@dataclass(frozen=True)
class Route:
    """``[route]``: channel concatenation of the given layers (negative = relative)."""

    layers: tuple[int, ...]


@dataclass(frozen=True)
class Upsample:
    """``[upsample]``: nearest-neighbour upsampling."""

    stride: int = 2


@dataclass(frozen=True)
class MaxPool:
    """``[maxpool]`` with Darknet's default ``padding = size - 1`` (see DarknetMaxPool)."""

    size: int
    stride: int


@dataclass(frozen=True)
class YoloHead:
    """``[yolo]``: marks the previous layer's output as a detection output; ``mask`` picks the
    anchors (indices into the model's anchor list) this level predicts."""

    mask: tuple[int, ...]


LayerSpec = Conv | Shortcut | Route | Upsample | MaxPool | YoloHead


@dataclass(frozen=True)
class ModelSpec:
    """A named architecture: its anchors and a function giving its layers for a class count
    (only the detection convs depend on it)."""

    name: str
    anchors: tuple[tuple[int, int], ...]
    layers: Callable[[int], tuple[LayerSpec, ...]]


@dataclass(frozen=True)
class LayerShape:
    """Output of one layer: channel count and total downsampling factor from the input."""

    channels: int
    stride: int


def resolve_index(index: int, current: int) -> int:
    """Darknet's convention: a negative layer index is relative to the current layer."""
    absolute = current + index if index < 0 else index
    if not 0 <= absolute < current:
        raise ValueError(f"layer {current}: reference {index} does not point to an earlier layer")
    return absolute


def layer_sources(layers: Sequence[LayerSpec]) -> dict[int, tuple[int, ...]]:
    """Absolute indices of the earlier layers each route/shortcut layer reads."""
    sources: dict[int, tuple[int, ...]] = {}
    for i, spec in enumerate(layers):
        if isinstance(spec, Route):
            sources[i] = tuple(resolve_index(j, i) for j in spec.layers)
        elif isinstance(spec, Shortcut):
            sources[i] = (resolve_index(spec.from_, i),)
    return sources


def infer_shapes(layers: Sequence[LayerSpec], in_channels: int = 3) -> list[LayerShape]:
    """Channels and stride of every layer's output, checking that the spec is consistent."""
    sources = layer_sources(layers)
    shapes: list[LayerShape] = []
    prev = LayerShape(in_channels, 1)
    for i, spec in enumerate(layers):
        if isinstance(spec, Conv):
            shape = LayerShape(spec.filters, prev.stride * spec.stride)
        elif isinstance(spec, MaxPool):
            shape = LayerShape(prev.channels, prev.stride * spec.stride)
        elif isinstance(spec, Upsample):
            if prev.stride % spec.stride:
                raise ValueError(
                    f"layer {i}: cannot upsample stride {prev.stride} by {spec.stride}"
                )
            shape = LayerShape(prev.channels, prev.stride // spec.stride)
        elif isinstance(spec, Shortcut):
            other = shapes[sources[i][0]]
            if other != prev:
                raise ValueError(f"layer {i}: shortcut adds {other} to {prev}")
            shape = prev
        elif isinstance(spec, Route):
            parts = [shapes[j] for j in sources[i]]
            if len({p.stride for p in parts}) != 1:
                raise ValueError(f"layer {i}: route mixes strides {[p.stride for p in parts]}")
            shape = LayerShape(sum(p.channels for p in parts), parts[0].stride)
        elif isinstance(spec, YoloHead):
            if not isinstance(layers[i - 1], Conv) or prev.channels % len(spec.mask):
                raise ValueError(f"layer {i}: yolo layer must follow a conv with 3*(5+nc) filters")
            shape = prev
        else:
            raise TypeError(f"layer {i}: unknown layer spec {spec!r}")
        shapes.append(shape)
        prev = shape
    return shapes


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    """Conv2d (no bias when followed by BN) + BatchNorm2d + LeakyReLU(0.1), as in Darknet."""

    def __init__(self, in_channels: int, spec: Conv) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels,
            spec.filters,
            spec.size,
            spec.stride,
            padding=spec.size // 2,
            bias=not spec.batch_normalize,
        )
        self.bn = (
            nn.BatchNorm2d(spec.filters, eps=BN_EPS, momentum=BN_MOMENTUM)
            if spec.batch_normalize
            else None
        )
        self.act: nn.Module = (
            nn.LeakyReLU(LEAKY_SLOPE, inplace=True) if spec.activation == "leaky" else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class MaxPoolKeepingNoIndices(torch.autograd.Function):
    """``F.max_pool2d`` (no padding) that keeps only its input for backward, where it
    recomputes the argmax, instead of also keeping int64 indices: twice the bytes of an fp32
    output. The input is kept either way (by the in-place LeakyReLU before the pool, or by the
    padding), and the same kernels run, so output and gradient are bit-identical (tested).
    Used in training on the CPU, where a train job's peak memory is the limit
    (benchmarks/RESULTS.md, "Memory of a train job"); on a GPU the memory is plentiful and the
    recomputation would cost time.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, size: int, stride: int) -> Tensor:
        output, _ = torch.ops.aten.max_pool2d_with_indices(x, [size, size], [stride, stride])
        ctx.save_for_backward(x)
        ctx.size, ctx.stride = size, stride
        return output

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None, None]:
        (x,) = ctx.saved_tensors
        kernel, stride = [ctx.size, ctx.size], [ctx.stride, ctx.stride]
        _, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride)
        grad_input = torch.ops.aten.max_pool2d_with_indices_backward(
            grad_output, x, kernel, stride, [0, 0], [1, 1], False, indices
        )
        return grad_input, None, None


class DarknetMaxPool(nn.Module):
    """Darknet's max pooling: ``size - 1`` padding split ``pad // 2`` left/top and the rest
    right/bottom, where padded cells never win (Darknet treats them as -FLT_MAX).

    For 2x2 stride 2 on even sizes this is plain max pooling. For YOLOv3-tiny's 2x2 stride-1
    pool it keeps 13x13 at 13x13: each border cell pools only the real cells it covers. (Zero
    padding, as some PyTorch ports use, differs wherever a border activation is negative.)
    """

    def __init__(self, size: int, stride: int) -> None:
        super().__init__()
        self.size = size
        self.stride = stride
        self.pad_before = (size - 1) // 2
        self.pad_total = size - 1

    def _pad_after(self, length: int) -> int:
        # Only pad as far as the last window actually reaches (saves a copy when it doesn't).
        out = (length + self.pad_total - self.size) // self.stride + 1
        reach = (out - 1) * self.stride + self.size - self.pad_before
        return max(0, reach - length)

    def forward(self, x: Tensor) -> Tensor:
        bottom, right = self._pad_after(x.shape[-2]), self._pad_after(x.shape[-1])
        if self.pad_before or bottom or right:
            pads = (self.pad_before, right, self.pad_before, bottom)
            x = F.pad(x, pads, mode="constant", value=float("-inf"))
        if x.device.type == "cpu" and x.requires_grad and torch.is_grad_enabled():
            return MaxPoolKeepingNoIndices.apply(x, self.size, self.stride)
        return F.max_pool2d(x, self.size, self.stride)

    def extra_repr(self) -> str:
        return f"size={self.size}, stride={self.stride}"


class Marker(nn.Module):
    """Placeholder for parameter-free layers the network runs itself (route, shortcut, yolo),
    so that ``layers[i]`` stays Darknet layer ``i`` and printing the model shows the spec."""

    def __init__(self, spec: LayerSpec) -> None:
        super().__init__()
        self.spec = spec

    def extra_repr(self) -> str:
        return repr(self.spec)


def make_module(spec: LayerSpec, in_channels: int) -> nn.Module:
    if isinstance(spec, Conv):
        return ConvBlock(in_channels, spec)
    if isinstance(spec, MaxPool):
        return DarknetMaxPool(spec.size, spec.stride)
    if isinstance(spec, Upsample):
        return nn.Upsample(scale_factor=spec.stride, mode="nearest")
    return Marker(spec)


class Darknet(nn.Module):
    """Runs a flat Darknet layer list; ``forward`` returns the inputs of the yolo layers."""

    def __init__(self, layers: Sequence[LayerSpec], in_channels: int = 3) -> None:
        super().__init__()
        self.layer_specs: tuple[LayerSpec, ...] = tuple(layers)
        self.shapes = infer_shapes(self.layer_specs, in_channels)
        self.sources = layer_sources(self.layer_specs)
        # Only outputs that a later route/shortcut reads are kept during forward.
        self.kept = frozenset(j for src in self.sources.values() for j in src)
        inputs = [in_channels] + [shape.channels for shape in self.shapes[:-1]]
        self.layers = nn.ModuleList(
            make_module(spec, c) for spec, c in zip(self.layer_specs, inputs, strict=True)
        )
        self.yolo_indices = [i for i, s in enumerate(self.layer_specs) if isinstance(s, YoloHead)]

    def forward(self, x: Tensor) -> list[Tensor]:
        saved: dict[int, Tensor] = {}
        heads: list[Tensor] = []
        for i, (spec, module) in enumerate(zip(self.layer_specs, self.layers, strict=True)):
            if isinstance(spec, Route):
                parts = [saved[j] for j in self.sources[i]]
                x = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            elif isinstance(spec, Shortcut):
                x = x + saved[self.sources[i][0]]
            elif isinstance(spec, YoloHead):
                heads.append(x)
            else:
                x = module(x)
            if i in self.kept:
                saved[i] = x
        return heads


# --------------------------------------------------------------------------------------------
# YOLO
# --------------------------------------------------------------------------------------------


class YOLO(Darknet):
    """YOLOv3-family detector: a Darknet layer list plus Darknet's box decoding.

    * training mode: ``model(x)`` -> list, one per level in output (cfg) order, of RAW tensors
      ``(B, 3, ny, nx, 5 + nc)`` (tx, ty, tw, th, objectness, classes; no activation).
    * eval mode: ``model(x)`` -> ``(decoded, raw)``, ``decoded`` being ``(B, N, 5 + nc)`` with
      cx, cy, w, h in input pixels, objectness and class probabilities (see ``decode``).
    """

    def __init__(self, spec: ModelSpec, num_classes: int) -> None:
        super().__init__(spec.layers(num_classes))
        self.spec = spec
        self.name = spec.name
        self.num_classes = num_classes
        self.num_outputs = 5 + num_classes
        heads = [spec for spec in self.layer_specs if isinstance(spec, YoloHead)]
        if len({len(h.mask) for h in heads}) != 1:
            raise ValueError(f"{spec.name}: every yolo layer must use the same number of anchors")
        self.num_anchors = len(heads[0].mask)
        for i in self.yolo_indices:
            if self.shapes[i].channels != self.num_anchors * self.num_outputs:
                raise ValueError(
                    f"{spec.name}: layer {i - 1} must have {self.num_anchors}*(5+nc) filters"
                )
        self.strides: list[int] = [self.shapes[i].stride for i in self.yolo_indices]
        self.max_stride = max(self.strides)
        anchors = [[spec.anchors[m] for m in head.mask] for head in heads]
        self.anchors: Tensor
        self.register_buffer("anchors", torch.tensor(anchors, dtype=torch.float32))
        self._grids: dict[tuple[int, int, torch.device], Tensor] = {}

    def extra_repr(self) -> str:
        return f"name={self.name!r}, num_classes={self.num_classes}, strides={self.strides}"

    def forward(self, x: Tensor) -> list[Tensor] | tuple[Tensor, list[Tensor]]:  # type: ignore[override]
        self._check_input(x)
        raw = [self._to_raw(h) for h in super().forward(x)]
        if self.training:
            return raw
        return self.decode(raw), raw

    def _check_input(self, x: Tensor) -> None:
        if x.dim() != 4:
            raise ValueError(
                f"{self.name}: expected a (B, C, H, W) batch, got shape {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.max_stride or w % self.max_stride:
            raise ValueError(
                f"{self.name}: input height and width must be multiples of {self.max_stride}, "
                f"got {h}x{w} (HxW)"
            )

    def _to_raw(self, head: Tensor) -> Tensor:
        # Darknet orders a yolo layer's channels anchor-major: channel = anchor * (5 + nc) + entry.
        b, _, ny, nx = head.shape
        head = head.view(b, self.num_anchors, self.num_outputs, ny, nx)
        return head.permute(0, 1, 3, 4, 2).contiguous()

    def _grid(self, ny: int, nx: int, device: torch.device) -> Tensor:
        """(1, 1, ny, nx, 2) cell offsets (x, y), cached per size and device."""
        key = (ny, nx, device)
        grid = self._grids.get(key)
        if grid is None:
            ys = torch.arange(ny, device=device, dtype=torch.float32)
            xs = torch.arange(nx, device=device, dtype=torch.float32)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack((gx, gy), dim=-1).view(1, 1, ny, nx, 2)
            self._grids[key] = grid
        return grid

    def decode(self, raw: Sequence[Tensor]) -> Tensor:
        """Darknet's decoding of RAW head outputs into ``(B, N, 5 + nc)`` (float32).

        ``xy = (sigmoid(t_xy) + cell) * stride``, ``wh = exp(t_wh) * anchor``, objectness and
        classes ``sigmoid``; N runs over levels (output order), anchors, rows, columns. ``t_wh``
        is capped at ``MAX_LOG_WH`` (1000 anchors) so training never produces inf; that cap lies
        far outside any real detection. Decoding is done in float32 even under AMP/half, since
        fp16 pixel coordinates are coarse (0.25 px at 416) and exp overflows it early.
        """
        if len(raw) != len(self.strides):
            raise ValueError(f"{self.name}: expected {len(self.strides)} levels, got {len(raw)}")
        decoded = []
        for level, p in enumerate(raw):
            b, na, ny, nx, no = p.shape
            p = p.float()
            grid = self._grid(ny, nx, p.device)
            anchor = self.anchors[level].to(p.device, torch.float32).view(1, na, 1, 1, 2)
            xy = (p[..., :2].sigmoid() + grid) * self.strides[level]
            wh = p[..., 2:4].clamp(max=MAX_LOG_WH).exp() * anchor
            scores = p[..., 4:].sigmoid()
            decoded.append(torch.cat((xy, wh, scores), dim=-1).view(b, na * ny * nx, no))
        return torch.cat(decoded, dim=1)

    def detection_layers(self) -> list[nn.Conv2d]:
        """The 1x1 linear detection convs (the layer before each yolo layer), in output order."""
        convs = []
        for i in self.yolo_indices:
            block = self.layers[i - 1]
            assert isinstance(block, ConvBlock)
            convs.append(block.conv)
        return convs

    @torch.no_grad()
    def initialize_biases(self, objects_per_image: float = 8.0, image_size: int = 640) -> None:
        """Set detection biases to ultralytics' priors (``_initialize_biases``) so that early
        training starts from sensible probabilities instead of 0.5 everywhere:

        * objectness: ``log(8 / (640 / stride)^2)``, i.e. about 8 objects per 640 px image
          spread over the level's cells;
        * classes: ``log(0.6 / (nc - 0.99))``, i.e. roughly 0.6/nc per class.

        Unlike ultralytics (which adds to the random init), this *sets* the values, so calling it
        twice is harmless. The box (tx, ty, tw, th) biases are left as initialised.
        """
        cls_bias = math.log(0.6 / (self.num_classes - 0.99))
        for conv, stride in zip(self.detection_layers(), self.strides, strict=True):
            assert conv.bias is not None
            bias = conv.bias.view(self.num_anchors, self.num_outputs)
            bias[:, 4] = math.log(objects_per_image / (image_size / stride) ** 2)
            bias[:, 5:] = cls_bias
