"""Where DetectionDataset gets its decoded images: decoded into memory by the job itself, or
read from a shared disk cache that the workflow builds once per dataset x split x image size.

The disk cache is a folder holding ``images.bin`` (every image, decoded by read_image and
resized by resize_long_side as the in-memory path does, as raw uint8 BGR bytes one after
another) and ``cache.json`` (format, split, image size, and per image its id, source path, size
and mtime, offset, shape, resize ratio and CRC-32). ``cache.json`` is written last, each file
atomically, so a build killed half-way leaves a folder that never passes as complete.

A job reads one image at a time with ``os.pread``: its resident memory does not grow with the
dataset (the page cache, shared by every job on the node, holds what is hot). Opening checks the
data file's size and each source image's size and mtime against ``cache.json``; every read checks
its image's CRC-32. A stale or damaged cache is rebuilt under a lock (``fcntl.flock``), so jobs
that find it so at the same time rebuild it once. No torch here: the cache rule imports this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from detbench import atomic
from detbench.data.augment import resize_long_side
from detbench.data.manifest import DatasetManifest, ImageRecord, read_image
from detbench.errors import DetbenchError

log = logging.getLogger("detbench.image_cache")

FORMAT_VERSION = 1
DATA_FILE = "images.bin"
INDEX_FILE = "cache.json"
LOCK_FILE = ".lock"


class ImageSource(Protocol):
    """The decoded images of a split, by index: the resized BGR image and its resize ratio."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> tuple[np.ndarray, float]: ...


def decode(record: ImageRecord, img_size: int) -> tuple[np.ndarray, float]:
    """One image as both sources hold it: decoded, its long side resized to ``img_size``."""
    return resize_long_side(read_image(record.path), img_size)


class DecodedImages:
    """Every image decoded into the job's memory up front (BCCD at 416 px: ~80 MB resident)."""

    def __init__(self, records: Sequence[ImageRecord], img_size: int) -> None:
        decoded = [decode(record, img_size) for record in records]
        self._images = [image for image, _ in decoded]
        self._ratios = [ratio for _, ratio in decoded]

    def __len__(self) -> int:
        return len(self._images)

    def image(self, index: int) -> tuple[np.ndarray, float]:
        return self._images[index], self._ratios[index]


class CacheDamaged(DetbenchError):
    """A cache whose data does not match its index (truncated, overwritten, foreign)."""


@dataclasses.dataclass(frozen=True)
class CacheIndex:
    """Where each image's bytes lie in the data file, as arrays (compact for 100k images)."""

    ids: tuple[str, ...]
    offsets: np.ndarray  # int64
    heights: np.ndarray  # int32
    widths: np.ndarray  # int32
    ratios: np.ndarray  # float64
    crcs: np.ndarray  # uint32

    @classmethod
    def from_json(cls, images: list[dict[str, Any]]) -> CacheIndex:
        def column(key: str, dtype: Any) -> np.ndarray:
            return np.array([entry[key] for entry in images], dtype=dtype)

        return cls(
            ids=tuple(entry["id"] for entry in images),
            offsets=column("offset", np.int64),
            heights=column("height", np.int32),
            widths=column("width", np.int32),
            ratios=column("ratio", np.float64),
            crcs=column("crc32", np.uint32),
        )


class DiskImages:
    """The images of a built cache folder, read one at a time (see the module's docstring).

    The file descriptor is opened lazily, once per process: a DataLoader worker forked after
    the job opened it opens its own (and a spawned one gets none with its pickled copy), so no
    descriptor is ever used by a process that did not open it.
    """

    def __init__(self, folder: Path, index: CacheIndex) -> None:
        self.folder = folder
        self.index = index
        self._fd: int | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.index.ids)

    def __getstate__(self) -> dict[str, Any]:
        # Spawned workers get a pickled copy: descriptors do not travel.
        return {**self.__dict__, "_fd": None, "_pid": None}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.folder / DATA_FILE, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def image(self, index: int) -> tuple[np.ndarray, float]:
        height, width = int(self.index.heights[index]), int(self.index.widths[index])
        image = np.empty((height, width, 3), dtype=np.uint8)
        read = os.preadv(self._descriptor(), [image], int(self.index.offsets[index]))
        if read != image.nbytes or zlib.crc32(image) != int(self.index.crcs[index]):
            invalidate(self.folder)
            raise CacheDamaged(
                f"{self.folder}: image {self.index.ids[index]!r} does not match its checksum; "
                "the cache is marked stale and the next job rebuilds it"
            )
        return image, float(self.index.ratios[index])


# --------------------------------------------------------------------------- building


