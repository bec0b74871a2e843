"""The training batches of a cell: one seeded, augmented order per epoch, and one DataLoader
iterator through all of a job's epochs (see EpochBatchSampler)."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import cv2
import torch
from torch.utils.data import DataLoader, Sampler

from detbench.data.augment import AugmentSettings
from detbench.data.dataset import DatasetManifest, DetectionDataset, collate
from detbench.errors import DetbenchError
from detbench.study.config import TrainSettings


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys for ``epochs`` epochs from ``first_epoch`` on, each epoch
    in its own seeded random order; a batch never spans two epochs (an epoch's last batch may
    be smaller).

    One sampler for all of a job's epochs, so that one DataLoader iterator runs through them:
    the workers start on the next epoch while the current one ends, instead of the prefetch
    starting empty at every epoch (one worker building a whole batch first; figures:
    benchmarks/RESULTS.md, "Real loop against bare step"). The epoch travels with every index,
    so the workers augment each sample the same way whatever their number.

    With ``ranks`` > 1 (DistributedDataParallel), every rank draws the same global order and
    keeps its share of each global batch, images ``rank, rank + ranks, ...`` of it: the ranks'
    shares are disjoint, every image is seen once per epoch, and each rank steps as often.
    """

    def __init__(
        self,
        size: int,
        batch_size: int,
        seed: int,
        *,
        first_epoch: int,
        epochs: int,
        rank: int = 0,
        ranks: int = 1,
    ) -> None:
        self.size = size
        self.batch_size = batch_size  # the global batch, over all ranks
        self.seed = seed
        self.first_epoch = first_epoch
        self.epochs = epochs
        self.rank = rank
        self.ranks = ranks

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.first_epoch, self.first_epoch + self.epochs):
            order = self.epoch_order(epoch)
            for start in range(0, self.size, self.batch_size):
                batch = order[start : start + self.batch_size]
                yield [(epoch, index) for index in batch[self.rank :: self.ranks]]

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch


class TrainingDataset(torch.utils.data.Dataset):
    """Adapts DetectionDataset to (epoch, index) keys."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):  # type: ignore[no-untyped-def]
        epoch, index = key
        return self.dataset.sample(index, epoch=epoch)


def resolve_workers(workers: int | str, device: torch.device) -> int:
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        # On a CPU the model step dwarfs loading (cached images, cheap augmentation), and worker
        # processes would compete with it for the same cores.
        return 0
    # The CPUs this process may use (a Slurm job's allocation), not the whole node's.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, usable or 1)


def make_train_loader(
    manifest: DatasetManifest,
    settings: TrainSettings,
    device: torch.device,
    *,
    first_epoch: int = 0,
    epochs: int | None = None,
    shard: tuple[int, int] = (0, 1),
) -> DataLoader:
    """The training batches of epochs ``first_epoch`` .. ``first_epoch + epochs - 1`` (default:
    up to ``settings.epochs``), in order, from one iterator (see EpochBatchSampler); ``shard``
    (rank, ranks): with several ranks, this rank's share of each batch."""
    rank, ranks = shard
    hyp = settings.hyp
    augment = AugmentSettings(
        hsv_h=hyp.hsv_h,
        hsv_s=hyp.hsv_s,
        hsv_v=hyp.hsv_v,
        flip_lr=hyp.flip_lr,
        flip_ud=hyp.flip_ud,
        translate=hyp.translate,
        scale=hyp.scale,
        mosaic=hyp.mosaic,
    )
    dataset = DetectionDataset.of_split(
        manifest, settings.train_split, settings.img_size, augment=augment, seed=settings.seed
    )
    if not len(dataset):
        raise DetbenchError(f"{manifest.path}: split {settings.train_split!r} has no images")
    if 0 < len(dataset) % settings.batch < ranks:
        raise DetbenchError(
            f"{manifest.path}: the last batch of split {settings.train_split!r} has "
            f"{len(dataset) % settings.batch} images, fewer than train.ranks ({ranks}): "
            "a rank would step on none; change the batch or the ranks"
        )
    workers = resolve_workers(hyp.workers, device)
    if workers > 0:
        # OpenCV's thread pool off before the workers fork, as YOLOv5 does: otherwise every
        # worker runs a thread per core (8 x 16 on a 16-core node), all fighting for the same
        # cores (measured: benchmarks/data_pipeline.py, RESULTS.md). Set in the parent:
        # calling it in a forked worker whose parent had used the pool hung here.
        cv2.setNumThreads(0)
    sampler = EpochBatchSampler(
        len(dataset),
        settings.batch,
        settings.seed,
        first_epoch=first_epoch,
        epochs=settings.epochs - first_epoch if epochs is None else epochs,
        rank=rank,
        ranks=ranks,
    )
    return DataLoader(
        TrainingDataset(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        # Keeps the iterator on the loader, where shutdown_loader_workers finds the workers.
        persistent_workers=workers > 0,
    )


def steps_per_epoch(loader: DataLoader) -> int:
    return loader.batch_sampler.steps_per_epoch  # type: ignore[union-attr]
