"""A Pascal VOC dataset uploaded as a zip for a training run: unpacked safely, then checked as
the workflow's convert stage checks any local source, before the run is queued.

Refused, with one line each: a member whose path leaves the folder (absolute, ``..``, a drive
letter) or is a link, an encrypted member, more members than allowed, more bytes unpacked than
allowed (counted while unpacking, so a zip that lies about its sizes is caught too), a member
packed more tightly than a real image or annotation is (a zip bomb), and a dataset the VOC
conversion refuses (an image that does not decode, a malformed annotation, a missing split).
"""

from __future__ import annotations

import dataclasses
import io
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from detbench.data.voc import (
    ANNOTATION_DIR,
    IMAGE_DIR,
    IMAGESET_DIR,
    check_voc_layout,
    convert_voc_to_yolo,
    parse_voc_annotation,
)
from detbench.errors import DetbenchError

MIB = 1024 * 1024
# JPEG and PNG files barely compress; XML annotations compress ~10x. A member packed far
# tighter than that is a zip bomb, not a dataset.
MAX_COMPRESSION_RATIO = 200
_CHUNK = 1 << 20


class UploadRejected(DetbenchError):
    """The uploaded dataset is refused; the message is one line saying why."""


@dataclasses.dataclass(frozen=True)
class ZipLimits:
    max_members: int = 20_000
    max_unpacked_bytes: int = 2048 * MIB


@dataclasses.dataclass(frozen=True)
class UploadedDataset:
    """A checked VOC dataset on disk and what the run's config needs of it."""

    root: Path
    classes: tuple[str, ...]
    train_split: str
    eval_split: str
    images: int


def safe_member_path(name: str) -> PurePosixPath:
    """The member's path inside the target folder, or UploadRejected when it would leave it."""
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise UploadRejected(f"zip member {name!r}: absolute path")
    if ".." in path.parts:
        raise UploadRejected(f"zip member {name!r}: path leaves the folder ('..')")
    return path


def _check_members(archive: zipfile.ZipFile, limits: ZipLimits) -> list[zipfile.ZipInfo]:
    members = archive.infolist()
    if len(members) > limits.max_members:
        raise UploadRejected(f"zip has {len(members):,} members, at most {limits.max_members:,}")
    declared = 0
    for member in members:
        safe_member_path(member.filename)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UploadRejected(f"zip member {member.filename!r}: a link, not a file")
        if member.flag_bits & 0x1:
            raise UploadRejected(f"zip member {member.filename!r}: encrypted")
        ratio = member.file_size / max(member.compress_size, 1)
        if member.file_size > _CHUNK and ratio > MAX_COMPRESSION_RATIO:
            raise UploadRejected(
                f"zip member {member.filename!r}: unpacks {ratio:.0f}x its packed size "
                f"(a zip bomb?); at most {MAX_COMPRESSION_RATIO}x"
            )
        declared += member.file_size
    if declared > limits.max_unpacked_bytes:
        raise UploadRejected(
            f"zip unpacks to {declared / MIB:,.1f} MiB, at most "
            f"{limits.max_unpacked_bytes / MIB:,.0f} MiB"
        )
    return members


def unpack_zip(data: bytes, target: Path, limits: ZipLimits) -> None:
    """Unpack ``data`` into ``target`` (created), within ``limits``."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise UploadRejected("not a zip file") from None
    with archive:
        members = _check_members(archive, limits)
        target.mkdir(parents=True, exist_ok=True)
        written = 0
        for member in members:
            destination = target.joinpath(*safe_member_path(member.filename).parts)
            if member.is_dir():
                destination.mkdir(parents=True, exist_ok=True)
                continue
            destination.parent.mkdir(parents=True, exist_ok=True)
            # Counted while unpacking: the sizes in the zip's directory are the sender's word.
            try:
                with archive.open(member) as source, destination.open("wb") as out:
                    while chunk := source.read(_CHUNK):
                        written += len(chunk)
                        if written > limits.max_unpacked_bytes:
                            raise UploadRejected(
                                f"zip unpacks to more than "
                                f"{limits.max_unpacked_bytes / MIB:,.0f} MiB"
                            )
                        out.write(chunk)
            except (zipfile.BadZipFile, EOFError, NotImplementedError) as error:
                raise UploadRejected(f"zip member {member.filename!r}: {error}") from None


def find_voc_root(folder: Path) -> Path:
    """The folder holding JPEGImages/, Annotations/ and ImageSets/Main/: the zip's top level or
    the one folder in it (a zipped dataset folder)."""
    candidates = [folder, *(p for p in sorted(folder.iterdir()) if p.is_dir())]
    for candidate in candidates:
        if (candidate / ANNOTATION_DIR).is_dir() and (candidate / IMAGE_DIR).is_dir():
            return candidate
    raise UploadRejected(
        f"no Pascal VOC dataset in the zip: expected {IMAGE_DIR}/, {ANNOTATION_DIR}/ and "
        f"{IMAGESET_DIR}/ at its top level or in one folder"
    )


def dataset_classes(root: Path) -> tuple[str, ...]:
    """Class names in the annotations, sorted (files that do not parse are left to the
    conversion check, which names them)."""
    names: set[str] = set()
    for xml in sorted((root / ANNOTATION_DIR).glob("*.xml")):
        try:
            names.update(obj.name for obj in parse_voc_annotation(xml).objects)
        except DetbenchError:
            continue
    if not names:
        raise UploadRejected(f"no <object> with a class name in {ANNOTATION_DIR}/*.xml")
    return tuple(sorted(names))


def one_line(error: DetbenchError, folder: Path) -> str:
    """A conversion error (a header and one line per bad file) as one line, naming files
    inside the zip rather than on the server."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    # The header's advice (dataset.on_bad_image) is for a config file, not for an upload.
    text = lines[0].split("; fix them", 1)[0].rstrip(":")
    if len(lines) > 1:
        text += f": {lines[1]}"
    if len(lines) > 2:
        text += f"; and {len(lines) - 2} more"
    return text.replace(f"{folder}/", "").replace(str(folder), "the zip")


def check_uploaded_dataset(root: Path, train_split: str, eval_split: str) -> UploadedDataset:
    """Run the workflow's own checks on an unpacked dataset: the VOC layout, then the full
    conversion (every image decoded, every annotation parsed) into a scratch folder."""
    try:
        check_voc_layout(root)
        classes = dataset_classes(root)
        for split in (train_split, eval_split):
            if not (root / IMAGESET_DIR / f"{split}.txt").is_file():
                raise UploadRejected(f"{IMAGESET_DIR}/{split}.txt: missing (the {split} split)")
        with tempfile.TemporaryDirectory(prefix="detbench-check-") as scratch:
            manifest = convert_voc_to_yolo(
                root,
                Path(scratch),
                class_names=list(classes),
                splits=[train_split, eval_split],
                dataset_name="upload",
            )
    except UploadRejected:
        raise
    except DetbenchError as error:
        raise UploadRejected(one_line(error, root)) from None
    images = sum(int(counts["images"]) for counts in manifest["counts"].values())
    return UploadedDataset(root, classes, train_split, eval_split, images)


def receive_voc_zip(
    data: bytes, target: Path, limits: ZipLimits, train_split: str, eval_split: str
) -> UploadedDataset:
    """Unpack and check an uploaded VOC zip into ``target``; nothing is left there when it is
    refused."""
    try:
        unpack_zip(data, target, limits)
        return check_uploaded_dataset(find_voc_root(target), train_split, eval_split)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
