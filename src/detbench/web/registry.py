"""The models the web app serves: loaded once at start, shared by every request.

Two slots, named as in the API's ``model`` field:

* ``bccd``: a trained cell's ``weights.pt`` (blood cells: RBC, WBC, Platelets), given directly
  or picked as the best cell by mAP@0.5 from ``results/summary.csv``;
* ``coco``: the official Darknet ``yolov3.weights`` or ``yolov3-tiny.weights`` (80 COCO
  classes); which architecture is read from the file size.

A slot whose file does not exist is left empty and the page says why; a file that exists but
cannot be loaded is an error at start-up (better than a server that fails on every request).

Preprocessing and post-processing are those of the evaluation
(:meth:`detbench.data.dataset.DetectionDataset.sample` and
:func:`detbench.evaluation.evaluate.predict_split`): resize the long side to the model's input size,
letterbox onto a grey square, RGB in [0, 1], the shared :func:`non_max_suppression` with the
evaluation's NMS IoU, and boxes mapped back to original pixels and clipped to the image. So a
detection the app shows at confidence c is one the evaluation scored at c.

The COCO slot instead prepares its input as Darknet does (``letterbox_image``: Darknet's bilinear
resize, padding 0.5 grey, boxes mapped back by ``correct_yolo_boxes``) and uses Darknet's NMS
IoU 0.45, so the official weights see what they were trained and published with.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from detbench.data.augment import Letterbox, letterbox, resize_long_side
from detbench.data.coco import COCO_CLASSES
from detbench.errors import DetbenchError
from detbench.evaluation.detections import Detections, to_original_pixels
from detbench.study.cells import METRICS, WEIGHTS, Cell
from detbench.study.config import TrainHyperparameters
from detbench.web.settings import COCO_IMG_SIZE, InferenceSettings

# torch and the models are imported where a model is loaded or run, so that the ONNX Runtime
# backend (detbench.web.onnx_serving) shares this module's registry without loading torch.
if TYPE_CHECKING:
    import torch

    from detbench.models.pretrained import DarknetPlacement

log = logging.getLogger("detbench.web")

MODEL_KEYS = ("bccd", "coco")
MODEL_TITLES = {
    "bccd": "Blood cells (BCCD model: RBC, WBC, Platelets)",
    "coco": "Common objects (COCO model, 80 classes)",
}
# The blood-cell model must detect exactly these (in any order): the page counts them.
BLOOD_CELL_CLASSES = ("RBC", "WBC", "Platelets")


@dataclasses.dataclass
class Prediction:
    """Detections on one image, in its original pixels (x0, y0, x1, y1)."""

    width: int
    height: int
    detections: Detections
    class_names: tuple[str, ...]
    inference_ms: float  # model forward + NMS, excluding waiting for the model's lock

    def labels(self) -> list[str]:
        return [self.class_names[int(c)] for c in self.detections.classes]

    def in_size(self, width: int, height: int) -> Prediction:
        """The same detections in an image of ``width`` x ``height`` (the upload's own size,
        when the model saw it decoded reduced)."""
        sx, sy = width / self.width, height / self.height
        boxes = self.detections.boxes * np.array([sx, sy, sx, sy])
        found = Detections(boxes, self.detections.scores, self.detections.classes)
        return dataclasses.replace(self, width=width, height=height, detections=found)

    def counts(self) -> dict[str, int]:
        """Detections per class, in the model's class order, classes with none left out."""
        found = Counter(self.labels())
        return {name: found[name] for name in self.class_names if found[name]}

    def detection_list(self) -> list[dict[str, Any]]:
        return [
            {
                "class": label,
                "score": round(float(score), 4),
                "box": [round(float(v), 1) for v in box],
            }
            for label, score, box in zip(
                self.labels(), self.detections.scores, self.detections.boxes, strict=True
            )
        ]


