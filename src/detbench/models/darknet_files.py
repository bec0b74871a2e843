"""The official Darknet weights files a model can start from: URLs, sizes, checksums.

Plain data without torch, so that planning a workflow (the Snakefile asks which file a cell
starts from) does not pay torch's import; :mod:`detbench.models.pretrained` downloads and loads
these files.
"""

from __future__ import annotations

import dataclasses

from detbench.errors import DetbenchError

WEIGHTS_KINDS = ("scratch", "backbone", "coco")
COCO_NUM_CLASSES = 80

# pjreddie.com/media/files/X answers 301 to data.pjreddie.com/files/X (the address the official
# YOLO page links today); both are listed so a broken redirect alone does not fail a download.
_PJREDDIE = ("https://pjreddie.com/media/files", "https://data.pjreddie.com/files")
# AlexeyAB's Darknet fork hosts copies of the two COCO files as release assets. Widely used as a
# mirror; the pinned sha256 decides whether its bytes are the official ones.
_ALEXEYAB = "https://github.com/AlexeyAB/darknet/releases/download/darknet_yolo_v3_optimal"


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """One Darknet weights file and how to load it.

    ``name``: file name in the cache directory; ``urls``: tried in order; ``size``: exact bytes;
    ``sha256``: hex digest, None where no credible published value exists (size and header are
    then the only checks); ``cutoff``: Darknet layers to load (None: the whole file must match
    the architecture); ``file_num_classes``: class count the file's detection layers have.
    """

    name: str
    urls: tuple[str, ...]
    size: int
    sha256: str | None
    cutoff: int | None
    file_num_classes: int = COCO_NUM_CLASSES


YOLOV3_COCO = WeightsFile(
    name="yolov3.weights",
    urls=(*(f"{base}/yolov3.weights" for base in _PJREDDIE), f"{_ALEXEYAB}/yolov3.weights"),
    size=248_007_048,
    # Published in several independent download scripts, e.g. PurdueDualityLab/TensorFlowModels
    # yolo/utils/file_manager.py (TF Model Garden YOLO), USC ISI's dsbox "object-detection-yolo"
    # primitive (file_digest) and a README's `sha256sum yolov3.weights` output. Consistent with
    # the md5 c84e5b99d0e52cd466ae710cadf6d84c (NVIDIA TensorRT yolov3_onnx sample) and the sha1
    # 520878f12e97cf820529daea502acca380f1cb8e (opencv_extra dnn download_models.py).
    sha256="523e4e69e1d015393a1b0a441cef1d9c7659e3eb2d7e15f793f060a21b32f297",
    cutoff=None,
)

YOLOV3_TINY_COCO = WeightsFile(
    name="yolov3-tiny.weights",
    urls=(
        *(f"{base}/yolov3-tiny.weights" for base in _PJREDDIE),
        f"{_ALEXEYAB}/yolov3-tiny.weights",
    ),
    size=35_434_956,
    # Published in PurdueDualityLab/TensorFlowModels yolo/utils/file_manager.py, the OpenVINO Open
    # Model Zoo yolo-v3-tiny-tf model.yml (with size 35434956), an AUR PKGBUILD (sha256sums) and a
    # Rust darknet example (WEIGHTS_SHA256_HASH). md5 3bcd6b390912c18924b46b26a9e7ff53 elsewhere.
    sha256="dccea06f59b781ec1234ddf8d1e94b9519a97f4245748a7d4db75d5b7080a42c",
    cutoff=None,
)

DARKNET53_BACKBONE = WeightsFile(
    name="darknet53.conv.74",
    urls=tuple(f"{base}/darknet53.conv.74" for base in _PJREDDIE),
    # No published checksum was found. 162,482,580 bytes is what wget reports for the official
    # download ("Length: 162482580") and equals expected_weights_bytes("yolov3", 80, cutoff=75).
    size=162_482_580,
    sha256=None,
    cutoff=75,
)

# 15 = what `darknet partial ... yolov3-tiny.conv.15 15` keeps (layers 0-14).
YOLOV3_TINY_BACKBONE = dataclasses.replace(YOLOV3_TINY_COCO, cutoff=15)

STARTING_WEIGHTS: dict[tuple[str, str], WeightsFile] = {
    ("yolov3", "coco"): YOLOV3_COCO,
    ("yolov3", "backbone"): DARKNET53_BACKBONE,
    ("yolov3-tiny", "coco"): YOLOV3_TINY_COCO,
    ("yolov3-tiny", "backbone"): YOLOV3_TINY_BACKBONE,
}


def starting_weights(model_name: str, kind: str) -> WeightsFile | None:
    """The Darknet file a model starts from; None for ``scratch``."""
    if model_name not in {model for model, _ in STARTING_WEIGHTS}:
        raise DetbenchError(f"models.{model_name}: unknown model")
    if kind not in WEIGHTS_KINDS:
        raise DetbenchError(
            f"models.{model_name}.weights: unknown starting weights {kind!r}, "
            f"expected one of {', '.join(WEIGHTS_KINDS)}"
        )
    if kind == "scratch":
        return None
    return STARTING_WEIGHTS[(model_name, kind)]


def weights_file_named(name: str) -> WeightsFile:
    """The registry entry for a file name (the download is the same whatever the cutoff)."""
    for file in STARTING_WEIGHTS.values():
        if file.name == name:
            return file
    known = sorted({f.name for f in STARTING_WEIGHTS.values()})
    raise DetbenchError(f"{name}: not an official Darknet weights file ({', '.join(known)})")
