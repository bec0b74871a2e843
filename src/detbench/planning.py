"""What the workflow decides before any job runs: what each rule's jobs depend on (so that a
config change reruns exactly the jobs it affects), and how much wall time a scheduler is asked
for per train job.

``rules/common.smk`` calls these with the validated config; they are plain functions of it, so
they are unit-tested here rather than only through dry runs. Standard library only (and
detbench's config helpers): the workflow imports it at parse time.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from detbench.cells import Cell
from detbench.config import without_runtime_keys, without_unprofiled_keys

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


def model_weights(config: Mapping[str, Any], model: str) -> str:
    """Starting weights (scratch, backbone or coco) configured for ``model``."""
    settings = config["models"].get(model) or {}
    return settings.get("weights", "scratch")


# What each rule's params hold: Snakemake reruns a job whose params changed, so these decide
# which jobs a config change reruns. The train keys that only say how a cell runs are kept out
# (config.RUNTIME_TRAIN_KEYS): changing them reruns nothing, or only the profile jobs.


# A cell's Slurm request for its ranks (train.ranks, train.nodes; rules/train.smk's resources):
# one task and one GPU per rank, the job's threads split over the tasks. One rank: one task of
# all the threads and one GPU, as before ranks existed.


def rank_tasks(config: Mapping[str, Any], wildcards: Any = None) -> int:
    """Slurm tasks of a train job (sbatch --ntasks): one per rank."""
    return int(config["train"]["ranks"])


def rank_gpus(config: Mapping[str, Any], wildcards: Any = None) -> int:
    """GPUs of a train job (sbatch --gpus, with --ntasks-per-gpu=1): one per rank."""
    return int(config["train"]["ranks"])


def rank_nodes(config: Mapping[str, Any], wildcards: Any = None) -> int:
    """Nodes of a train job (sbatch --nodes): train.nodes."""
    return int(config["train"]["nodes"])


def rank_cpus_per_task(config: Mapping[str, Any], wildcards: Any = None, threads: int = 1) -> int:
    """CPUs per task (sbatch --cpus-per-task): the job's threads over its ranks, at least 1."""
    return max(1, int(threads) // int(config["train"]["ranks"]))


def model_repeats(config: Mapping[str, Any], model: str) -> int:
    """Runs of every cell of ``model``: models.<model>.repeats, else the top-level repeats."""
    settings = config["models"].get(model) or {}
    return int(settings.get("repeats", config["repeats"]))


def repeat_seed(config: Mapping[str, Any], repeat: int) -> int:
    """The seed of repeat ``repeat``: seed + repeat (repeat_seed vary) or the seed (fixed)."""
    return int(config["seed"]) + (repeat if config["repeat_seed"] == "vary" else 0)


def train_params(config: Mapping[str, Any], model: str, repeat: int = 0) -> dict[str, Any]:
    """What a cell's training depends on: a change to it retrains the cell. Repeat 0's are
    exactly those of a study without repeats, so adding repeats reruns none of its cells."""
    return {
        "seed": repeat_seed(config, repeat),
        "img_size": config["img_size"],
        "dataset": {key: config["dataset"][key] for key in TRAINING_DATASET_KEYS},
        "weights": model_weights(config, model),
        "train": without_runtime_keys(config["train"]),
    }


def evaluate_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a cell's evaluation depends on: changing only this re-evaluates, never retrains."""
    return {
        "dataset": _dataset_params(config),
        "train": without_runtime_keys(config["train"]),
        "evaluate": config["evaluate"],
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


# --------------------------------------------------------------------------- wall time


@dataclasses.dataclass(frozen=True)
class WallTimeModel:
    """Wall time a scheduler is asked for per train job (the ``runtime`` resource, minutes).

    Costs are for one training pass at 416 px on a Tesla P40, the slowest GPU of the study, and
    scale with the pixel count; the margin covers a slower node or a busy file system. Only a
    scheduler reads this (profiles/slurm): a local run ignores it.
    """

    seconds_per_image: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"yolov3": 0.05, "yolov3-tiny": 0.015}
    )
    seconds_per_step: float = 0.05  # whatever its size: small batches cost more per image
    startup_minutes: float = 10  # interpreter, CUDA context, data cache, checkpoints, saving
    margin: float = 2.0

    def minutes(
        self, model: str, batch: int, epochs: int, images: int, img_size: int, attempt: int = 1
    ) -> int:
        """Minutes for one train job. A retried job (--retries) asks for ``attempt`` times as
        much: one stopped at its wall-time limit resumes from its checkpoint with room to
        finish."""
        pixels = (img_size / 416) ** 2
        steps = math.ceil(images / batch)
        epoch_seconds = (
            images * self.seconds_per_image[model] * pixels + steps * self.seconds_per_step
        )
        train_minutes = epochs * epoch_seconds / 60
        return math.ceil(self.startup_minutes + self.margin * train_minutes) * attempt


WALL_TIME = WallTimeModel()


