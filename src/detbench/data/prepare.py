"""The two data stages of the workflow, dispatched on ``dataset.source`` in the config.

``download``: put the dataset in Pascal VOC layout (generate, download and verify, or copy).
``convert``: VOC XML -> YOLO labels and ``manifest.json``, which training and evaluation read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError

log = logging.getLogger("detbench.data")

NAMED_SOURCES = ("synthetic", "bccd", "coco", "merge")
STANDARD_SPLITS = ("train", "val", "test")


def source_directory(dataset: Mapping[str, Any]) -> Path | None:
    """The local VOC directory a config points at, or None for a named source."""
    source = str(dataset["source"])
    return None if source in NAMED_SOURCES else Path(source)


def check_source(dataset: Mapping[str, Any], config_name: str = "config") -> None:
    """Fail before any job starts when the configured local dataset directory is missing."""
    from detbench.data.merge import is_merge, plan_parts

    directory = source_directory(dataset)
    if directory is not None and not directory.is_dir():
        raise DetbenchError(
            f"{config_name}: key dataset.source: {directory} is not a directory "
            f"(use one of {', '.join(NAMED_SOURCES)} or the path of a VOC dataset)"
        )
    if is_merge(dataset):
        try:
            plan_parts(dataset)
        except DetbenchError as error:
            raise DetbenchError(f"{config_name}: key {error}") from None
        for index, part in enumerate(dataset["parts"]):
            part_directory = source_directory(part)
            if part_directory is not None and not part_directory.is_dir():
                raise DetbenchError(
                    f"{config_name}: key dataset.parts[{index}] ({part['name']}): source "
                    f"{part_directory} is not a directory"
                )


def local_source_files(dataset: Mapping[str, Any]) -> list[str]:
    """The files the download stage copies from a local VOC dataset (none for a named source)."""
    from detbench.data.merge import local_part_directories
    from detbench.data.voc import COPIED_SUBDIRS

    directories = [source_directory(dataset), *local_part_directories(dataset)]
    return sorted(
        str(path)
        for directory in directories
        if directory is not None and directory.is_dir()
        for sub in COPIED_SUBDIRS
        for path in (directory / sub).rglob("*")
        if path.is_file()
    )


def prepare_voc_dataset(
    dataset: Mapping[str, Any],
    out_dir: Path,
    *,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> None:
    """The dataset in VOC layout (COCO: already converted) at ``out_dir``; downloads are cached
    in ``cache_dir`` (default ``<out_dir's parent>/download``)."""
    source = str(dataset["source"])
    cache_dir = out_dir.parent / "download" if cache_dir is None else cache_dir
    if source == "merge":
        from detbench.data.merge import prepare_parts

        prepare_parts(dataset, out_dir, seed=seed)
    elif source == "synthetic":
        from detbench.data.synthetic import generate_synthetic_voc

        sizes = dataset.get("synthetic", {})
        generate_synthetic_voc(
            out_dir,
            num_images={s: int(sizes.get(s, 16)) for s in STANDARD_SPLITS},
            image_size=(int(sizes.get("width", 320)), int(sizes.get("height", 240))),
            seed=seed,
        )
    elif source == "bccd":
        from detbench.data.bccd import fetch_bccd

        fetch_bccd(out_dir, cache_dir=cache_dir)
    elif source == "coco":
        from detbench.data.coco import fetch_coco

        fetch_coco(
            out_dir,
            splits=coco_splits(dataset),
            max_images=dataset.get("max_images"),
            cache_dir=cache_dir,
            **({"base_url": dataset["coco_url"]} if dataset.get("coco_url") else {}),
        )
    else:
        from detbench.data.voc import import_voc_directory

        import_voc_directory(Path(source), out_dir)
    log.info("dataset %s from %s ready at %s", dataset["name"], source, out_dir)


def coco_splits(dataset: Mapping[str, Any]) -> list[str]:
    """The COCO splits a study trains and evaluates on (train2017, val2017), refused in one line
    when a split key names another."""
    from detbench.data.coco import SPLITS

    for key in ("train_split", "eval_split"):
        if dataset[key] not in SPLITS:
            raise DetbenchError(
                f"dataset.{key}: COCO's splits are {', '.join(SPLITS)}, got {dataset[key]!r}"
            )
    return list(dict.fromkeys([dataset["train_split"], dataset["eval_split"]]))


def splits_to_convert(dataset: Mapping[str, Any], voc_dir: Path) -> list[str]:
    """The configured train and eval splits, plus any standard split the dataset has."""
    wanted = [dataset["train_split"], dataset["eval_split"]]
    split_dir = voc_dir / "ImageSets" / "Main"
    wanted += [s for s in STANDARD_SPLITS if (split_dir / f"{s}.txt").exists()]
    return list(dict.fromkeys(wanted))


def convert_dataset(dataset: Mapping[str, Any], voc_dir: Path, out_dir: Path) -> dict[str, Any]:
    from detbench.data.voc import convert_voc_to_yolo

    if dataset["source"] == "merge":
        from detbench.data.merge import convert_merged

        manifest = convert_merged(dataset, voc_dir, out_dir)
    elif dataset["source"] == "coco":
        manifest = _adopt_converted(voc_dir, out_dir)
    else:
        try:
            manifest = convert_voc_to_yolo(
                voc_dir,
                out_dir,
                class_names=list(dataset["classes"]),
                splits=splits_to_convert(dataset, voc_dir),
                dataset_name=str(dataset["name"]),
                on_bad_image=str(dataset.get("on_bad_image", "error")),
                origin=source_directory(dataset),
            )
        except DetbenchError as error:
            source = source_directory(dataset)
            if source is None:
                raise
            # Name the user's file, not the workflow's copy of it: the source is what to fix.
            raise DetbenchError(str(error).replace(str(voc_dir), str(source))) from None
    for split, counts in manifest["counts"].items():
        log.info("%s: %d images, boxes %s", split, counts["images"], counts["boxes"])
    if manifest["dropped_boxes"]:
        log.info("dropped %d degenerate boxes", len(manifest["dropped_boxes"]))
    for item in manifest.get("skipped_images", []):
        log.warning("skipped %s: %s", item["file"], item["problem"])
    return manifest


def _adopt_converted(download_dir: Path, out_dir: Path) -> dict[str, Any]:
    """COCO arrives already converted (instances JSON -> YOLO labels at download time): copy
    its labels and manifest into the convert stage's folder, images stay where they are."""
    import json
    import shutil

    from detbench import atomic

    manifest = json.loads((download_dir / "manifest.json").read_text(encoding="utf-8"))
    with atomic.atomic_directory(out_dir) as staging:
        shutil.copytree(download_dir / manifest["label_dir"], staging / "labels")
        manifest["label_dir"] = "labels"
        manifest["image_dir"] = str((download_dir / "JPEGImages").resolve())
        atomic.write_json(staging / "manifest.json", manifest)
    return manifest