def _source_entry(record: ImageRecord) -> dict[str, Any]:
    """What a cached image was made from: when any of it changes, the cache is stale."""
    stat = record.path.stat()
    return {"path": str(record.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _write(folder: Path, records: Sequence[ImageRecord], img_size: int, split: str) -> None:
    """Build the cache in ``folder`` (the caller holds its lock)."""
    # The index goes first: from here until the new one is in place the folder is incomplete.
    invalidate(folder)
    entries, offset = [], 0
    with atomic.atomic_open(folder / DATA_FILE, "wb") as handle:
        for record in records:
            source = _source_entry(record)  # before decoding: an edit during it reads stale
            image, ratio = decode(record, img_size)
            data = np.ascontiguousarray(image)
            handle.write(memoryview(data).cast("B"))
            height, width = data.shape[:2]
            crc = zlib.crc32(data)
            entries.append(
                {"id": record.id, **source, "offset": offset, "height": height, "width": width}
                | {"ratio": ratio, "crc32": crc}
            )
            offset += data.nbytes
    index = {"format": FORMAT_VERSION, "split": split, "img_size": img_size}
    atomic.write_json(folder / INDEX_FILE, index | {"data_bytes": offset, "images": entries})


def invalidate(folder: Path) -> None:
    """Mark the cache in ``folder`` incomplete: the next job to open it rebuilds it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(folder / INDEX_FILE)


@contextlib.contextmanager
def _locked(folder: Path, mode: int) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a") as lock:
        fcntl.flock(lock, mode)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def build_image_cache(
    records: Sequence[ImageRecord], img_size: int, split: str, folder: str | Path
) -> Path:
    """Decode every image of ``records`` into a cache in ``folder``; return the folder."""
    folder = Path(folder)
    with _locked(folder, fcntl.LOCK_EX):
        _write(folder, records, img_size, split)
    log.info("%s: %d %s images cached at %d px", folder, len(records), split, img_size)
    return folder


def build_from_manifest(
    manifest_path: str | Path, split: str, img_size: int, folder: str | Path
) -> Path:
    """The image_cache rule: the cache of ``split`` of a converted dataset at ``img_size``."""
    records = DatasetManifest.load(manifest_path).records(split)
    return build_image_cache(records, img_size, split, folder)


# --------------------------------------------------------------------------- opening


def _read_index(folder: Path) -> dict[str, Any] | None:
    try:
        return json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _stale_reason(
    folder: Path,
    index: dict[str, Any] | None,
    records: Sequence[ImageRecord],
    img_size: int,
    split: str,
) -> str | None:
    """Why the cache ``index`` of ``folder`` cannot serve ``records`` (None: it can)."""
    if index is None:
        return "it is incomplete (no cache.json: a build was stopped, or a damaged image seen)"
    expected = {"format": FORMAT_VERSION, "split": split, "img_size": img_size}
    found = {key: index.get(key) for key in expected}
    if found != expected:
        return f"it was built for {found}, not {expected}"
    try:
        data_bytes = (folder / DATA_FILE).stat().st_size
    except FileNotFoundError:
        data_bytes = 0
    if data_bytes != index["data_bytes"]:
        return f"{DATA_FILE} holds {data_bytes} bytes, not {index['data_bytes']} (truncated?)"
    cached = index["images"]
    if [entry["id"] for entry in cached] != [record.id for record in records]:
        return f"the split's images differ ({len(cached)} cached, {len(records)} now)"
    for entry, record in zip(cached, records, strict=True):
        try:
            source = _source_entry(record)
        except FileNotFoundError:
            return f"{record.path} no longer exists"
        if {key: entry[key] for key in source} != source:
            return f"{record.path} changed since it was cached"
    return None


def _valid_index(
    folder: Path, records: Sequence[ImageRecord], img_size: int, split: str, lock: int
) -> tuple[dict[str, Any] | None, str | None]:
    """The cache's index if it serves ``records``, else the reason it does not."""
    with _locked(folder, lock):
        index = _read_index(folder)
        reason = _stale_reason(folder, index, records, img_size, split)
    return (index if reason is None else None), reason


def open_image_cache(
    folder: str | Path, records: Sequence[ImageRecord], img_size: int, split: str
) -> DiskImages:
    """The cache in ``folder`` for ``records``, rebuilt first (with a warning) if it is
    incomplete, stale or truncated: a job never reads images that are not its sources'."""
    folder = Path(folder)
    index, reason = _valid_index(folder, records, img_size, split, fcntl.LOCK_SH)
    if index is None:
        with _locked(folder, fcntl.LOCK_EX):
            # Another job may have rebuilt it while this one waited for the lock.
            index = _read_index(folder)
            reason = _stale_reason(folder, index, records, img_size, split)
            if reason is not None:
                log.warning("%s: rebuilding the image cache: %s", folder, reason)
                _write(folder, records, img_size, split)
                index = _read_index(folder)
    assert index is not None  # written just now under the lock
    return DiskImages(folder, CacheIndex.from_json(index["images"]))