class ServedModel:
    """One loaded model in eval mode plus what the page and /healthz say about it.

    ``predict`` may be called from many request threads: the forward pass and NMS run under a
    per-model lock. Concurrent forwards on one module would be correct under inference mode, but
    on a CPU each already uses every core (running several at once only adds contention), and on
    a GPU serialising keeps peak memory at one image's worth.
    """

    def __init__(
        self,
        key: str,
        model: torch.nn.Module,
        *,
        architecture: str,
        class_names: tuple[str, ...],
        img_size: int,
        device: torch.device,
        source: Path,
        description: str,
        darknet_input: bool = False,
        nms_iou: float | None = None,
        channels_last: bool = False,
    ) -> None:
        self.key = key
        self.model = model.to(device).eval()
        self.architecture = architecture
        self.class_names = class_names
        self.img_size = img_size
        self.device = device
        self.source = source
        self.description = description
        self.darknet_input = darknet_input
        self.nms_iou = nms_iou  # None: the request settings' (the evaluation's)
        self.channels_last = channels_last
        import torch

        from detbench.training.device import select_precision

        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.precision = select_precision(device, amp=True)
        self._lock = threading.Lock()

    def info(self) -> dict[str, Any]:
        return {
            "loaded": True,
            "title": MODEL_TITLES.get(self.key, self.key),
            "architecture": self.architecture,
            "classes": list(self.class_names),
            "img_size": self.img_size,
            "source": str(self.source),
            "description": self.description,
            "precision": self.precision.name,
        }

    def preprocess(self, image: np.ndarray) -> tuple[torch.Tensor, Letterbox | DarknetPlacement]:
        """BGR uint8 image -> (1, 3, S, S) RGB tensor and the mapping back to the image: uint8
        exactly as DetectionDataset.sample prepares an evaluation image, or float in [0, 1] as
        Darknet's letterbox_image makes it (``darknet_input``)."""
        import torch

        from detbench.models.pretrained import darknet_letterbox

        if self.darknet_input:
            rgb = np.ascontiguousarray(image[:, :, ::-1])
            boxed, darknet_placement = darknet_letterbox(rgb, self.img_size)
            return torch.from_numpy(boxed).unsqueeze(0), darknet_placement
        resized, ratio = resize_long_side(image, self.img_size)
        canvas, _, placement = letterbox(resized, np.zeros((0, 4)), self.img_size)
        transform = Letterbox(ratio, placement.pad_x, placement.pad_y)
        chw = np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1))
        return torch.from_numpy(chw).unsqueeze(0), transform

    def nms_iou_for(self, settings: InferenceSettings) -> float:
        """The NMS IoU this model's detections use: its own (Darknet's, for the COCO weights)
        or the app's, which is the evaluation's."""
        return self.nms_iou if self.nms_iou is not None else settings.nms_iou

    def predict(
        self, image: np.ndarray, confidence: float, settings: InferenceSettings
    ) -> Prediction:
        import torch

        from detbench.evaluation.inference import model_input, non_max_suppression

        height, width = image.shape[:2]
        batch, transform = self.preprocess(image)
        dtype = self.precision.dtype
        with self._lock, torch.inference_mode():
            start = time.perf_counter()
            inputs = model_input(batch, self.device, channels_last=self.channels_last)
            with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
                decoded, _ = self.model(inputs)
            found = non_max_suppression(
                decoded,
                conf_threshold=confidence,
                iou_threshold=self.nms_iou_for(settings),
                max_detections=settings.max_detections,
            )[0]  # its .cpu() waits for the GPU, so the time below is complete
            elapsed_ms = (time.perf_counter() - start) * 1000
        return Prediction(
            width=width,
            height=height,
            detections=to_original_pixels(found, transform, width, height, drop_empty=True),
            class_names=self.class_names,
            inference_ms=elapsed_ms,
        )

    def warm_up(self) -> None:
        """One forward at start-up: the first request is not slowed by lazy initialisation,
        and a model that cannot run on this device fails now rather than per request."""
        grey = np.full((self.img_size, self.img_size, 3), 114, dtype=np.uint8)
        self.predict(grey, 0.5, InferenceSettings())


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_bccd_model(
    path: str | Path, device: torch.device, origin: str | None = None, *, joint: bool = False
) -> ServedModel:
    """A trained cell's ``weights.pt`` as the blood-cell model; ``joint``: a model that knows
    the blood-cell classes among others (detbench.web.joint)."""
    from detbench.evaluation.inference import load_trained_model

    path = Path(path)
    model, metadata = load_trained_model(path, device)
    names = tuple(str(n) for n in metadata["class_names"])
    if joint and not set(BLOOD_CELL_CLASSES) <= set(names):
        raise DetbenchError(
            f"{path}: a joint model must know the blood-cell classes "
            f"{', '.join(BLOOD_CELL_CLASSES)}; it was trained for {len(names)} others"
        )
    if not joint and sorted(names) != sorted(BLOOD_CELL_CLASSES):
        raise DetbenchError(
            f"{path}: trained for classes {list(names)}, not the blood-cell classes "
            f"{', '.join(BLOOD_CELL_CLASSES)}"
        )
    img_size = int(metadata["img_size"])
    # "batch_size" in weights files written before the key was renamed.
    batch = metadata.get("batch", metadata.get("batch_size", "?"))
    trained = (
        f"{metadata['model']} trained on {metadata.get('dataset', '?')} "
        f"({metadata.get('epochs', '?')} epochs, batch {batch}), "
        f"input {img_size} px"
    )
    served = ServedModel(
        "joint" if joint else "bccd",
        model,
        architecture=str(metadata["model"]),
        class_names=names,
        img_size=img_size,
        device=device,
        source=path,
        description=f"{trained}; {origin}" if origin else trained,
        # In the memory layout the evaluation runs it in, so the app's detections are the
        # evaluation's to the last bit (the order of equal scores included).
        channels_last=TrainHyperparameters().channels_last,
    )
    served.warm_up()
    return served


