"""A YOLO dataset over a converted manifest: cached decoded images, letterbox, augmentation.

Each sample's augmentation draws from a generator seeded by ``(seed, epoch, index)``, so the
data a model sees is a pure function of the seed and the epoch: it does not depend on the
number of DataLoader workers, and a training run resumed at epoch k sees exactly what an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from detbench.data.augment import (
    AugmentSettings,
    Letterbox,
    augment,
    letterbox,
    mosaic,
    resize_long_side,
)
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

    @classmethod
    def load(cls, path: str | Path) -> DatasetManifest:
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


@dataclasses.dataclass
class Sample:
    image: torch.Tensor  # (3, S, S) uint8, RGB
    targets: torch.Tensor  # (N, 5): class, cx, cy, w, h normalised to the canvas
    image_id: str
    letterbox: Letterbox


class DetectionDataset(Dataset[Sample]):
    """Images of one split, decoded once and cached at network resolution.

    With ``augment`` set, every access applies the random training transform; without it,
    images are letterboxed deterministically (evaluation).
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        img_size: int,
        *,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> None:
        self.records = list(records)
        self.img_size = img_size
        self.augment_settings = augment
        self.seed = seed
        self._index = {record.id: i for i, record in enumerate(self.records)}
        # Decoding JPEGs is the slowest part of loading; BCCD at 416 px is ~80 MB resident.
        self._images: list[np.ndarray] = []
        self._ratios: list[float] = []
        for record in self.records:
            resized, ratio = resize_long_side(read_image(record.path), img_size)
            self._images.append(resized)
            self._ratios.append(ratio)

    def __len__(self) -> int:
        return len(self.records)

    def _mosaic(
        self, index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        others = rng.integers(0, len(self.records), size=3)
        chosen = [index, *others.tolist()]
        return mosaic(
            [self._images[i] for i in chosen],
            [self.records[i].boxes_xyxy() * self._ratios[i] for i in chosen],
            [self.records[i].classes for i in chosen],
            self.img_size,
            rng,
        )

    def index_of(self, image_id: str) -> int:
        return self._index[image_id]

    def __getitem__(self, index: int) -> Sample:
        return self.sample(index)

    def sample(self, index: int, *, epoch: int = 0) -> Sample:
        """The image at ``index`` as the model sees it in ``epoch`` (augmented or not)."""
        record = self.records[index]
        image, ratio = self._images[index], self._ratios[index]
        boxes = record.boxes_xyxy() * ratio
        classes = record.classes
        if self.augment_settings is not None:
            rng = np.random.default_rng([self.seed, epoch, index])
            if rng.random() < self.augment_settings.mosaic:
                image, boxes, classes = self._mosaic(index, rng)
            canvas, boxes, classes = augment(
                image, boxes, classes, self.img_size, self.augment_settings, rng
            )
            transform = Letterbox(ratio, 0.0, 0.0)  # not invertible after augmentation
        else:
            canvas, boxes, placement = letterbox(image, boxes, self.img_size)
            transform = Letterbox(ratio, placement.pad_x, placement.pad_y)
        return Sample(
            image=torch.from_numpy(np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1))),
            targets=torch.from_numpy(_xyxy_to_normalised_cxcywh(boxes, classes, self.img_size)),
            image_id=record.id,
            letterbox=transform,
        )


def _xyxy_to_normalised_cxcywh(boxes: np.ndarray, classes: np.ndarray, size: int) -> np.ndarray:
    out = np.zeros((len(boxes), 5), dtype=np.float32)
    if len(boxes):
        out[:, 0] = classes
        out[:, 1] = (boxes[:, 0] + boxes[:, 2]) / 2 / size
        out[:, 2] = (boxes[:, 1] + boxes[:, 3]) / 2 / size
        out[:, 3] = (boxes[:, 2] - boxes[:, 0]) / size
        out[:, 4] = (boxes[:, 3] - boxes[:, 1]) / size
    return out


@dataclasses.dataclass
class Batch:
    images: torch.Tensor  # (B, 3, S, S) uint8
    targets: torch.Tensor  # (N, 6): image index in batch, class, cx, cy, w, h (normalised)
    image_ids: list[str]
    letterboxes: list[Letterbox]

    def pin_memory(self) -> Batch:
        # Called by DataLoader(pin_memory=True) so host-to-GPU copies can be asynchronous.
        return Batch(
            self.images.pin_memory(), self.targets.pin_memory(), self.image_ids, self.letterboxes
        )


def collate(samples: Sequence[Sample]) -> Batch:
    targets = [
        torch.cat([torch.full((len(s.targets), 1), float(i)), s.targets], dim=1)
        for i, s in enumerate(samples)
    ]
    return Batch(
        images=torch.stack([s.image for s in samples]),
        targets=torch.cat(targets) if targets else torch.zeros((0, 6)),
        image_ids=[s.image_id for s in samples],
        letterboxes=[s.letterbox for s in samples],
    )
