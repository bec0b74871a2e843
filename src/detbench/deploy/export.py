"""``detbench export``: a trained model to ONNX, checked against PyTorch before it is written.

torch's dynamo exporter (``torch.onnx.export(dynamo=True)``, which needs onnxscript) turns the
whole eval-mode forward, box decoding included, into one graph whose raw heads equal PyTorch's.
NMS stays outside the model, as in the evaluation, so every backend suppresses boxes the same
way. The written file holds the model's metadata (:class:`ExportedModel`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detbench import atomic
from detbench.deploy.metadata import DETECTIONS_NAME, INPUT_NAME, ExportedModel
from detbench.errors import DetbenchError

log = logging.getLogger("detbench.deploy.export")

DEFAULT_OPSET = 18
# Largest difference of a raw head output from PyTorch's (fp32) an export may show.
RAW_TOLERANCE = 1e-4
# The example batch the exporter traces a dynamic batch with: 2, since torch.export specialises
# a dimension of size 1 into a constant. A fixed-batch export takes batch 1.
DYNAMIC_EXAMPLE_BATCH = 2


class _Heads(torch.nn.Module):
    """The eval-mode forward as flat outputs: decoded detections, then each raw head."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        decoded, raw = self.model(images)
        return (decoded, *raw)


@dataclasses.dataclass(frozen=True)
class ExportResult:
    path: Path
    metadata: ExportedModel
    max_raw_difference: float  # largest |ORT - PyTorch| over the raw heads, random input
    bytes: int

    def summary(self) -> str:
        return (
            f"{self.path}: {self.metadata.model} at {self.metadata.img_size} px, opset "
            f"{self.metadata.opset}, {self.bytes / 1e6:.1f} MB; raw heads within "
            f"{self.max_raw_difference:.1e} of PyTorch's"
        )


def load_source(
    path: str | Path, img_size: int | None = None
) -> tuple[torch.nn.Module, dict[str, Any], str]:
    """A detbench checkpoint or an 80-class Darknet ``.weights`` file as (model in eval mode,
    trained metadata, preprocessing); a one-line error naming the file for anything else."""
    from detbench.evaluation.inference import load_trained_model
    from detbench.models import build_model, load_darknet_weights

    path = Path(path)
    if not path.is_file():
        raise DetbenchError(f"{path}: file does not exist")
    if zipfile.is_zipfile(path):  # torch.save's format
        model, trained = load_trained_model(path)
        return model, trained, "letterbox"
    from detbench.data.coco import COCO_CLASSES
    from detbench.web.registry import coco_architecture_for_size
    from detbench.web.settings import COCO_IMG_SIZE

    architecture = coco_architecture_for_size(path.stat().st_size)
    if architecture is None:
        raise DetbenchError(
            f"{path}: neither a detbench checkpoint (weights.pt) nor an 80-class Darknet "
            ".weights file (yolov3 or yolov3-tiny)"
        )
    model = build_model(architecture, num_classes=len(COCO_CLASSES))
    load_darknet_weights(model, path)
    trained = {
        "model": architecture,
        "class_names": list(COCO_CLASSES),
        "img_size": img_size or COCO_IMG_SIZE,
        "dataset": "coco (Darknet's official weights)",
    }
    return model.eval(), trained, "darknet"


