"""What one cell exports to a tracking tool, read from its folder.

The params and final metrics are the cell's row of ``results/summary.csv``
(:func:`detbench.summary.aggregate.cell_row`), so MLflow and the summary always agree; the
history is ``history.csv``, one step per epoch. No torch, no mlflow.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError, read_json
from detbench.study import cells
from detbench.study.cells import Cell
from detbench.summary.aggregate import cell_row

# Summary columns logged as MLflow params: what the cell is (strings in MLflow).
PARAM_COLUMNS = (
    "platform",
    "dataset",
    "model",
    "batch",
    "epochs",
    "repeat",
    "seed",
    "img_size",
    "weights",
    "precision",
    "eval_split",
)
# Summary columns logged as tags: where and with what it ran, not figures to plot.
TAG_COLUMNS = (
    "device",
    "device_name",
    "cpu_model",
    "cpu_cores",
    "host",
    "gpu_name",
    "gpu_energy_method",
    "git_commit",
    "config_hash",
    "currency",
)
# Provenance of run.json kept as tags too (the summary has no column for them).
PROVENANCE_TAGS = (
    "torch_version",
    "cuda_runtime_version",
    "python_version",
    "detbench_version",
    "git_dirty",
)
# Summary columns of the {model, batch} profile: that file is no input of the track job.
PROFILE_COLUMNS = frozenset(
    {
        "activity_kind",
        "biggest_activity_name",
        "biggest_activity_avg_us",
        "biggest_gpu_activity_avg_us",
    }
)
# The cell's id in its MLflow run, by which a later export finds the run again.
CELL_TAG = "detbench.cell"
FINGERPRINT_TAG = "detbench.fingerprint"
ARTIFACTS = (cells.RUN_RECORD, cells.METRICS, cells.HISTORY)


@dataclasses.dataclass(frozen=True)
class EpochRow:
    """One row of history.csv: its epoch and the columns it has a value for."""

    epoch: int
    values: dict[str, float]


@dataclasses.dataclass(frozen=True)
class CellExport:
    """One cell as a tracking tool sees it.

    ``metrics``: the final figures, each a number of the summary row (a history column's final
    value is its last step instead). Times in milliseconds since the epoch, as MLflow wants."""

    cell: Cell
    folder: Path
    params: dict[str, str]
    metrics: dict[str, float]
    history: list[EpochRow]
    tags: dict[str, str]
    artifacts: list[Path]
    weights: Path
    start_time_ms: int
    end_time_ms: int

    @property
    def cell_id(self) -> str:
        return self.cell.label()

    def fingerprint(self, *, log_weights: bool) -> str:
        """A hash of everything exported but the times: equal means nothing to re-export."""
        content = {
            "params": self.params,
            "metrics": self.metrics,
            "history": [dataclasses.asdict(row) for row in self.history],
            "tags": self.tags,
            "artifacts": {path.name: _file_sha256(path) for path in self.artifacts},
            "log_weights": log_weights,
        }
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]

    def epoch_times_ms(self) -> list[int]:
        """A wall time per history row: the start plus the epochs' own seconds so far."""
        times, elapsed = [], 0.0
        for row in self.history:
            elapsed += row.values.get("epoch_seconds", 0.0)
            times.append(self.start_time_ms + round(elapsed * 1000))
        return times


def cell_export(
    folder: str | Path, prices: Mapping[str, float] | None = None, currency: str = "USD"
) -> CellExport:
    """What the cell in ``folder`` (trained and evaluated) exports."""
    folder = Path(folder)
    cell = Cell.from_folder(folder)
    if cell is None:
        raise DetbenchError(f"{folder}: not a cell folder (expected b<batch>_e<epochs>)")
    row = cell_row(folder, prices, currency)
    run = read_json(folder / cells.RUN_RECORD, missing="missing (the cell is not trained)")
    history = read_history(folder / cells.HISTORY)
    history_keys = {key for epoch in history for key in epoch.values}
    params = {key: str(row[key]) for key in PARAM_COLUMNS if row.get(key) is not None}
    lr0 = (run.get("hyperparameters") or {}).get("lr0")
    if lr0 is not None:
        params["lr0"] = str(lr0)
    tags = {key: str(row[key]) for key in TAG_COLUMNS if row.get(key) is not None}
    provenance = run.get("provenance") or {}
    tags |= {key: str(provenance[key]) for key in PROVENANCE_TAGS if key in provenance}
    tags[CELL_TAG] = cell.label()
    weights = (folder / cells.WEIGHTS).resolve()
    tags["weights_file"] = str(weights)
    end = (folder / cells.RUN_RECORD).stat().st_mtime
    wall = row.get("wall_time_s") or row.get("train_time_s") or 0.0
    return CellExport(
        cell=cell,
        folder=folder,
        params=params,
        metrics=final_metrics(row, exclude=history_keys),
        history=history,
        tags=tags,
        artifacts=[folder / name for name in ARTIFACTS],
        weights=weights,
        start_time_ms=round((end - wall) * 1000),
        end_time_ms=round(end * 1000),
    )


def final_metrics(row: Mapping[str, Any], exclude: set[str]) -> dict[str, float]:
    """The summary row's numbers that are neither params, tags, profile columns nor a history
    column (whose last step is its final value)."""
    skip = set(PARAM_COLUMNS) | set(TAG_COLUMNS) | PROFILE_COLUMNS | exclude
    return {
        key: float(value)
        for key, value in row.items()
        if key not in skip and _is_number(value)
    }


def read_history(path: Path) -> list[EpochRow]:
    """history.csv as one EpochRow per epoch; empty cells (epochs not evaluated) are left out."""
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DetbenchError(f"{path}: missing (the cell is not trained)") from None
    history = []
    for number, row in enumerate(rows, start=2):
        try:
            epoch = int(row["epoch"])
            values = {key: float(text) for key, text in row.items() if key != "epoch" and text}
        except (KeyError, TypeError, ValueError):
            raise DetbenchError(f"{path}: line {number} is not a history row") from None
        history.append(EpochRow(epoch=epoch, values=values))
    return history


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
