"""Every trained cell as a model a request can pick, loaded on first use into a bounded cache.

A cell is offered when its folder holds ``weights.pt`` and ``metrics.json`` (an evaluated cell:
a cell whose train or evaluate job was cut short has neither, so it never looks finished). Its
id is ``platform/model/b<batch>_e<epochs>[_r<repeat>]``, the label the summary and the report
use. The folders are listed on every call, so a cell that finishes while the server runs (a
training started from the page, or a study running beside it) is offered at once.

Loaded models are kept in a least-recently-used cache of at most ``capacity`` models. Memory
bound: ``capacity`` models, plus at most one more per request being answered (a request keeps
the model it started with even when another request evicts it). A YOLOv3 model is ~250 MB of
float32 parameters, a YOLOv3-tiny one ~35 MB.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detbench.errors import DetbenchError
from detbench.study.cells import METRICS, RUN_RECORD, WEIGHTS, Cell, find_cells
from detbench.study.config import TrainHyperparameters
from detbench.web.registry import ModelUnavailable, ServedModel
from detbench.web.settings import DEFAULT_MODEL_CACHE

# torch is imported where a cell's model is loaded, so that the ONNX Runtime backend can list
# cells without it.
if TYPE_CHECKING:
    import torch

log = logging.getLogger("detbench.web")


@dataclasses.dataclass(frozen=True)
class CellModel:
    """One evaluated cell whose weights can be served."""

    id: str
    cell: Cell
    weights: Path
    dataset: str
    eval_split: str
    map50: float | None
    train_seconds: float | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "platform": self.cell.platform,
            "model": self.cell.model,
            "batch": self.cell.batch,
            "epochs": self.cell.epochs,
            "repeat": self.cell.repeat,
            "dataset": self.dataset,
            "eval_split": self.eval_split,
            "map50": self.map50,
            "train_seconds": self.train_seconds,
        }


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def cell_model(results_dir: Path, cell: Cell) -> CellModel | None:
    """The cell in ``results_dir`` as a servable model, or None when it is not finished."""
    weights = cell.file(WEIGHTS, results_dir)
    if not weights.is_file():
        return None
    metrics = _read_json(cell.file(METRICS, results_dir))
    if not metrics:
        return None
    record = _read_json(cell.file(RUN_RECORD, results_dir))
    return CellModel(
        id=cell.label(),
        cell=cell,
        weights=weights,
        dataset=str(metrics.get("dataset", record.get("dataset", "?"))),
        eval_split=str(metrics.get("split", "?")),
        map50=_finite(metrics.get("metrics", {}).get("map50")),
        train_seconds=_finite(record.get("train_seconds")),
    )


def find_cell_models(results_dirs: Iterable[Path]) -> list[CellModel]:
    """Every finished cell under the results folders, the first folder's first when two hold a
    cell of the same id."""
    found: dict[str, CellModel] = {}
    for results_dir in results_dirs:
        for cell in find_cells(results_dir, having=METRICS):
            model = cell_model(Path(results_dir), cell)
            if model is not None and model.id not in found:
                found[model.id] = model
    return list(found.values())


def load_cell_model(entry: CellModel, device: torch.device) -> ServedModel:
    """A cell's weights.pt as a served model (any classes: a cell trained on an uploaded
    dataset detects its own)."""
    from detbench.evaluation.inference import load_trained_model

    model, metadata = load_trained_model(entry.weights, device)
    img_size = int(metadata["img_size"])
    served = ServedModel(
        entry.id,
        model,
        architecture=str(metadata["model"]),
        class_names=tuple(str(n) for n in metadata["class_names"]),
        img_size=img_size,
        device=device,
        source=entry.weights,
        description=(
            f"cell {entry.id}: {metadata['model']} trained on {entry.dataset}, input {img_size} px"
        ),
        channels_last=TrainHyperparameters().channels_last,
    )
    served.warm_up()
    return served


class ModelPicker:
    """The cells under ``results_dirs()`` and a least-recently-used cache of loaded ones."""

    def __init__(
        self,
        results_dirs: Callable[[], list[Path]],
        device: torch.device,
        capacity: int = DEFAULT_MODEL_CACHE,
    ) -> None:
        if capacity < 1:
            raise ValueError(f"model cache capacity must be >= 1, not {capacity}")
        self.results_dirs = results_dirs
        self.device = device
        self.capacity = capacity
        self._cache: collections.OrderedDict[tuple[str, int], ServedModel] = (
            collections.OrderedDict()
        )
        self._lock = threading.Lock()
        self._loading = threading.Lock()  # one load at a time: the bound holds while loading

    def models(self) -> list[CellModel]:
        return find_cell_models(self.results_dirs())

    def find(self, cell_id: str) -> CellModel | None:
        """The finished cell ``cell_id`` (looked up by its folder, not by listing them all)."""
        cell = Cell.from_folder(cell_id)
        if cell is None or cell.label() != cell_id:
            return None
        for results_dir in self.results_dirs():
            model = cell_model(Path(results_dir), cell)
            if model is not None:
                return model
        return None

    def loaded(self) -> list[str]:
        with self._lock:
            return [cell_id for cell_id, _ in self._cache]

    def get(self, cell_id: str) -> ServedModel:
        entry = self.find(cell_id)
        if entry is None:
            raise ModelUnavailable(
                f"unknown model {cell_id!r}: expected bccd, coco or a cell id from GET /api/models"
            )
        # A retrained cell (same id, new weights) is a new key; the old one ages out.
        key = (entry.id, entry.weights.stat().st_mtime_ns)
        with self._lock:
            served = self._cache.get(key)
            if served is not None:
                self._cache.move_to_end(key)
                return served
        with self._loading:
            with self._lock:
                served = self._cache.get(key)
                if served is not None:
                    self._cache.move_to_end(key)
                    return served
                # Evict before loading, so the cache never holds more than its capacity.
                while len(self._cache) >= self.capacity:
                    evicted, _ = self._cache.popitem(last=False)
                    log.info("model cache: unloaded %s (holds %d)", evicted[0], self.capacity)
            try:
                served = load_cell_model(entry, self.device)
            except DetbenchError as error:
                raise ModelUnavailable(f"model {cell_id!r}: {error}") from None
            with self._lock:
                self._cache[key] = served
            log.info("model cache: loaded %s on %s", entry.id, self.device)
            return served
