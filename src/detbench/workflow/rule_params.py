"""What each rule's ``params:`` hold: Snakemake reruns a job whose params changed, so these
decide which jobs a config change reruns.

``rules/common.smk`` calls these with the validated config; they are plain functions of it, so
they are unit-tested rather than only through dry runs. Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from detbench.study.config import without_runtime_keys, without_unprofiled_keys
from detbench.study.grid import model_weights, repeat_seed

# Dataset keys that shape the training data (eval_split does not).
TRAINING_DATASET_KEYS = (
    "name",
    "source",
    "classes",
    "train_split",
    "synthetic",
    "max_images",
)
# Dataset keys that say how jobs read the data, not what it is: kept out of every rule's params
# (the disk cache holds the decoded pixels bit for bit), so changing them reruns no job.
RUNTIME_DATASET_KEYS = ("image_cache",)

# The train keys that only say how a cell runs are kept out
# (config.RUNTIME_TRAIN_KEYS): changing them reruns nothing, or only the profile jobs.


def train_params(config: Mapping[str, Any], model: str, repeat: int = 0) -> dict[str, Any]:
    """What a cell's training depends on: a change to it retrains the cell. Repeat 0's are
    exactly those of a study without repeats, so adding repeats reruns none of its cells."""
    return {
        "seed": repeat_seed(config, repeat),
        "img_size": config["img_size"],
        "dataset": _training_dataset(config["dataset"]),
        "weights": model_weights(config, model),
        "train": without_runtime_keys(config["train"]),
    }


def _training_dataset(dataset: Mapping[str, Any]) -> dict[str, Any]:
    """The TRAINING_DATASET_KEYS, and a merged dataset's parts (only where there are, so that
    no other study's cells rerun)."""
    params = {key: dataset[key] for key in TRAINING_DATASET_KEYS}
    if "parts" in dataset:
        params["parts"] = dataset["parts"]
    return params


def evaluate_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell's evaluation depends on: changing only this re-evaluates, never retrains."""
    return {
        "dataset": _dataset_params(config),
        "train": without_runtime_keys(config["train"]),
        "evaluate": config["evaluate"],
    }


def deploy_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell's inference benchmark depends on (besides its weights and model.onnx): the
    split it cycles, the NMS it scores with, and the deploy section."""
    return {
        "dataset": _dataset_params(config),
        "evaluate": config["evaluate"],
        "deploy": config["deploy"],
    }


def _dataset_params(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config["dataset"].items() if k not in RUNTIME_DATASET_KEYS}


def profile_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a profile job depends on. The model starts from its seeded random weights whatever
    models.<m>.weights says (the weights' values do not change the kernels), and the runtime
    keys that change kernels (device, channels_last, compile, ...) do rerun it."""
    return {
        "seed": config["seed"],
        "img_size": config["img_size"],
        "dataset": _dataset_params(config),
        "train": without_unprofiled_keys(config["train"]),
        "profile": config["profile"],
    }