def export_onnx(
    source: str | Path,
    output: str | Path,
    *,
    dynamic_batch: bool = False,
    half: bool = False,
    device: str = "cpu",
    opset: int = DEFAULT_OPSET,
    img_size: int | None = None,
    graph_cache: Path | None = None,
) -> ExportResult:
    """Export ``source`` (weights.pt or Darknet .weights) to ``output``; the file is written
    only once ONNX Runtime's raw heads match PyTorch's (fp32: within RAW_TOLERANCE).

    ``graph_cache``: a folder where the traced graph of each architecture, class count, input
    size and batch mode is kept; a later export of the same kind puts its own weights into
    that graph instead of tracing again (the trace is most of an export's time), and still
    passes the same check, else traces afresh."""
    output = Path(output)
    if opset < 17:
        raise DetbenchError(f"--opset {opset}: detbench exports opset 17 or later")
    torch_device = torch.device(device)
    if half and torch_device.type != "cuda":
        raise DetbenchError("--half: exports fp16 for a GPU; give --device cuda")
    model, trained, preprocessing = load_source(source, img_size)
    size = int(img_size or trained["img_size"])
    model = model.to(torch_device).eval()
    if half:
        model = model.half()
    metadata = ExportedModel(
        model=str(trained["model"]),
        class_names=tuple(str(n) for n in trained["class_names"]),
        img_size=size,
        anchors=tuple(tuple(map(tuple, level)) for level in model.anchors.int().tolist()),
        strides=tuple(int(s) for s in model.strides),
        dynamic_batch=dynamic_batch,
        half=half,
        opset=opset,
        preprocessing=preprocessing,
        trained={
            k: v for k, v in trained.items() if isinstance(v, str | int | float) and k != "model"
        },
    )
    dtype = torch.float16 if half else torch.float32
    batch = DYNAMIC_EXAMPLE_BATCH if dynamic_batch else 1
    example = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    example = example.to(torch_device, dtype)
    wrapper = _Heads(model).eval()
    with torch.inference_mode():
        expected = [t.float().cpu().numpy() for t in wrapper(example)]
    levels = len(model.strides)
    cached = _cache_path(graph_cache, metadata) if graph_cache is not None else None
    with tempfile.TemporaryDirectory(prefix="detbench-export-") as scratch:
        exported = Path(scratch) / "model.onnx"
        difference = math.inf
        if cached is not None and cached.is_file():
            try:
                data = _with_metadata(cached, metadata, wrapper.state_dict())
                exported.write_bytes(data)
                difference = _check(exported, example, expected, half)
            except Exception as exc:  # a cached graph ONNX Runtime cannot load: trace afresh
                log.warning("%s: not usable (%s); tracing the model again", cached, exc)
        if not difference <= RAW_TOLERANCE:
            _export(wrapper, example, exported, opset, dynamic_batch, levels)
            if cached is not None:
                cached.parent.mkdir(parents=True, exist_ok=True)
                atomic.write_bytes(cached, exported.read_bytes())
            data = _with_metadata(exported, metadata)
            exported.write_bytes(data)
            difference = _check(exported, example, expected, half)
    if not half and difference > RAW_TOLERANCE:
        raise DetbenchError(
            f"{source}: the exported raw heads differ from PyTorch's by {difference:.1e} "
            f"(more than {RAW_TOLERANCE:g}); nothing written"
        )
    atomic.write_bytes(output, data)
    return ExportResult(output, metadata, difference, len(data))


def _export(
    wrapper: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    dynamic_batch: bool,
    levels: int,
) -> None:
    names = [DETECTIONS_NAME] + [f"raw{i}" for i in range(levels)]
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    with warnings.catch_warnings():
        # The box decoder caches its grids on the module during the trace: harmless here.
        warnings.filterwarnings("ignore", message="The tensor attributes")
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_shapes=shapes,
                # Unoptimised: its initializers keep the state_dict's names (batch norm not
                # folded into the convolutions), so a cached graph can take another cell's
                # weights; ONNX Runtime folds and fuses when it loads the model.
                optimize=False,
                verbose=False,
            )
        except ImportError as exc:
            raise DetbenchError(
                f"ONNX export needs onnx and onnxscript ({exc}): pip install 'detbench[deploy]'"
            ) from None
    assert program is not None
    program.save(str(path))


def _cache_path(folder: Path, metadata: ExportedModel) -> Path:
    batch = "dynamic" if metadata.dynamic_batch else "b1"
    precision = "fp16" if metadata.half else "fp32"
    name = (
        f"{metadata.model}_{len(metadata.class_names)}classes_{metadata.img_size}px_{batch}_"
        f"{precision}_opset{metadata.opset}_torch{torch.__version__}.onnx"
    )
    return folder / name


def _with_metadata(
    path: Path, metadata: ExportedModel, weights: dict[str, torch.Tensor] | None = None
) -> bytes:
    """The ONNX file at ``path`` with ``metadata``; with ``weights``, every initializer named
    after a state_dict entry takes that entry's values."""
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(str(path))
    for initializer in proto.graph.initializer if weights is not None else ():
        tensor = weights.get(initializer.name)
        if tensor is not None:
            array = tensor.detach().cpu().numpy()
            expected = onnx.helper.tensor_dtype_to_np_dtype(initializer.data_type)
            initializer.CopyFrom(numpy_helper.from_array(array.astype(expected), initializer.name))
    for key, value in metadata.properties().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = "detbench"
    return proto.SerializeToString()


def _check(path: Path, example: torch.Tensor, expected: list[np.ndarray], half: bool) -> float:
    """Largest |ONNX Runtime - PyTorch| over the raw heads on ``example``."""
    from detbench.deploy.onnx_backend import OnnxRuntimeModel

    backend = "onnxruntime-cuda" if example.device.type == "cuda" else "onnxruntime"
    session = OnnxRuntimeModel(path, backend)
    _, raw = session.forward(example.float().cpu().numpy())
    differences = [
        float(np.abs(got.astype(np.float32) - want).max())
        for got, want in zip(raw, expected[1:], strict=True)
    ]
    return max(differences)
