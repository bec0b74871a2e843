# Shared helpers of the workflow (the validated config, path builders, the cell grid).

import math
import re
import sys
from functools import cache
from pathlib import Path

# The workflow imports detbench from src/ even where the package is not installed (a conda
# environment of its own, say); the scripts in workflow/scripts do the same.
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from detbench.aggregate import find_cells
from detbench.config import (
    validate_config,
    without_runtime_keys,
    without_unprofiled_keys,
)
from detbench.data.prepare import check_source, local_source_files
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
    weights_file=r"yolov3\.weights|yolov3-tiny\.weights|darknet53\.conv\.74",


def study_cells():
    """Cell folders of the configured grid on the active platform."""
    return expand(
        CELL,
        platform=PLATFORM,
        model=MODELS,
        batch=config["batch_sizes"],
        epochs=config["epochs"],
    )


@cache
def other_platform_cells():
    """Finished cells of other platforms already under results/ (copied in, for instance)."""
    return [
        str(cell)
        for cell in find_cells("results")
        if cell.parent.parent.name != PLATFORM and (cell / "run.json").exists()
    ]


def summary_metrics(wildcards):
    return [f"{cell}/metrics.json" for cell in study_cells() + other_platform_cells()]


def summary_runs(wildcards):
    return [f"{cell}/run.json" for cell in study_cells() + other_platform_cells()]


def dataset_source_files(wildcards):
    """Every file of a local VOC dataset (dataset.source a path): editing one, to fix a broken
    annotation say, reruns the copy and what depends on it. None for a named source."""
    return local_source_files(config["dataset"])


def model_weights(wildcards):
    """Starting weights (scratch, backbone or coco) configured for the cell's model."""
    settings = config["models"].get(wildcards.model) or {}
    return settings.get("weights", "scratch")


def starting_weights_file(wildcards):
    """The official Darknet file a cell starts from (none when training from scratch)."""
    from detbench.darknet_files import starting_weights

    file = starting_weights(wildcards.model, model_weights(wildcards))
    return [] if file is None else f"results/weights/{file.name}"


# Dataset keys that shape the training data (eval_split does not).
TRAINING_DATASET_KEYS = (
    "name",
    "source",
    "classes",
    "train_split",
    "synthetic",
    "max_images",
)


def train_config(wildcards):
    """The config a cell's training depends on: a change to it retrains the cell."""
    return {
        "seed": config["seed"],
        "img_size": config["img_size"],
        "dataset": {key: config["dataset"][key] for key in TRAINING_DATASET_KEYS},
        "weights": model_weights(wildcards),
        "train": without_runtime_keys(config["train"]),
    }


def evaluate_config(wildcards):
    """What a cell's evaluation depends on: changing only this re-evaluates, never retrains."""
    return {
        "dataset": config["dataset"],
        "train": without_runtime_keys(config["train"]),
        "evaluate": config["evaluate"],
    }


def resume_dir(wildcards):
    """Checkpoints live beside, not among, the declared outputs: Snakemake deletes those
    before rerunning a job, and the checkpoints must survive to resume it."""
    return CHECKPOINTS.format(**wildcards)


# Wall time a scheduler is asked for per train job (the `runtime` resource, minutes). Costs are
# for one training pass at 416 px on a Tesla P40, the slowest GPU of the study, and scale with
# the pixel count; the margin covers a slower node or a busy file system. Only a scheduler reads
# this (profiles/slurm): a local run ignores it.
TRAIN_SECONDS_PER_IMAGE = {"yolov3": 0.05, "yolov3-tiny": 0.015}
# Per optimizer step whatever its size: small batches cost more per image.
TRAIN_SECONDS_PER_STEP = 0.05
# Interpreter, CUDA context, dataset cache, checkpoints, the final save.
TRAIN_STARTUP_MINUTES = 10
TRAIN_RUNTIME_MARGIN = 2.0
# Image counts of the BCCD splits at the pinned commit (the data may not exist yet at planning).
BCCD_SPLIT_IMAGES = {"train": 205, "val": 87, "trainval": 292, "test": 72}


def train_image_count():
    """Images per training epoch, known from the config before any data is downloaded."""
    dataset = config["dataset"]
    source, split = dataset["source"], dataset["train_split"]
    if source == "synthetic":
        return dataset["synthetic"]["train"]
    if source == "bccd":
        return BCCD_SPLIT_IMAGES.get(split, 364)
    if source == "coco":
        return dataset["max_images"] or 118_287
    split_file = Path(source) / "ImageSets" / "Main" / f"{split}.txt"
    try:
        return max(1, len(split_file.read_text().split()))
    except OSError:
        return 1000


