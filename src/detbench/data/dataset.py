"""A YOLO dataset over a converted manifest: decoded images, letterbox, augmentation.

Each sample's augmentation draws from a generator seeded by ``(seed, epoch, index)``, so the
data a model sees is a pure function of the seed and the epoch: it does not depend on the
number of DataLoader workers, and a training run resumed at epoch k sees exactly what an
uninterrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from detbench.data.augment import AugmentSettings, Letterbox, augment, letterbox, mosaic
from detbench.data.image_cache import DecodedImages, ImageSource, open_image_cache

# The manifest and its records live in detbench.data.manifest (no torch there); most callers
# import them from here, with the dataset.
from detbench.data.manifest import DatasetManifest, ImageRecord, read_image

__all__ = [
    "Batch",
    "DatasetManifest",
    "DetectionDataset",
    "ImageRecord",
    "Sample",
    "collate",
    "read_image",
]


@dataclasses.dataclass
class Sample:
    image: torch.Tensor  # (3, S, S) uint8, RGB
    targets: torch.Tensor  # (N, 5): class, cx, cy, w, h normalised to the canvas
    image_id: str
    letterbox: Letterbox


class DetectionDataset(Dataset[Sample]):
    """Images of one split at network resolution, from ``images``: by default decoded once
    into memory, or a disk image cache (detbench.data.image_cache); the samples are the same.

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
        images: ImageSource | None = None,
    ) -> None:
        self.records = list(records)
        self.img_size = img_size
        self.augment_settings = augment
        self.seed = seed
        self._index = {record.id: i for i, record in enumerate(self.records)}
        # Decoding JPEGs is the slowest part of loading, hence once per job (or per cache).
        self.images = images if images is not None else DecodedImages(self.records, img_size)
        if len(self.images) != len(self.records):
            raise ValueError(f"{len(self.images)} images for {len(self.records)} records")

    @classmethod
    def of_split(
        cls,
        manifest: DatasetManifest,
        split: str,
        img_size: int,
        *,
        augment: AugmentSettings | None = None,
        seed: int = 0,
    ) -> DetectionDataset:
        """``split`` of ``manifest``, read from its disk image cache where the manifest names
        one (``image_caches``), else decoded into memory."""
        records = manifest.records(split)
        folder = manifest.image_caches.get(split)
        images = None if folder is None else open_image_cache(folder, records, img_size, split)
        return cls(records, img_size, augment=augment, seed=seed, images=images)

    def __len__(self) -> int:
        return len(self.records)

    def _mosaic(
        self, index: int, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        others = rng.integers(0, len(self.records), size=3)
        chosen = [index, *others.tolist()]
        images, ratios = zip(*(self.images.image(i) for i in chosen), strict=True)
        return mosaic(
            list(images),
            [self.records[i].boxes_xyxy() * ratio for i, ratio in zip(chosen, ratios, strict=True)],
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
        image, ratio = self.images.image(index)
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
