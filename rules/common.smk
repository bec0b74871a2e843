# Shared helpers of the workflow (the validated config, path builders, the cell grid).

import re
import sys
from pathlib import Path

# The workflow imports detbench from src/ even where the package is not installed (a conda
# environment of its own, say); the scripts in workflow/scripts do the same.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from detbench.config import validate_config
from detbench.data.prepare import check_source
from detbench.errors import DetbenchError


def _config_source():
    return ", ".join(str(f) for f in workflow.configfiles) or "config"


try:
    validate_config(config, source=_config_source())
    check_source(config["dataset"], _config_source())
except DetbenchError as error:
    raise WorkflowError(f"detbench error: {error}")


PLATFORM = config["platform"]
DATASET = config["dataset"]["name"]
MODELS = list(config["models"])
DATASET_DIR = f"results/datasets/{DATASET}"
CELL = "results/{platform}/{model}/b{batch}_e{epochs}"
CHECKPOINTS = f"{CELL}/checkpoints"


wildcard_constraints:
    # Only the active platform's cells are built here; other platforms' cells under results/
    # are read as they are, never retrained.
    platform=re.escape(PLATFORM),
    dataset=re.escape(DATASET),
    model="yolov3|yolov3-tiny",
    batch=r"[1-9]\d*",
    epochs=r"[1-9]\d*",


def study_cells():
    """Cell folders of the configured grid on the active platform."""
    return expand(
        CELL,
        platform=PLATFORM,
        model=MODELS,
        batch=config["batch_sizes"],
        epochs=config["epochs"],
    )


def other_platform_cells():
    """Finished cells of other platforms already under results/ (copied in, for instance)."""
    cells = []
    for metrics in sorted(Path("results").glob("*/*/b*_e*/metrics.json")):
        cell = metrics.parent
        platform = cell.parent.parent.name
        if platform != PLATFORM and platform not in ("datasets", "logs", "reference"):
            if re.fullmatch(r"b\d+_e\d+", cell.name) and (cell / "run.json").exists():
                cells.append(str(cell))
    return cells


def summary_metrics(wildcards):
    return [f"{cell}/metrics.json" for cell in study_cells() + other_platform_cells()]


def summary_runs(wildcards):
    return [f"{cell}/run.json" for cell in study_cells() + other_platform_cells()]


def model_weights(wildcards):
    """Starting weights (scratch, backbone or coco) configured for the cell's model."""
    settings = config["models"].get(wildcards.model) or {}
    return settings.get("weights", "scratch")


def cell_config(wildcards):
    """The config sections a cell's train and evaluate jobs depend on (a change reruns them)."""
    return {
        "seed": config["seed"],
        "img_size": config["img_size"],
        "dataset": config["dataset"],
        "weights": model_weights(wildcards),
        "train": config["train"],
        "evaluate": config["evaluate"],
    }


def resume_dir(wildcards):
    """Checkpoints live beside, not among, the declared outputs: Snakemake deletes those
    before rerunning a job, and the checkpoints must survive to resume it."""
    return CHECKPOINTS.format(**wildcards)