def train_minutes(
    config: Mapping[str, Any], dataset_dir: str | Path, wildcards: Any, attempt: int
) -> int:
    """WALL_TIME's minutes for the train job of the cell named by ``wildcards``."""
    images = train_image_count(config["dataset"], dataset_dir)
    batch, epochs = int(wildcards.batch), int(wildcards.epochs)
    return WALL_TIME.minutes(wildcards.model, batch, epochs, images, config["img_size"], attempt)


# COCO 2017's training split, for a plan made before its annotations are downloaded.
COCO_TRAIN_IMAGES = 118_287
# Images of a VOC dataset whose split lists cannot be read yet (a source to be copied).
UNKNOWN_SPLIT_IMAGES = 1000


def train_image_count(dataset: Mapping[str, Any], dataset_dir: str | Path) -> int:
    """Images per training epoch, read from the dataset's split file where it exists: the
    workflow's VOC copy under ``dataset_dir``, or a local source's own. Before anything is on
    disk: the synthetic size or COCO's subset from the config, or for BCCD the images of the
    pinned file list (all splits: an upper bound of any one)."""
    source, split = str(dataset["source"]), dataset["train_split"]
    if source == "synthetic":
        return int(dataset["synthetic"]["train"])
    if source == "coco":
        return int(dataset["max_images"] or COCO_TRAIN_IMAGES)
    candidates = [Path(dataset_dir) / "voc"]
    if source != "bccd":
        candidates.append(Path(source))
    for voc in candidates:
        count = _split_file_count(voc / "ImageSets" / "Main" / f"{split}.txt")
        if count is not None:
            return count
    if source == "bccd":
        return _bccd_image_count()
    return UNKNOWN_SPLIT_IMAGES


def _split_file_count(path: Path) -> int | None:
    try:
        return max(1, len(path.read_text(encoding="utf-8").split()))
    except OSError:
        return None


def _bccd_image_count() -> int:
    from detbench.data.bccd import load_manifest

    return sum(1 for name in load_manifest() if name.startswith("JPEGImages/"))


# --------------------------------------------------------------------------- image cache

# dataset.image_cache auto: the disk cache above this many training images. Below it the
# in-memory path is faster per job and small in memory (benchmarks/image_cache.py, RESULTS.md).
DISK_CACHE_ABOVE_IMAGES = 2000
# The splits each rule's jobs read, by their dataset key.
IMAGE_CACHE_SPLITS: Mapping[str, tuple[str, ...]] = {
    "train": ("train_split", "eval_split"),  # training, and its interim and final evaluation
    "evaluate": ("eval_split",),
    "profile": ("train_split",),
}


def image_cache_mode(config: Mapping[str, Any], dataset_dir: str | Path) -> str:
    """'memory' or 'disk': dataset.image_cache, with auto resolved by the training split's
    size (train_image_count: the split file once it exists, else the config's estimate)."""
    mode = str(config["dataset"].get("image_cache", "auto"))
    if mode != "auto":
        return mode
    images = train_image_count(config["dataset"], dataset_dir)
    return "disk" if images > DISK_CACHE_ABOVE_IMAGES else "memory"


def image_cache_folder(dataset_dir: str | Path, split: str, img_size: int) -> str:
    """The image_cache rule's output for ``split`` at ``img_size`` (rules/data.smk)."""
    return f"{dataset_dir}/image_cache/{split}_{img_size}"


def image_cache_inputs(
    config: Mapping[str, Any],
    dataset_dir: str | Path,
    rule: str,
    wrap: Callable[[str], Any] = str,
) -> dict[str, Any]:
    """The disk caches a job of ``rule`` reads, as named inputs ``cache_<split>`` (the
    scripts pass them on by split; see image_caches_of); none when the mode is memory.
    Each goes through ``wrap``: the workflow's ``ancient``, as a cache that a job found
    damaged and rebuilt holds the same pixels, and must not rerun every other cell."""
    if image_cache_mode(config, dataset_dir) != "disk":
        return {}
    splits = (config["dataset"][key] for key in IMAGE_CACHE_SPLITS[rule])
    size = int(config["img_size"])
    return {f"cache_{s}": wrap(image_cache_folder(dataset_dir, s, size)) for s in splits}


def image_caches_of(inputs: Mapping[str, Any]) -> dict[str, Path]:
    """split -> cache folder from a job's named inputs (the reverse of image_cache_inputs)."""
    return {
        key.removeprefix("cache_"): Path(str(value))
        for key, value in inputs.items()
        if key.startswith("cache_")
    }


def study_cells(config: Mapping[str, Any]) -> list[Cell]:
    """The configured grid on the config's platform: every model, batch size, epochs and
    repeat."""
    return [
        Cell(config["platform"], model, int(batch), int(epochs), repeat)
        for model in config["models"]
        for batch in config["batch_sizes"]
        for epochs in config["epochs"]
        for repeat in range(model_repeats(config, model))
    ]


def study_profiles(config: Mapping[str, Any]) -> list[Path]:
    """Profile folders of the grid: one per {model, batch}, in grid order."""
    folders = (cell.profile_folder() for cell in study_cells(config))
    return list(dict.fromkeys(folders))
