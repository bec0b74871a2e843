"""Merged datasets (``dataset.source: merge``): several ordinary dataset specs, the *parts*,
each prepared, converted and checked exactly as it would be alone, then put together as one
YOLO dataset with one label space.

Label space: the parts' classes in the order the parts are listed (COCO then BCCD: COCO's 80,
then RBC, WBC, Platelets = 83). Equal class names in two parts stay two classes: the first part
keeps the plain name, a later part's class is named ``<part name>/<class>`` (a second ``RBC``
from a part named ``bccd`` becomes ``bccd/RBC``).

Splits: the merged dataset's ``train_split`` holds every part's own ``train_split`` images and
its ``eval_split`` every part's ``eval_split`` images, so each part keeps its splits (COCO's
train2017 and val2017, BCCD's train and test). Image ids are ``<part name>/<the part's id>``.

Layout inside the convert stage's folder::

    parts/<name>/manifest.json, labels/   each part converted alone (its own class ids)
    labels/<name>/<id>.txt                the merged labels (class ids shifted into the space)
    manifest.json                         the merged manifest: ``parts`` and each image's part
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.errors import DetbenchError

log = logging.getLogger("detbench.data")

MERGE_SOURCE = "merge"
PARTS_DIR = "parts"
LABEL_DIR = "labels"


@dataclass(frozen=True)
class MergedPart:
    """One part's place in the merged label space and splits."""

    name: str
    source: str
    class_names: tuple[str, ...]  # the part's own names, in its label order
    merged_names: tuple[str, ...]  # the same classes' names in the merged space
    offset: int  # merged class id of the part's class 0
    splits: dict[str, str]  # merged split -> the part's own split
    dataset: str = ""  # the name the part's own manifest gives it (COCO's: coco-<splits>)

    @property
    def class_ids(self) -> range:
        """The part's classes as merged class ids."""
        return range(self.offset, self.offset + len(self.class_names))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "class_names": list(self.class_names),
            "merged_class_names": list(self.merged_names),
            "class_offset": self.offset,
            "splits": dict(self.splits),
            "dataset": self.dataset,
            "manifest": f"{PARTS_DIR}/{self.name}/manifest.json",
        }

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MergedPart:
        return cls(
            name=str(raw["name"]),
            source=str(raw["source"]),
            class_names=tuple(raw["class_names"]),
            merged_names=tuple(raw["merged_class_names"]),
            offset=int(raw["class_offset"]),
            splits=dict(raw["splits"]),
            dataset=str(raw.get("dataset", "")),
        )


def is_merge(dataset: Mapping[str, Any]) -> bool:
    return str(dataset.get("source")) == MERGE_SOURCE


def part_class_names(part: Mapping[str, Any]) -> tuple[str, ...]:
    """A part's classes as it would have them alone (COCO brings its own 80)."""
    if part["source"] == "coco":
        from detbench.data.coco import COCO_CLASSES

        return COCO_CLASSES
    return tuple(part["classes"])


def plan_parts(dataset: Mapping[str, Any]) -> list[MergedPart]:
    """The parts of a merged dataset, each with its classes' place in the merged label space."""
    parts = dataset.get("parts") or []
    if not parts:
        raise DetbenchError("dataset.parts: source 'merge' needs at least one part")
    taken: set[str] = set()
    planned = []
    offset = 0
    for index, part in enumerate(parts):
        name = str(part["name"])
        if part["source"] == MERGE_SOURCE:
            raise DetbenchError(f"dataset.parts[{index}] ({name}): a part cannot be a merge")
        if any(p.name == name for p in planned):
            raise DetbenchError(f"dataset.parts[{index}]: part name {name!r} is used twice")
        if name == PARTS_DIR:
            raise DetbenchError(f"dataset.parts[{index}]: {name!r} is reserved as a part name")
        if part["train_split"] == part["eval_split"]:
            raise DetbenchError(
                f"dataset.parts[{index}] ({name}): eval_split must differ from train_split "
                f"({part['train_split']!r}); evaluate on held-out images"
            )
        own = part_class_names(part)
        merged = tuple(c if c not in taken else f"{name}/{c}" for c in own)
        clash = taken.intersection(merged)
        if clash:
            raise DetbenchError(
                f"dataset.parts[{index}] ({name}): class name {sorted(clash)[0]!r} is taken "
                "in the merged label space; rename the part"
            )
        taken.update(merged)
        splits = {
            str(dataset["train_split"]): str(part["train_split"]),
            str(dataset["eval_split"]): str(part["eval_split"]),
        }
        planned.append(MergedPart(name, str(part["source"]), own, merged, offset, splits))
        offset += len(own)
    return planned


