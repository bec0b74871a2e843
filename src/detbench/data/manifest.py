"""A converted dataset's manifest and its image records, without torch: the image cache's
rule (detbench.data.image_cache) reads them at a fraction of a training job's start-up."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from detbench.errors import DetbenchError, read_json


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    id: str
    path: Path
    width: int
    height: int
    labels: np.ndarray  # (N, 5): class, cx, cy, w, h normalised to the original image

    def boxes_xyxy(self) -> np.ndarray:
        """Ground-truth boxes in original-image pixels (x0, y0, x1, y1)."""
        cx, cy, w, h = (self.labels[:, i] for i in range(1, 5))
        boxes = np.stack(
            [
                (cx - w / 2) * self.width,
                (cy - h / 2) * self.height,
                (cx + w / 2) * self.width,
                (cy + h / 2) * self.height,
            ],
            axis=1,
        )
        return boxes.astype(np.float64).reshape(-1, 4)

    @property
    def classes(self) -> np.ndarray:
        return self.labels[:, 0].astype(np.int64)


@dataclasses.dataclass(frozen=True)
class DatasetManifest:
    path: Path
    dataset: str
    class_names: tuple[str, ...]
    image_dir: Path
    label_dir: Path
    splits: dict[str, list[dict[str, Any]]]
    raw: dict[str, Any]
    # Split -> its disk image cache folder (rules/data.smk's image_cache rule); a split not
    # named here is decoded into memory by DetectionDataset.of_split.
    image_caches: Mapping[str, Path] = dataclasses.field(default_factory=dict)

    @classmethod
    def load(
        cls, path: str | Path, image_caches: Mapping[str, str | Path] | None = None
    ) -> DatasetManifest:
        path = Path(path)
        if path.is_dir():
            path = path / "manifest.json"
        raw = read_json(path, missing="dataset manifest does not exist")
        try:
            image_dir = Path(raw["image_dir"])
            if not image_dir.is_absolute():
                image_dir = path.parent / image_dir
            return cls(
                path=path,
                dataset=str(raw["dataset"]),
                class_names=tuple(raw["class_names"]),
                image_dir=image_dir,
                label_dir=path.parent / raw["label_dir"],
                splits=dict(raw["splits"]),
                raw=raw,
                image_caches={k: Path(v) for k, v in (image_caches or {}).items()},
            )
        except KeyError as exc:
            raise DetbenchError(f"{path}: manifest lacks the key {exc.args[0]!r}") from None

    def records(self, split: str) -> list[ImageRecord]:
        if split not in self.splits:
            known = ", ".join(sorted(self.splits))
            raise DetbenchError(f"{self.path}: no split {split!r} (the manifest has: {known})")
        from detbench.data.integrity import MadeFrom
        from detbench.data.voc import load_yolo_labels

        made_from = MadeFrom.from_manifest(self.path, self.raw)
        if made_from is not None:
            # Before decoding anything: a dataset whose source copy is gone or differs is
            # refused naming the user's file, not a decode error on the workflow's copy.
            image_dir = self.image_dir.name
            made_from.check([f"{image_dir}/{entry['file']}" for entry in self.splits[split]])
        elif "parts" in self.raw:
            from detbench.data.merge import check_part_sources

            check_part_sources(self.path, self.raw, self.splits[split])
        return [
            ImageRecord(
                id=entry["id"],
                path=self.image_dir / entry["file"],
                width=int(entry["width"]),
                height=int(entry["height"]),
                labels=load_yolo_labels(self.label_dir / f"{entry['id']}.txt"),
            )
            for entry in self.splits[split]
        ]


def read_image(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        if not path.exists():
            raise DetbenchError(f"{path}: image file does not exist")
        raise DetbenchError(f"{path}: not a readable image")
    return image