def coco_architecture_for_size(size: int) -> str | None:
    """'yolov3' or 'yolov3-tiny' for the size of an 80-class Darknet weights file, else None.

    Darknet files from before v0.2 store ``seen`` in 4 bytes instead of 8; both are accepted.
    """
    from detbench.models import MODEL_NAMES, expected_weights_bytes
    from detbench.models.weights import HEADER_BYTES_INT32_SEEN, HEADER_BYTES_INT64_SEEN

    for name in MODEL_NAMES:
        floats = expected_weights_bytes(name, 80) - HEADER_BYTES_INT64_SEEN
        if size in (floats + HEADER_BYTES_INT64_SEEN, floats + HEADER_BYTES_INT32_SEEN):
            return name
    return None


def load_coco_model(
    path: str | Path, device: torch.device, img_size: int = COCO_IMG_SIZE
) -> ServedModel:
    """The official Darknet COCO weights (architecture from the file size)."""
    from detbench.models import (
        MODEL_NAMES,
        build_model,
        expected_weights_bytes,
        load_darknet_weights,
    )
    from detbench.models.pretrained import DARKNET_NMS_IOU

    path = Path(path)
    size = path.stat().st_size
    architecture = coco_architecture_for_size(size)
    if architecture is None:
        expected = ", ".join(f"{n} {expected_weights_bytes(n, 80):,}" for n in MODEL_NAMES)
        raise DetbenchError(
            f"{path}: {size:,} bytes is not the size of an 80-class COCO Darknet weights file "
            f"({expected} bytes)"
        )
    model = build_model(architecture, num_classes=len(COCO_CLASSES))
    report = load_darknet_weights(model, path)
    log.info("%s", report.summary())
    served = ServedModel(
        "coco",
        model,
        architecture=architecture,
        class_names=COCO_CLASSES,
        img_size=img_size,
        device=device,
        source=path,
        description=f"{architecture} Darknet COCO weights, input {img_size} px, Darknet's "
        "letterbox and NMS IoU 0.45",
        darknet_input=True,
        nms_iou=DARKNET_NMS_IOU,
    )
    served.warm_up()
    return served


@dataclasses.dataclass
class ModelSlot:
    key: str
    served: ServedModel | None
    absent_reason: str = ""

    def info(self) -> dict[str, Any]:
        if self.served is not None:
            return self.served.info()
        return {"loaded": False, "title": MODEL_TITLES[self.key], "reason": self.absent_reason}


class ModelUnavailable(LookupError):
    """The requested model key is unknown or its slot is empty; the message says which."""