def merged_class_names(dataset: Mapping[str, Any]) -> list[str]:
    return [name for part in plan_parts(dataset) for name in part.merged_names]


def part_error(index: int, part: Mapping[str, Any], error: DetbenchError) -> DetbenchError:
    """One line naming the part and the file: the part's first problem, and how many more."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    first = lines[0] if lines else "failed"
    # A bad-files list is a header line then one line per file: name the first file.
    files = [line for line in lines[1:] if not line.startswith("...")]
    if files:
        more = len(files) - 1 + sum(_more_count(line) for line in lines[1:])
        first = files[0] + (f" (and {more} more bad files)" if more else "")
    return DetbenchError(f"dataset.parts[{index}] ({part['name']}): {first}")


def _more_count(line: str) -> int:
    words = line.split()
    return int(words[2]) if line.startswith("...") and len(words) > 2 else 0


# --- the download stage ----------------------------------------------------------------------


def prepare_parts(dataset: Mapping[str, Any], out_dir: Path, *, seed: int = 0) -> None:
    """Each part in VOC layout (or COCO's own) at ``out_dir/<part name>``, as it would be alone.
    Downloads are cached once for all parts, beside ``out_dir``."""
    from detbench.data.prepare import prepare_voc_dataset

    plan_parts(dataset)  # refuse a bad plan before fetching anything
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, part in enumerate(dataset["parts"]):
        try:
            prepare_voc_dataset(
                part, out_dir / part["name"], seed=seed, cache_dir=out_dir.parent / "download"
            )
        except DetbenchError as error:
            raise part_error(index, part, error) from None


# --- the convert stage -----------------------------------------------------------------------


def convert_merged(dataset: Mapping[str, Any], voc_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Convert every part alone into ``out_dir/parts/<name>``, then write the merged labels and
    manifest; ``out_dir`` is replaced atomically, so a failing part leaves nothing behind."""
    from detbench.data.prepare import convert_dataset

    parts = plan_parts(dataset)
    voc_root = voc_dir.resolve()
    with atomic.atomic_directory(out_dir) as staging:
        manifests = []
        for index, (part, spec) in enumerate(zip(parts, dataset["parts"], strict=True)):
            try:
                manifests.append(
                    convert_dataset(spec, voc_dir / part.name, staging / PARTS_DIR / part.name)
                )
            except DetbenchError as error:
                raise part_error(index, spec, error) from None
        manifest = _merge(dataset, parts, manifests, staging, voc_root)
        atomic.write_json(staging / "manifest.json", manifest)
    return manifest


def _merge(
    dataset: Mapping[str, Any],
    parts: Sequence[MergedPart],
    manifests: Sequence[Mapping[str, Any]],
    staging: Path,
    voc_root: Path,
) -> dict[str, Any]:
    class_names = [name for part in parts for name in part.merged_names]
    splits: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for split in (dataset["train_split"], dataset["eval_split"]):
        splits[split] = []
        counts[split] = {"images": 0, "boxes": dict.fromkeys(class_names, 0)}
        for part, manifest in zip(parts, manifests, strict=True):
            own_split = part.splits[split]
            if own_split not in manifest["splits"]:
                raise DetbenchError(
                    f"dataset.parts ({part.name}): no split {own_split!r} "
                    f"(it has: {', '.join(manifest['splits'])})"
                )
            entries = _merge_entries(part, manifest, own_split, staging, voc_root)
            splits[split] += entries
            counts[split]["images"] += len(entries)
            own_counts = manifest["counts"][own_split]
            for own, merged in zip(part.class_names, part.merged_names, strict=True):
                counts[split]["boxes"][merged] = int(own_counts["boxes"].get(own, 0))
            if "skipped" in own_counts:
                counts[split]["skipped"] = counts[split].get("skipped", 0) + own_counts["skipped"]
    return {
        "dataset": str(dataset["name"]),
        "source": MERGE_SOURCE,
        "class_names": class_names,
        "image_dir": str(voc_root),
        "label_dir": LABEL_DIR,
        "splits": splits,
        "counts": counts,
        "parts": [
            dataclasses.replace(part, dataset=str(manifest["dataset"])).to_json()
            for part, manifest in zip(parts, manifests, strict=True)
        ],
        "dropped_boxes": _tagged(parts, manifests, "dropped_boxes"),
        "clipped_boxes": sum(int(m.get("clipped_boxes", 0)) for m in manifests),
        "skipped_images": _tagged(parts, manifests, "skipped_images"),
    }


def _tagged(
    parts: Sequence[MergedPart], manifests: Sequence[Mapping[str, Any]], key: str
) -> list[dict[str, Any]]:
    """The parts' lists under ``key``, each item with its part's name."""
    return [
        {"part": part.name, **item}
        for part, manifest in zip(parts, manifests, strict=True)
        for item in manifest.get(key, [])
    ]


def _merge_entries(
    part: MergedPart,
    manifest: Mapping[str, Any],
    split: str,
    staging: Path,
    voc_root: Path,
) -> list[dict[str, Any]]:
    """The part's images of ``split`` as merged manifest entries; their labels written with
    the class ids shifted into the merged space (once per image, splits may overlap)."""
    part_dir = staging / PARTS_DIR / part.name
    image_dir = Path(manifest["image_dir"])
    if not image_dir.is_absolute():
        image_dir = part_dir / image_dir
    own_labels = part_dir / manifest["label_dir"]
    label_dir = staging / LABEL_DIR / part.name
    label_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for entry in manifest["splits"][split]:
        target = label_dir / f"{entry['id']}.txt"
        if not target.exists():
            source = own_labels / f"{entry['id']}.txt"
            target.write_text(_shift_labels(source, part.offset), encoding="utf-8")
        entries.append(
            {
                **entry,
                "id": f"{part.name}/{entry['id']}",
                "file": os.path.relpath(image_dir.resolve() / entry["file"], voc_root),
                "part": part.name,
            }
        )
    return entries


def _shift_labels(path: Path, offset: int) -> str:
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields:
            lines.append(" ".join([str(int(float(fields[0])) + offset), *fields[1:]]) + "\n")
    return "".join(lines)


# --- reading it back -------------------------------------------------------------------------


def manifest_parts(raw: Mapping[str, Any]) -> list[MergedPart]:
    """The parts a converted manifest records (none for a single dataset)."""
    return [MergedPart.from_json(item) for item in raw.get("parts", [])]


def check_part_sources(
    manifest_path: Path, raw: Mapping[str, Any], entries: Sequence[Mapping[str, Any]]
) -> None:
    """Refuse, naming the user's file, a merged split whose images a part was converted from
    are gone or changed (each part's manifest records its own source files)."""
    from detbench.data.integrity import MadeFrom

    for part in manifest_parts(raw):
        part_manifest = manifest_path.parent / PARTS_DIR / part.name / "manifest.json"
        if not part_manifest.is_file():
            continue
        part_raw = json.loads(part_manifest.read_text(encoding="utf-8"))
        made_from = MadeFrom.from_manifest(part_manifest, part_raw)
        if made_from is None:
            continue
        image_dir = Path(part_raw["image_dir"]).name
        own = {e["id"]: e["file"] for split in part_raw["splits"].values() for e in split}
        prefix = f"{part.name}/"
        files = [
            f"{image_dir}/{own[e['id'][len(prefix) :]]}"
            for e in entries
            if e.get("part") == part.name and e["id"][len(prefix) :] in own
        ]
        made_from.check(files)


def local_part_directories(dataset: Mapping[str, Any]) -> list[Path]:
    """The local VOC folders among a merged dataset's parts."""
    from detbench.data.prepare import source_directory

    return [d for part in dataset.get("parts", []) if (d := source_directory(part)) is not None]
