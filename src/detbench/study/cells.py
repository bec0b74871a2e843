"""One cell of the study, and the one place its folder and files are named.

A cell is one training run of the grid: a platform label, a model, a batch size, a number of
epochs and, when the study repeats its cells, a repeat index. Its folder is

    results/{platform}/{model}/b{batch}_e{epochs}/            repeat 0
    results/{platform}/{model}/b{batch}_e{epochs}_r{repeat}/  repeat 1, 2, ...

so repeat 0 is the folder a study without repeats has always had. The profile of a {model,
batch} (the epochs and repeats do not change its kernels) lives beside the cells, in
``results/{platform}/{model}/profile_b{batch}/``.

``rules/common.smk`` builds its Snakemake patterns and wildcard constraints from here; the
aggregate, the report, the provenance record and the web app parse and build folders here.
Standard library only: the workflow imports it at parse time.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

# File names in a cell folder (rules/train.smk and rules/evaluate.smk declare them).
WEIGHTS = "weights.pt"
HISTORY = "history.csv"
RUN_RECORD = "run.json"
GPU_SAMPLES = "gpu_samples.csv"
METRICS = "metrics.json"
DETECTIONS = "detections.json"
ONNX_MODEL = "model.onnx"  # rules/deploy.smk: the cell exported, and its inference benchmark
INFERENCE = "inference.json"
# The train job's evaluation of its final weights, which the evaluate job reuses when it was
# made under the evaluate job's settings (detbench.evaluation.final_evaluation); no declared output.
FINAL_EVALUATION = "final_evaluation.json"
CHECKPOINTS = "checkpoints"  # resume state, outside the declared outputs
# What the track job wrote (config key tracking): the MLflow run's id and where it lives; and the
# cell's TensorBoard events, one file whose name TensorBoard recognises ("tfevents").
TRACKING_RECORD = "tracking.json"
TENSORBOARD_EVENTS = "events.out.tfevents.detbench"

# Top-level folders of results/ that hold no platform's cells.
NOT_PLATFORMS = frozenset({"datasets", "logs", "reference", "report", "weights"})

# Wildcard constraints, one per field; the folder formats below use the same names.
PLATFORM_LABEL = r"[A-Za-z0-9._-]+"
MODEL = r"yolov3|yolov3-tiny"
COUNT = r"[1-9]\d*"
REPEAT_SUFFIX = r"(?:_r[1-9]\d*)?"  # "" for repeat 0, "_r<k>" for repeat k

CELL_FOLDER = "b{batch}_e{epochs}{repeat_suffix}"
PROFILE_FOLDER = "profile_b{batch}"

_CELL_NAME = re.compile(r"b(?P<batch>[1-9]\d*)_e(?P<epochs>[1-9]\d*)(?:_r(?P<repeat>[1-9]\d*))?")
_PROFILE_NAME = re.compile(r"profile_b(?P<batch>[1-9]\d*)")


def repeat_suffix(repeat: int) -> str:
    """The folder-name suffix of repeat ``repeat``: none for repeat 0."""
    if repeat < 0:
        raise ValueError(f"repeat must be >= 0, not {repeat}")
    return f"_r{repeat}" if repeat else ""


def repeat_from_suffix(suffix: str) -> int:
    """The repeat index of a folder-name suffix ("" or "_r<k>")."""
    return int(suffix[2:]) if suffix else 0


def is_platform_label(name: str) -> bool:
    return name not in NOT_PLATFORMS and not name.startswith(".")


@dataclasses.dataclass(frozen=True, order=True)
class Cell:
    """One run of the grid. Ordered platform, model, batch, epochs, repeat (numerically)."""

    platform: str
    model: str
    batch: int
    epochs: int
    repeat: int = 0

    @property
    def name(self) -> str:
        """The cell folder's own name, e.g. ``b8_e20`` or ``b8_e20_r2``."""
        return CELL_FOLDER.format(
            batch=self.batch, epochs=self.epochs, repeat_suffix=repeat_suffix(self.repeat)
        )

    def folder(self, results_dir: str | Path = "results") -> Path:
        return Path(results_dir) / self.platform / self.model / self.name

    def profile_folder(self, results_dir: str | Path = "results") -> Path:
        """The profile of this cell's {model, batch} (shared by its epochs and repeats)."""
        return Path(results_dir) / self.platform / self.model / PROFILE_FOLDER.format(
            batch=self.batch
        )

    def file(self, name: str, results_dir: str | Path = "results") -> Path:
        return self.folder(results_dir) / name

    def label(self) -> str:
        """``platform/model/b<batch>_e<epochs>[_r<repeat>]``, for messages."""
        return f"{self.platform}/{self.model}/{self.name}"

    @classmethod
    def from_folder(cls, folder: str | Path) -> Cell | None:
        """The cell a folder ``.../{platform}/{model}/b<batch>_e<epochs>[_r<k>]`` holds, or None
        when the path has not that shape."""
        path = Path(folder)
        match = _CELL_NAME.fullmatch(path.name)
        if match is None or len(path.parts) < 3 or not is_platform_label(path.parent.parent.name):
            return None
        return cls(
            platform=path.parent.parent.name,
            model=path.parent.name,
            batch=int(match["batch"]),
            epochs=int(match["epochs"]),
            repeat=int(match["repeat"] or 0),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> Cell | None:
        """The cell a file in a cell folder belongs to (``.../b8_e20/run.json``), or None."""
        return cls.from_folder(Path(path).parent)


def cell_of(path: str | Path) -> dict[str, str | int]:
    """The cell a file belongs to as a JSON object (numbers as numbers), for metrics.json."""
    cell = Cell.from_file(path)
    if cell is None:
        raise ValueError(f"{path}: not in a cell folder")
    return dataclasses.asdict(cell)


def profile_batch(folder: str | Path) -> int | None:
    """The batch size of a profile folder ``profile_b<batch>``, or None."""
    match = _PROFILE_NAME.fullmatch(Path(folder).name)
    return int(match["batch"]) if match else None


def find_cells(results_dir: str | Path, *, having: str = METRICS) -> list[Cell]:
    """Every cell under ``results_dir`` whose folder holds ``having`` (default: an evaluated
    cell), in Cell order."""
    root = Path(results_dir)
    cells = {
        cell
        for path in root.glob(f"*/*/b*_e*/{having}")
        if (cell := Cell.from_file(path)) is not None
    }
    return sorted(cells)


def find_profile_files(
    results_dir: str | Path, name: str, *, except_platform: str | None = None
) -> list[Path]:
    """``name`` in every profile folder under ``results_dir`` (all platforms but
    ``except_platform``), sorted."""
    found = []
    for path in sorted(Path(results_dir).glob(f"*/*/profile_b*/{name}")):
        platform = path.parent.parent.parent.name
        wanted = is_platform_label(platform) and platform != except_platform
        if wanted and profile_batch(path.parent) is not None:
            found.append(path)
    return found


def snakemake_cell_pattern(results_dir: str = "results") -> str:
    """A cell folder as a Snakemake pattern with wildcards platform, model, batch, epochs and
    repeat_suffix (see ``wildcard_constraints()``)."""
    return f"{results_dir}/{{platform}}/{{model}}/{CELL_FOLDER}"


def snakemake_profile_pattern(results_dir: str = "results") -> str:
    return f"{results_dir}/{{platform}}/{{model}}/{PROFILE_FOLDER}"


def wildcard_constraints(platform: str) -> dict[str, str]:
    """The workflow's wildcard constraints: only ``platform``'s cells are built (other
    platforms' cells under results/ are read as they are, never retrained)."""
    return {
        "platform": re.escape(platform),
        "model": MODEL,
        "batch": COUNT,
        "epochs": COUNT,
        "repeat_suffix": REPEAT_SUFFIX,
    }
