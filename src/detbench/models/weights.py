"""Darknet ``.weights`` files: read into / write from a YOLO model.

Layout (little-endian), as Darknet's ``load_weights_upto`` / ``save_weights_upto``:

* header: int32 major, minor, revision; then ``seen`` (images trained on) as int64 when
  ``major * 10 + minor >= 2``, else int32;
* then float32 values, for each convolutional layer in cfg order: with batch norm
  beta (bias), gamma (scale), running mean, running variance; without batch norm the conv
  bias; then the conv weights (out, in, kh, kw).

There is no per-layer framing, so a file only makes sense against an architecture and class
count; sizes are therefore checked exactly.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detbench.atomic import atomic_open
from detbench.errors import DetbenchError
from detbench.models.darknet import YOLO, Conv, ConvBlock, LayerSpec, YoloHead, infer_shapes

SAVE_VERSION = (0, 2, 0)  # what Darknet writes today: int64 seen
HEADER_BYTES_INT64_SEEN = 20
HEADER_BYTES_INT32_SEEN = 16
FLOAT_BYTES = 4
# Darknet reads version numbers >= 1000 as a "transposed weights" flag; no released YOLOv3 file
# uses it, so such (or negative) numbers mean the file is not what we expect.
MAX_VERSION = 1000


@dataclass(frozen=True)
class WeightsLoadReport:
    """What ``load_darknet_weights`` did. Tensor counts are Darknet arrays (5 per conv with batch
    norm: beta, gamma, mean, var, weights; 2 without: bias, weights)."""

    path: Path
    major: int
    minor: int
    revision: int
    seen: int
    loaded_tensors: int
    skipped_tensors: int
    loaded_layers: tuple[int, ...] = ()
    skipped_layers: tuple[int, ...] = ()

    def summary(self) -> str:
        skipped = ""
        if self.skipped_layers:
            skipped = f", skipped {self.skipped_tensors} (layers {list(self.skipped_layers)})"
        return (
            f"{self.path}: Darknet weights v{self.major}.{self.minor}.{self.revision}, "
            f"seen {self.seen}: loaded {self.loaded_tensors} tensors "
            f"({len(self.loaded_layers)} conv layers){skipped}"
        )


# --------------------------------------------------------------------------------------------
# Layout
# --------------------------------------------------------------------------------------------


def conv_layers(
    layers: tuple[LayerSpec, ...], cutoff: int | None
) -> Iterator[tuple[int, Conv, int]]:
    """(layer index, conv spec, input channels) for each conv among the first ``cutoff`` layers."""
    shapes = infer_shapes(layers)
    end = len(layers) if cutoff is None else cutoff
    for i, spec in enumerate(layers[:end]):
        if isinstance(spec, Conv):
            in_channels = 3 if i == 0 else shapes[i - 1].channels
            yield i, spec, in_channels


def conv_array_sizes(spec: Conv, in_channels: int) -> list[int]:
    """Lengths of the float arrays Darknet stores for one conv layer, in file order."""
    per_filter = 4 if spec.batch_normalize else 1
    return [spec.filters] * per_filter + [spec.filters * in_channels * spec.size * spec.size]


def weights_floats(layers: tuple[LayerSpec, ...], cutoff: int | None = None) -> int:
    return sum(sum(conv_array_sizes(spec, c)) for _, spec, c in conv_layers(layers, cutoff))


def conv_tensors(block: ConvBlock) -> list[Tensor]:
    """The model's tensors for one conv layer, in Darknet's file order."""
    if block.bn is not None:
        bn = block.bn
        assert bn.running_mean is not None and bn.running_var is not None
        return [bn.bias, bn.weight, bn.running_mean, bn.running_var, block.conv.weight]
    assert block.conv.bias is not None
    return [block.conv.bias, block.conv.weight]


def _check_cutoff(cutoff: int | None, num_layers: int) -> None:
    if cutoff is not None and not 1 <= cutoff <= num_layers:
        raise ValueError(f"cutoff must be between 1 and {num_layers}, got {cutoff}")


def expected_weights_bytes(
    model_name: str, num_classes: int = 80, cutoff: int | None = None
) -> int:
    """Exact size of a Darknet weights file (v0.2+ header, int64 ``seen``) for an architecture.

    ``expected_weights_bytes("yolov3") == 248_007_048`` (the official COCO file).
    """
    # Imported here: the model registry lives in the package __init__, which imports this module.
    from detbench.models import get_model_spec

    layers = get_model_spec(model_name).layers(num_classes)
    _check_cutoff(cutoff, len(layers))
    return HEADER_BYTES_INT64_SEEN + FLOAT_BYTES * weights_floats(layers, cutoff)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


def _read_file(path: Path) -> np.ndarray:
    """The whole file as a writable uint8 array (one copy; torch can then share it)."""
    try:
        with path.open("rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            buffer = np.empty(size, dtype=np.uint8)
            if handle.readinto(memoryview(buffer)) != size:
                raise DetbenchError(f"{path}: weights file changed while being read")
    except FileNotFoundError:
        raise DetbenchError(f"{path}: weights file not found") from None
    except IsADirectoryError:
        raise DetbenchError(f"{path}: is a directory, expected a Darknet weights file") from None
    except OSError as exc:
        raise DetbenchError(f"{path}: cannot read weights file ({exc.strerror})") from None
    return buffer


def _parse_header(buffer: np.ndarray, path: Path) -> tuple[tuple[int, int, int, int], int]:
    """((major, minor, revision, seen), header size in bytes)."""
    if buffer.size < 3 * 4:
        raise DetbenchError(f"{path}: truncated: {buffer.size} bytes, too short for a header")
    major, minor, revision = (int(v) for v in buffer[:12].view("<i4"))
    if not all(0 <= v < MAX_VERSION for v in (major, minor, revision)):
        raise DetbenchError(
            f"{path}: not a Darknet weights file: header version {major}.{minor}.{revision}"
        )
    int64_seen = major * 10 + minor >= 2
    header_bytes = HEADER_BYTES_INT64_SEEN if int64_seen else HEADER_BYTES_INT32_SEEN
    if buffer.size < header_bytes:
        raise DetbenchError(f"{path}: truncated: {buffer.size} bytes, too short for a header")
    seen = int(buffer[12:header_bytes].view("<i8" if int64_seen else "<i4")[0])
    if seen < 0:
        raise DetbenchError(f"{path}: not a Darknet weights file: header says {seen} images seen")
    return (major, minor, revision, seen), header_bytes


def _describe(model: YOLO, num_classes: int, cutoff: int | None) -> str:
    layers = "" if cutoff is None else f", first {cutoff} layers"
    return f"{model.name} ({num_classes} classes{layers})"


def load_darknet_weights(
    model: YOLO,
    path: str | os.PathLike[str],
    *,
    file_num_classes: int | None = None,
    cutoff: int | None = None,
) -> WeightsLoadReport:
    """Load a Darknet ``.weights`` file into ``model`` (in place).

    ``file_num_classes``: the class count the file was trained with (80 for the official COCO
    files; default: the model's). When it differs from ``model.num_classes``, the detection convs'
    values are read past (keeping the stream aligned) and left untouched in the model.

    ``cutoff``: load only the first ``cutoff`` Darknet layers (cfg sections), as Darknet's
    partial files: ``darknet53.conv.74`` -> 75, ``yolov3-tiny.conv.15`` -> 15. Bytes after those
    layers are allowed then (so a full file can seed a backbone); without a cutoff the file must
    match the architecture exactly.
    """
    path = Path(path)
    file_nc = model.num_classes if file_num_classes is None else file_num_classes
    if file_nc < 1:
        raise ValueError(f"file_num_classes must be positive, got {file_nc}")
    file_layers = model.spec.layers(file_nc)
    _check_cutoff(cutoff, len(file_layers))

    buffer = _read_file(path)
    (major, minor, revision, seen), offset = _parse_header(buffer, path)
    needed = offset + FLOAT_BYTES * weights_floats(file_layers, cutoff)
    if buffer.size < needed:
        raise DetbenchError(
            f"{path}: truncated: expected {needed} bytes of weights for "
            f"{_describe(model, file_nc, cutoff)}, found {buffer.size}"
        )
    if buffer.size > needed and cutoff is None:
        raise DetbenchError(
            f"{path}: {buffer.size - needed} bytes left over after the weights of "
            f"{_describe(model, file_nc, cutoff)} ({buffer.size} bytes, expected {needed}): "
            "wrong model, class count, or a backbone file needing a cutoff"
        )
    values = torch.from_numpy(buffer[offset:needed].view("<f4"))

    loaded_layers: list[int] = []
    skipped_layers: list[int] = []
    loaded = skipped = 0
    position = 0
    with torch.no_grad():
        for index, spec, in_channels in conv_layers(file_layers, cutoff):
            sizes = conv_array_sizes(spec, in_channels)
            block = model.layers[index]
            assert isinstance(block, ConvBlock)
            targets = conv_tensors(block)
            if [t.numel() for t in targets] == sizes:
                for target, size in zip(targets, sizes, strict=True):
                    chunk = values[position : position + size]
                    target.copy_(chunk.view_as(target))
                    position += size
                loaded += len(sizes)
                loaded_layers.append(index)
            else:
                # Only a detection conv can differ (another class count); anything else means
                # the model is not the file's architecture, which the size check rules out.
                assert isinstance(file_layers[index + 1], YoloHead), index
                position += sum(sizes)
                skipped += len(sizes)
                skipped_layers.append(index)
    return WeightsLoadReport(
        path=path,
        major=major,
        minor=minor,
        revision=revision,
        seen=seen,
        loaded_tensors=loaded,
        skipped_tensors=skipped,
        loaded_layers=tuple(loaded_layers),
        skipped_layers=tuple(skipped_layers),
    )


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def save_darknet_weights(
    model: YOLO,
    path: str | os.PathLike[str],
    *,
    cutoff: int | None = None,
    seen: int = 0,
) -> None:
    """Write ``model`` (or its first ``cutoff`` layers) as a Darknet v0.2.0 weights file."""
    _check_cutoff(cutoff, len(model.layer_specs))
    if seen < 0:
        raise ValueError(f"seen must be >= 0, got {seen}")
    with atomic_open(path, "wb") as handle:
        handle.write(np.array(SAVE_VERSION, dtype="<i4").tobytes())
        handle.write(np.array([seen], dtype="<i8").tobytes())
        for index, _, _ in conv_layers(model.layer_specs, cutoff):
            block = model.layers[index]
            assert isinstance(block, ConvBlock)
            for tensor in conv_tensors(block):
                array = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
                handle.write(array.astype("<f4", copy=False).tobytes())
