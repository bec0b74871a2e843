# Shared helpers of the workflow: the validated config, path patterns, input functions. What
# the workflow decides lives in detbench.workflow.rule_params (which jobs a config change reruns),
# detbench.cluster (Slurm requests, wall time), detbench.data.cache_plan (image caches) and
# detbench.study.grid (the cells); cell folders and file names in detbench.study.cells.

import os
import sys
import time
from functools import cache, partial
from pathlib import Path

from snakemake_interface_executor_plugins.settings import ExecMode

# The workflow imports detbench from src/ even where the package is not installed (a conda
# environment of its own, say); the scripts in workflow/scripts do the same.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from detbench.cluster import ranks, walltime
from detbench.cluster.job_record import RUN_START_ENV
from detbench.data import cache_plan
from detbench.data.prepare import check_source, local_source_files
from detbench.study import cells, grid
from detbench.study.config import validate_config
from detbench.tracking.settings import TrackingSettings, check_installed
from detbench.workflow import rule_params
from detbench.errors import DetbenchError


def _config_source():
    """Where the config came from, for error messages: its files and any --config values."""
    sources = [str(f) for f in workflow.configfiles]
    if workflow.config_settings.config:
        sources.append("--config")
    return ", ".join(sources) or "config"


try:
    validate_config(config, source=_config_source())
    check_source(config["dataset"], _config_source())
    TRACKING = TrackingSettings.from_config(config)
    if TRACKING is not None:
        check_installed(TRACKING, _config_source())
except DetbenchError as error:
    raise WorkflowError(f"detbench error: {error}")


# The run's start, inherited by its jobs: a job without a scheduler records its wait from here.
if workflow.exec_mode == ExecMode.DEFAULT:
    os.environ[RUN_START_ENV] = str(time.time())


PLATFORM = config["platform"]
MODELS = list(config["models"])
DATASET_DIR = f"results/datasets/{config['dataset']['name']}"
CELL = cells.snakemake_cell_pattern()
CHECKPOINTS = f"{CELL}/{cells.CHECKPOINTS}"
PROFILE = cells.snakemake_profile_pattern()
CELL_WILDCARDS = cells.wildcard_constraints(PLATFORM)


wildcard_constraints:
    # Only the active platform's cells are built here; other platforms' cells under results/
    # are read as they are, never retrained.
    platform=CELL_WILDCARDS["platform"],
    model=CELL_WILDCARDS["model"],
    batch=CELL_WILDCARDS["batch"],
    epochs=CELL_WILDCARDS["epochs"],
    repeat_suffix=CELL_WILDCARDS["repeat_suffix"],
    weights_file=r"yolov3\.weights|yolov3-tiny\.weights|darknet53\.conv\.74",


@cache
def summary_cells():
    """Cell folders of the summary: the configured grid on the active platform, then the
    finished cells of other platforms already under results/ (copied in, for instance).
    """
    own = [str(cell.folder()) for cell in grid.study_cells(config)]
    return own + other_platform_cells()


@cache
def other_platform_cells():
    return [
        str(cell.folder())
        for cell in cells.find_cells("results")
        if cell.platform != PLATFORM and cell.file(cells.RUN_RECORD).exists()
    ]


def summary_files(name):
    """File ``name`` (metrics.json, run.json) of every cell in the summary."""
    return [f"{cell}/{name}" for cell in summary_cells()]


def summary_inference(wildcards):
    """inference.json of every cell in the summary: this platform's built here, other
    platforms' where they were measured (a copied-in cell without one has empty columns).
    """
    own = [f"{cell.folder()}/{cells.INFERENCE}" for cell in grid.study_cells(config)]
    copied = [f"{cell}/{cells.INFERENCE}" for cell in other_platform_cells()]
    return own + [path for path in copied if Path(path).exists()]


def summary_profiles(wildcards):
    """Profile summaries joined into the summary rows: this platform's grid (built here) and
    those of other platforms already under results/ (read as they are)."""
    own = [f"{folder}/summary.json" for folder in grid.study_profiles(config)]
    others = cells.find_profile_files(
        "results", "summary.json", except_platform=PLATFORM
    )
    return own + [str(path) for path in others]


def summary_params():
    """Prices per hour by platform and their currency, for the summary's cost column."""
    return {"prices": config["gpu_hour_price"], "currency": config["currency"]}


def dataset_source_files(wildcards):
    """Every file of a local VOC dataset (dataset.source a path): editing one, to fix a broken
    annotation say, reruns the copy and what depends on it. None for a named source."""
    return local_source_files(config["dataset"])


def train_inputs(wildcards):
    """The converted dataset and, when the model starts from Darknet's weights, that file."""
    from detbench.models.darknet_files import starting_weights

    inputs = {"dataset": f"{DATASET_DIR}/yolo"}
    weights = grid.model_weights(config, wildcards.model)
    file = starting_weights(wildcards.model, weights)
    if file is not None:
        inputs["weights"] = f"results/weights/{file.name}"
    return inputs