class ModelRegistry:
    def __init__(self, device: torch.device, slots: dict[str, ModelSlot]) -> None:
        self.device = device
        self.slots = {
            key: slots.get(key, ModelSlot(key, None, "not configured")) for key in MODEL_KEYS
        }

    @classmethod
    def from_files(
        cls,
        device: torch.device,
        *,
        bccd_model: Path | None = None,
        bccd_origin: str | None = None,
        coco_weights: Path | None = None,
        coco_img_size: int = COCO_IMG_SIZE,
    ) -> ModelRegistry:
        slots = {
            "bccd": _load_slot(
                "bccd",
                bccd_model,
                "--bccd-model",
                lambda p: load_bccd_model(p, device, bccd_origin),
            ),
            "coco": _load_slot(
                "coco",
                coco_weights,
                "--coco-weights",
                lambda p: load_coco_model(p, device, coco_img_size),
            ),
        }
        registry = cls(device, slots)
        if not registry.available():
            reasons = "; ".join(f"{s.key}: {s.absent_reason}" for s in registry.slots.values())
            raise DetbenchError(f"detbench serve: no model to serve ({reasons})")
        return registry

    def available(self) -> list[str]:
        return [key for key, slot in self.slots.items() if slot.served is not None]

    def get(self, key: str) -> ServedModel:
        slot = self.slots.get(key)
        if slot is None:
            raise ModelUnavailable(
                f"unknown model {key!r}: expected one of {', '.join(MODEL_KEYS)}"
            )
        if slot.served is None:
            raise ModelUnavailable(f"the {key} model is not available here ({slot.absent_reason})")
        return slot.served


def _load_slot(key: str, path: Path | None, option: str, load: Any) -> ModelSlot:
    if path is None:
        return ModelSlot(key, None, f"not configured (start with {option} PATH)")
    if not Path(path).is_file():
        log.warning("%s: %s not found; the %s model is not offered", option, path, key)
        return ModelSlot(key, None, f"{path} not found")
    served = load(Path(path))
    log.info("%s model: %s (%s) on %s", key, served.source, served.description, served.device)
    return ModelSlot(key, served)


# --------------------------------------------------------------------------------------------
# Picking the best BCCD cell from a results folder
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BestCell:
    weights: Path
    platform: str
    model: str
    batch: int
    epochs: int
    dataset: str
    eval_split: str
    map50: float

    def describe(self) -> str:
        cell = Cell(self.platform, self.model, self.batch, self.epochs)
        return (
            f"best cell {cell.label()} by mAP@0.5 "
            f"({self.map50:.4f} on the {self.dataset} {self.eval_split} split)"
        )


def best_bccd_cell(results_dir: str | Path) -> BestCell:
    """The blood-cell cell with the highest mAP@0.5 in ``results_dir/summary.csv`` (any
    platform) whose ``weights.pt`` is present. Cells trained on the real BCCD dataset (dataset
    name ``bccd``) come first; other blood-cell datasets (the synthetic smears) only when there is
    no BCCD cell; COCO-trained cells never.
    """
    results = Path(results_dir)
    summary = results / "summary.csv"
    try:
        with summary.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DetbenchError(
            f"{summary}: does not exist (build it with `snakemake results/summary.csv`)"
        ) from None
    cells = [cell for row in rows if (cell := _row_to_cell(results, row)) is not None]
    if not cells:
        raise DetbenchError(
            f"{summary}: no evaluated blood-cell cell with a weights.pt under {results}"
        )
    best = min(
        cells,
        key=lambda c: (c.dataset != "bccd", -c.map50, c.platform, c.model, c.batch, c.epochs),
    )
    if best.dataset != "bccd":
        log.warning("%s: no cell trained on BCCD; serving the %s", summary, best.describe())
    return best


def _row_to_cell(results: Path, row: dict[str, str]) -> BestCell | None:
    try:
        map50 = float(row["map50"])
        batch, epochs = int(row["batch"]), int(row["epochs"])
        platform, model, dataset = row["platform"], row["model"], row["dataset"]
    except (KeyError, TypeError, ValueError):
        return None
    if not math.isfinite(map50) or dataset.startswith("coco") or "/" in platform + model:
        return None
    weights = Cell(platform, model, batch, epochs).file(WEIGHTS, results)
    if not weights.is_file() or _is_joint_cell(weights.with_name(METRICS)):
        return None
    return BestCell(
        weights=weights,
        platform=platform,
        model=model,
        batch=batch,
        epochs=epochs,
        dataset=dataset,
        eval_split=row.get("eval_split", "?"),
        map50=map50,
    )


def _is_joint_cell(metrics: Path) -> bool:
    """A cell trained on a merged dataset (its metrics have parts): served with --joint-model,
    not as the blood-cell model."""
    try:
        return "parts" in json.loads(metrics.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
