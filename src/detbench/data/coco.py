"""Fetch COCO 2017 (train or val) and convert it to the project's YOLO-label layout.

Output inside ``out_dir``::

    JPEGImages/<file_name>      the images, extracted from the official zip
    labels/<stem>.txt           one ``class cx cy w h`` line per box (normalised, 6 decimals)
    manifest.json               image list, per-class counts, what was skipped or changed

Boxes are converted faithfully but defensively: crowd regions (``iscrowd=1``) are skipped and
counted, boxes are clipped to the image (counted), and boxes with no area left are dropped and
listed, so any difference from the raw annotations is visible in the manifest.

Only what is needed is downloaded when the server answers HTTP range requests (the official one
does): ``instances_<split>.json`` out of the annotations zip, and with ``max_images`` only the
chosen images out of ``<split>.zip`` (see :mod:`detbench.data.remote_zip`). Otherwise, and for a
whole split, the archives are downloaded whole, as they are when already in the cache.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import zipfile
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from tqdm import tqdm

from detbench.atomic import atomic_directory
from detbench.data.download import RangesUnsupported, download
from detbench.data.remote_zip import RemoteZip, Retry
from detbench.errors import DetbenchError

logger = logging.getLogger(__name__)

COCO_BASE_URL = "http://images.cocodataset.org"
SPLITS = ("train2017", "val2017")
ANNOTATIONS_ARCHIVE = "annotations/annotations_trainval2017.zip"

# The 80 detection classes in the order of their official category ids (1..90, with gaps).
COCO_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)  # fmt: skip
# Official category ids, parallel to COCO_CLASSES. The ids missing from 1..90 (12, 26, 29, 30,
# 45, 66, 68, 69, 71, 83) were defined in the paper's 91 categories but never annotated.
COCO_CATEGORY_IDS: tuple[int, ...] = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54,
    55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81,
    82, 84, 85, 86, 87, 88, 89, 90,
)  # fmt: skip
COCO_ID_TO_INDEX: dict[int, int] = {cid: index for index, cid in enumerate(COCO_CATEGORY_IDS)}

# (bytes, sha256) of the official archives, checked only when downloading from the official host
# (a test server or a re-packed mirror serves other bytes). COCO publishes no checksums itself:
# the sha256 values are those pinned by torchvision (torchvision/prototype/datasets/_builtin/
# coco.py); the sizes are the Content-Length served by images.cocodataset.org as recorded in
# public download logs (e.g. keras-io's creating_tfrecords example) and an S3 listing of the
# fast-ai-coco mirror.
OFFICIAL_ARCHIVES: dict[str, tuple[int, str]] = {
    "zips/train2017.zip": (
        19_336_861_798,
        "69a8bb58ea5f8f99d24875f21416de2e9ded3178e903f1f7603e283b9e06d929",
    ),
    "zips/val2017.zip": (
        815_585_330,
        "4f7e2ccb2866ec5041993c9cf2a952bbed69647b115d0f74da7ce8f4bef82f05",
    ),
    ANNOTATIONS_ARCHIVE: (
        252_907_541,
        "113a836d90195ee1f884e704da6304dfaaecff1f023f49b6ca93c4aaae470268",
    ),
}
_OFFICIAL_HOSTS = ("images.cocodataset.org", "s3.amazonaws.com/images.cocodataset.org")


@dataclass
class CocoImage:
    id: int
    file: str
    width: int
    height: int
    labels: list[str] = field(default_factory=list)


@dataclass
class CocoConversion:
    images: list[CocoImage]
    boxes_per_class: dict[str, int]
    dropped: list[dict[str, Any]]
    crowd_skipped: int = 0
    clipped: int = 0


def fetch_coco(
    out_dir: Path,
    *,
    splits: Sequence[str] = ("val2017",),
    max_images: int | None = None,
    base_url: str = COCO_BASE_URL,
    cache_dir: Path | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    progress: bool | None = None,
) -> Path:
    """Download COCO ``splits`` and write images, YOLO labels and ``manifest.json`` (one entry
    per split) to ``out_dir``.

    ``max_images`` keeps the first N images by id of each split, and only those are downloaded
    (by range; the whole archive when the server cannot send ranges). Downloads are cached in
    ``cache_dir`` (default ``<out_dir's parent>/.download``). ``out_dir`` is replaced atomically
    at the end. COCO's image ids, and so its file names, are unique across its splits.
    """
    splits = list(dict.fromkeys(splits))
    for split in splits:
        if split not in SPLITS:
            raise DetbenchError(f"split: expected one of {', '.join(SPLITS)}, got {split!r}")
    if max_images is not None and max_images < 1:
        raise DetbenchError(f"max_images: expected a positive number, got {max_images}")
    out_dir = Path(out_dir)
    cache = Path(cache_dir) if cache_dir is not None else out_dir.parent / ".download"
    source = _Source(base_url.rstrip("/"), cache, Retry(retries, backoff_s), progress)

    conversions = {}
    for split in splits:
        instances, where = _load_instances(source, split)
        conversions[split] = convert_instances(instances, max_images=max_images, where=where)

    with atomic_directory(out_dir) as tmp:
        for split, conversion in conversions.items():
            files = [image.file for image in conversion.images]
            subset = max_images is not None
            _fetch_images(source, split, files, tmp / "JPEGImages", subset=subset)
            _write_labels(tmp / "labels", conversion.images)
        image_urls = [source.url(f"zips/{split}.zip") for split in conversions]
        manifest = _manifest(conversions, out_dir.resolve() / "JPEGImages", image_urls)
        text = json.dumps(manifest, indent=2, allow_nan=False) + "\n"
        (tmp / "manifest.json").write_text(text, encoding="utf-8")
    return out_dir


@dataclass(frozen=True)
class _Source:
    """Where the COCO archives come from, where they are cached and how hard to try."""

    base: str
    cache: Path
    retry: Retry
    progress: bool | None

    def url(self, archive: str) -> str:
        return f"{self.base}/{archive}"

    def cached(self, archive: str) -> Path:
        """Where the whole archive is, once downloaded."""
        return self.cache / PurePosixPath(archive).name

    def whole(self, archive: str) -> Path:
        size, sha256 = official_pins(self.base, archive)
        return download(
            self.url(archive),
            self.cached(archive),
            size=size,
            sha256=sha256,
            progress=self.progress,
            **self.retry.as_kwargs(),
        )

    def members(self, archive: str, wanted: dict[str, Path]) -> bool:
        """Fetch members of ``archive`` (name -> destination) by range.

        False, and a warning in the log, when the server does not answer range requests.
        """
        url = self.url(archive)
        expected_size = official_pins(self.base, archive)[0]
        show = sys.stderr.isatty() if self.progress is None else self.progress
        try:
            remote = RemoteZip.open(url, retry=self.retry, expected_size=expected_size)
            total = len(remote.members)
            logger.info("fetching %d of the %d files in %s by range", len(wanted), total, url)
            for name, dest in tqdm(wanted.items(), unit="file", disable=not show):
                remote.extract(name, dest)
        except RangesUnsupported as error:
            logger.warning("%s; downloading the whole archive instead", error)
            return False
        return True


def _load_instances(source: _Source, split: str) -> tuple[dict[str, Any], str]:
    """The instances JSON of ``split`` and the name of where it came from (for errors).

    Fetched alone by range into the cache when the server can, not the whole 253 MB archive.
    """
    member = f"annotations/instances_{split}.json"
    whole = source.cached(ANNOTATIONS_ARCHIVE)
    alone = source.cache / PurePosixPath(member).name
    if not whole.exists() and (
        alone.exists() or source.members(ANNOTATIONS_ARCHIVE, {member: alone})
    ):
        return _read_json_file(alone), str(alone)
    archive = source.whole(ANNOTATIONS_ARCHIVE)
    return _read_json_member(archive, member), f"{archive}:{member}"


def _fetch_images(
    source: _Source, split: str, files: list[str], image_dir: Path, *, subset: bool
) -> None:
    """Put ``files`` of ``split`` into ``image_dir``: by range for a subset, else from the zip.

    Images fetched by range stay in the cache (``<cache>/<split>/``), so a run cut short, or one
    with a larger ``max_images``, fetches only the images it does not have yet.
    """
    archive = f"zips/{split}.zip"
    if subset and not source.cached(archive).exists():
        member_dir = source.cache / split
        missing = {f"{split}/{n}": member_dir / n for n in files if not (member_dir / n).exists()}
        if not missing or source.members(archive, missing):
            image_dir.mkdir(parents=True, exist_ok=True)
            for name in files:
                shutil.copyfile(member_dir / name, image_dir / name)
            return
    _extract_images(source.whole(archive), split, files, image_dir)


def official_pins(base_url: str, archive: str) -> tuple[int | None, str | None]:
    """(size, sha256) to verify ``archive`` with, or (None, None) for a non-official host."""
    parsed = urlparse(base_url.rstrip("/"))
    if f"{parsed.netloc}{parsed.path}" in _OFFICIAL_HOSTS and archive in OFFICIAL_ARCHIVES:
        return OFFICIAL_ARCHIVES[archive]
    return None, None


def _bad_archive(archive: Path, error: BaseException) -> DetbenchError:
    """Delete a corrupt cached archive (so the next call downloads it again) and describe it."""
    archive.unlink(missing_ok=True)
    return DetbenchError(
        f"{archive}: not a valid zip archive ({error}); deleted it, run again to re-download"
    )


def _read_json_member(archive: Path, member: str) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                with zf.open(member) as handle:
                    data = json.load(handle)
            except KeyError:
                raise DetbenchError(f"{archive}: {member} not found in the archive") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise _bad_archive(archive, error) from error
    except json.JSONDecodeError as error:
        raise DetbenchError(f"{archive}: {member} is not valid JSON ({error})") from error
    return _instances_object(data, f"{archive}: {member}")


def _read_json_file(path: Path) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as error:
        raise DetbenchError(f"{path}: not valid JSON ({error})") from error
    return _instances_object(data, str(path))


def _instances_object(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise DetbenchError(f"{where} is not a COCO instances file (not an object)")
    return data


def convert_instances(
    instances: dict[str, Any], *, max_images: int | None = None, where: str = "instances"
) -> CocoConversion:
    """Turn a COCO instances dict into YOLO label lines plus the bookkeeping for the manifest.

    ``where`` names the source in error messages.
    """
    _check_categories(instances.get("categories", []), where)
    images = sorted(
        (_parse_image(raw, where) for raw in instances.get("images", [])),
        key=lambda image: image.id,
    )
    if max_images is not None:
        images = images[:max_images]
    by_id = {image.id: image for image in images}
    all_ids = {raw.get("id") for raw in instances.get("images", []) if isinstance(raw, dict)}
    conversion = CocoConversion(images, dict.fromkeys(COCO_CLASSES, 0), [])
    for ann in instances.get("annotations", []):
        image_id = ann.get("image_id")
        if image_id not in all_ids:
            raise DetbenchError(f"{where}: annotation {ann.get('id')} refers to unknown image")
        image = by_id.get(image_id)
        if image is not None:  # None: image left out by max_images
            _convert_box(ann, image, conversion, where)
    return conversion


def _check_categories(categories: Iterable[dict[str, Any]], where: str) -> None:
    """The class table above must agree with the file, or every label would be silently wrong."""
    for category in categories:
        cid, name = category.get("id"), category.get("name")
        index = COCO_ID_TO_INDEX.get(cid) if isinstance(cid, int) else None
        if index is None or COCO_CLASSES[index] != name:
            raise DetbenchError(f"{where}: category {cid} {name!r} does not match the COCO table")


def _parse_image(raw: Any, where: str) -> CocoImage:
    try:
        image = CocoImage(
            int(raw["id"]), str(raw["file_name"]), int(raw["width"]), int(raw["height"])
        )
    except (KeyError, TypeError, ValueError) as error:
        raise DetbenchError(f"{where}: malformed image entry {raw!r:.80} ({error})") from None
    name = image.file
    # The name becomes a path in out_dir: a bare file name only (no folders, no '..').
    if PurePosixPath(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise DetbenchError(f"{where}: image {image.id} has an unsafe file_name {name!r}")
    if image.width <= 0 or image.height <= 0:
        raise DetbenchError(f"{where}: image {image.id} has size {image.width}x{image.height}")
    return image


def _convert_box(ann: dict[str, Any], image: CocoImage, conv: CocoConversion, where: str) -> None:
    if ann.get("iscrowd", 0):
        conv.crowd_skipped += 1  # crowd regions are not single objects; detectors skip them
        return
    cid = ann.get("category_id")
    index = COCO_ID_TO_INDEX.get(cid) if isinstance(cid, int) else None
    if index is None:
        raise DetbenchError(f"{where}: annotation {ann.get('id')} has unknown category {cid!r}")
    try:
        x, y, w, h = (float(v) for v in ann["bbox"])
    except (KeyError, TypeError, ValueError):
        raise DetbenchError(f"{where}: annotation {ann.get('id')} has a malformed bbox") from None
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(image.width)), min(y + h, float(image.height))
    if x1 <= x0 or y1 <= y0:
        reason = "zero area" if w <= 0 or h <= 0 else "outside the image"
        # "file", "class", "reason" as in the VOC manifests; the rest locates the raw box.
        conv.dropped.append(
            {
                "file": image.file,
                "class": COCO_CLASSES[index],
                "reason": reason,
                "annotation_id": ann.get("id"),
                "bbox": [x, y, w, h],
            }
        )
        return
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        conv.clipped += 1
    cx, cy = (x0 + x1) / 2 / image.width, (y0 + y1) / 2 / image.height
    bw, bh = (x1 - x0) / image.width, (y1 - y0) / image.height
    image.labels.append(f"{index} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}")
    conv.boxes_per_class[COCO_CLASSES[index]] += 1


def _extract_images(archive: Path, split: str, files: Iterable[str], image_dir: Path) -> None:
    """Copy only the wanted images out of the (possibly 19 GB) zip."""
    image_dir.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for name in files:
                member = f"{split}/{name}"
                try:
                    info = zf.getinfo(member)
                except KeyError:
                    raise DetbenchError(f"{archive}: {member} not found in the archive") from None
                with zf.open(info) as source, open(image_dir / name, "wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
    except (zipfile.BadZipFile, zlib.error, EOFError) as error:
        raise _bad_archive(archive, error) from error


def _write_labels(label_dir: Path, images: list[CocoImage]) -> None:
    label_dir.mkdir(parents=True, exist_ok=True)
    for image in images:
        # An empty file is YOLO's "no objects here", which differs from "not labelled".
        text = "".join(line + "\n" for line in image.labels)
        (label_dir / f"{PurePosixPath(image.file).stem}.txt").write_text(text, encoding="utf-8")


def _manifest(
    conversions: dict[str, CocoConversion], image_dir: Path, image_urls: list[str]
) -> dict[str, Any]:
    """One manifest for the fetched splits; with one split exactly what it always was."""
    return {
        "dataset": "coco-" + "+".join(conversions),
        "class_names": list(COCO_CLASSES),
        "image_dir": str(image_dir),
        "label_dir": "labels",
        "splits": {
            split: [
                {
                    "id": PurePosixPath(image.file).stem,
                    "file": image.file,
                    "width": image.width,
                    "height": image.height,
                    "boxes": len(image.labels),
                }
                for image in conv.images
            ]
            for split, conv in conversions.items()
        },
        "counts": {
            split: {"images": len(conv.images), "boxes": conv.boxes_per_class}
            for split, conv in conversions.items()
        },
        "dropped_boxes": [box for conv in conversions.values() for box in conv.dropped],
        "crowd_boxes_skipped": sum(conv.crowd_skipped for conv in conversions.values()),
        "clipped_boxes": sum(conv.clipped for conv in conversions.values()),
        # The image archive (one split) or archives (several) the images came out of.
        "source": image_urls[0] if len(image_urls) == 1 else image_urls,
    }