def image_caches(rule):
    """Input function: the disk image caches `rule`'s jobs read (detbench.data.cache_plan)."""
    inputs = cache_plan.image_cache_inputs
    return lambda wildcards: inputs(config, DATASET_DIR, rule, ancient)


def train_config(wildcards):
    """What a cell's training depends on (detbench.workflow.rule_params): a change retrains it."""
    repeat = cells.repeat_from_suffix(wildcards.repeat_suffix)
    return rule_params.train_params(config, wildcards.model, repeat)


def evaluate_config(wildcards):
    """What a cell's evaluation depends on: changing only this re-evaluates, never retrains."""
    return rule_params.evaluate_params(config)


def deploy_config(wildcards):
    """What a cell's inference benchmark depends on: changing it re-measures, never retrains."""
    return rule_params.deploy_params(config)


def profile_config(wildcards):
    """What a profile job depends on (a change reruns it)."""
    return rule_params.profile_params(config)


def resume_dir(wildcards):
    """Checkpoints live beside, not among, the declared outputs: Snakemake deletes those
    before rerunning a job, and the checkpoints must survive to resume it."""
    return CHECKPOINTS.format(**wildcards)


def train_runtime(wildcards, attempt):
    """Minutes of wall time a scheduler is asked for per train job (detbench.cluster.walltime); a
    retried job (--retries) asks for `attempt` times as much."""
    return walltime.train_minutes(config, DATASET_DIR, wildcards, attempt)


def report_reference():
    """The 2020 study's published figures, shipped in the package (see its README)."""
    return str(Path(workflow.basedir, "src", "detbench", "reference", "study_2020.csv"))


@cache
def report_layout():
    """What the report shows: this platform, the other platforms under results/, and the two
    published 2020 platforms (file names and labels: src/detbench/report/layout.py)."""
    from detbench.report.layout import build_layout

    grid = (PLATFORM, MODELS, config["batch_sizes"], config["epochs"])
    joint = config["dataset"]["source"] == "merge"
    return build_layout(*grid, other_platform_cells(), report_reference(), joint=joint)


def report_files(group):
    """Output files of one report job; those a person reads are flagged for the HTML report."""
    return [_report_file(entry) for entry in getattr(report_layout(), group)()]


def _report_file(entry):
    flagged = entry.category is not None
    return report(entry.path, **entry.report_options()) if flagged else entry.path


def report_targets():
    """Every file of the report (tables, comparison, findings, dataset, plots)."""
    return report_layout().all_paths()


def joint_report_weights(wildcards):
    """weights.pt of every cell in the summary, for the joint report's parameter counts and
    file sizes: this study's (built here) and those other platforms' cells have (read as they
    are; a cell copied in without its weights shows NA)."""
    own = [f"{cell.folder()}/{cells.WEIGHTS}" for cell in grid.study_cells(config)]
    copied = [f"{cell}/{cells.WEIGHTS}" for cell in other_platform_cells()]
    return own + [path for path in copied if Path(path).exists()]


def report_histories(wildcards):
    """history.csv of every cell in the summary, for the loss curves (a copied-in cell
    without one gets an empty panel rather than stopping the report)."""
    own = [f"{cell.folder()}/{cells.HISTORY}" for cell in grid.study_cells(config)]
    copied = [f"{cell}/{cells.HISTORY}" for cell in other_platform_cells()]
    return own + [path for path in copied if Path(path).exists()]


def track_targets():
    """The track jobs' receipts (and TensorBoard events) of the grid's cells; none without the
    config key tracking."""
    if TRACKING is None or not TRACKING.exports_anything:
        return []
    outputs = track_outputs().values()
    return [
        pattern.replace(CELL, str(cell.folder()))
        for cell in grid.study_cells(config)
        for pattern in outputs
    ]


def track_outputs():
    """What a track job writes: its receipt, and the cell's TensorBoard events if asked for."""
    outputs = {"receipt": f"{CELL}/{cells.TRACKING_RECORD}"}
    if TRACKING is not None and TRACKING.tensorboard:
        outputs["events"] = f"{CELL}/{cells.TENSORBOARD_EVENTS}"
    return outputs


def track_inputs(wildcards):
    """The evaluated cell's files a track job exports (its weights only when uploaded)."""
    cell = CELL.format(**wildcards)
    inputs = {
        "run": f"{cell}/{cells.RUN_RECORD}",
        "history": f"{cell}/{cells.HISTORY}",
        "metrics": f"{cell}/{cells.METRICS}",
    }
    if TRACKING.log_weights:
        inputs["weights"] = f"{cell}/{cells.WEIGHTS}"
    return inputs


def track_settings(wildcards):
    """The tracking settings (detbench.tracking.settings): a change re-exports every cell."""
    return TRACKING.to_params()
