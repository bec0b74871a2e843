"""Which image caches a job reads (``dataset.image_cache``): the mode, and the cache folders
as rule inputs. Standard library only: the workflow imports it at parse time; the cache
itself is :mod:`detbench.data.image_cache`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from detbench.data.sizes import train_image_count

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
