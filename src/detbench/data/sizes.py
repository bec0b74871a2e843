"""How many images a training split has, before or after it is on disk: what the wall-time
model and the image-cache mode are planned from. Standard library only."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

# COCO 2017's training split, for a plan made before its annotations are downloaded.
COCO_TRAIN_IMAGES = 118_287
# Images of a VOC dataset whose split lists cannot be read yet (a source to be copied).
UNKNOWN_SPLIT_IMAGES = 1000


def train_image_count(dataset: Mapping[str, Any], dataset_dir: str | Path) -> int:
    """Images per training epoch, read from the dataset's split file where it exists: the
    workflow's VOC copy under ``dataset_dir``, or a local source's own. Before anything is on
    disk: the synthetic size or COCO's subset from the config, or for BCCD the images of the
    pinned file list (all splits: an upper bound of any one). A merged dataset: the sum of its
    parts' (each prepared under ``voc/<part name>``)."""
    return _train_images(dataset, Path(dataset_dir) / "voc")


def _train_images(dataset: Mapping[str, Any], voc_copy: Path) -> int:
    source, split = str(dataset["source"]), dataset["train_split"]
    if source == "merge":
        return sum(_train_images(part, voc_copy / str(part["name"])) for part in dataset["parts"])
    if source == "synthetic":
        return int(dataset["synthetic"]["train"])
    if source == "coco":
        return int(dataset["max_images"] or COCO_TRAIN_IMAGES)
    candidates = [voc_copy]
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