def train_runtime(wildcards, attempt):
    """Minutes of wall time for one train job, from its model, batch size and epochs.

    A retried job (--retries) asks for `attempt` times as much: one stopped at its wall-time
    limit resumes from its last checkpoint with room to finish.
    """
    images = train_image_count()
    pixels = (config["img_size"] / 416) ** 2
    steps = math.ceil(images / int(wildcards.batch))
    epoch_seconds = (
        images * TRAIN_SECONDS_PER_IMAGE[wildcards.model] * pixels
        + steps * TRAIN_SECONDS_PER_STEP
    )
    train_minutes = int(wildcards.epochs) * epoch_seconds / 60
    minutes = TRAIN_STARTUP_MINUTES + TRAIN_RUNTIME_MARGIN * train_minutes
    return math.ceil(minutes) * attempt


def report_reference():
    """The 2020 study's published figures, shipped in the package (see its README)."""
    return str(Path(workflow.basedir, "src", "detbench", "reference", "study_2020.csv"))


def report_layout():
    """What the report shows: this platform, the other platforms under results/, and the two
    published 2020 platforms (file names and labels: src/detbench/report/layout.py)."""
    from detbench.report.layout import build_layout

    return build_layout(
        PLATFORM,
        MODELS,
        config["batch_sizes"],
        config["epochs"],
        other_platform_cells(),
        report_reference(),
    )


def report_layout_params():
    return report_layout().to_params()


def report_files(group):
    """Output files of one report job; those a person reads are flagged for the HTML report."""
    files = []
    for entry in getattr(report_layout(), group)():
        if entry.category is None:
            files.append(entry.path)
            continue
        # (snakefmt reads a line opening with the flag's name as the directive of that name)
        options = dict(
            caption=f"../report/{entry.caption}",
            category=entry.category,
            subcategory=entry.subcategory,
            labels=entry.labels,
        )
        files.append(report(entry.path, **options))
    return files


def report_targets():
    """Every file of the report (tables, comparison, findings, dataset, plots)."""
    return report_layout().all_paths()


def report_histories(wildcards):
    """history.csv of every cell in the summary, for the loss curves (a copied-in cell
    without one gets an empty panel rather than stopping the report)."""
    copied = [f"{cell}/history.csv" for cell in other_platform_cells()]
    return [f"{cell}/history.csv" for cell in study_cells()] + [
        path for path in copied if Path(path).exists()
    ]


def train_inputs(wildcards):
    """The converted dataset and, when the model starts from Darknet's weights, that file."""
    inputs = {"dataset": f"{DATASET_DIR}/yolo"}
    weights = starting_weights_file(wildcards)
    if weights:
        inputs["weights"] = weights
    return inputs


# The profile stage (rules/profile.smk): one job per {model, batch} of the grid, since the
# epochs of a cell do not change its kernels.
PROFILE = "results/{platform}/{model}/profile_b{batch}"


def profile_config(wildcards):
    """The config sections a profile job depends on (a change reruns it).

    The model starts from its seeded random weights whatever models.<m>.weights says: the
    weights' values do not change the kernels.
    """
    return {
        "seed": config["seed"],
        "img_size": config["img_size"],
        "dataset": config["dataset"],
        "train": without_unprofiled_keys(config["train"]),
        "profile": config["profile"],
    }


def summary_profiles(wildcards):
    """Profile summaries joined into the summary rows: this platform's grid (built here) and
    those of other platforms already under results/ (read as they are)."""
    own = expand(
        f"{PROFILE}/summary.json",
        platform=PLATFORM,
        model=MODELS,
        batch=config["batch_sizes"],
    )
    from detbench.aggregate import NOT_PLATFORMS

    others = []
    for path in sorted(Path("results").glob("*/*/profile_b*/summary.json")):
        platform = path.parent.parent.parent.name
        if platform != PLATFORM and platform not in NOT_PLATFORMS:
            others.append(str(path))
    return own + others


def summary_params():
    """Prices per hour by platform and their currency, for the summary's cost column."""
    return {"prices": config["gpu_hour_price"], "currency": config["currency"]}
