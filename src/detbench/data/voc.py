"""Pascal VOC datasets: import a VOC directory, convert its XML boxes to YOLO labels.

Coordinate convention: VOC boxes are 1-based *inclusive* pixel indices, so a box
``xmin=1 .. xmax=640`` covers all 640 columns of a 640 px wide image. In continuous 0-based
pixel-edge coordinates that is ``x0 = xmin - 1``, ``x1 = xmax``. Reading VOC numbers as 0-based
instead would push 545 BCCD boxes one pixel past the image edge.

Degenerate boxes are judged on the XML's own corners (``xmax == xmin`` or ``ymax == ymin``):
under the inclusive reading BCCD's two zero-size points (504,337)-(504,337) would become 1x1 px
boxes, but they are clicks without a drag in the annotation tool, not 1-px cells, so they are
dropped (and listed in the manifest). An inverted box (``xmax < xmin`` or ``ymax < ymin``) makes
its image bad (``dataset.on_bad_image``): an error naming the file and the box, or under
``skip`` the image left out and listed.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from xml.etree import ElementTree as ET

import defusedxml
import defusedxml.ElementTree
import numpy as np

from detbench.atomic import atomic_directory, write_json
from detbench.data.integrity import decode_image_file, record_files
from detbench.errors import DetbenchError, FileProblem

IMAGE_DIR = "JPEGImages"
ANNOTATION_DIR = "Annotations"
IMAGESET_DIR = Path("ImageSets") / "Main"
# What the download stage copies from a local VOC dataset.
COPIED_SUBDIRS = (IMAGE_DIR, ANNOTATION_DIR, "ImageSets")
LABEL_DIR = "labels"
MANIFEST_NAME = "manifest.json"

# Tried in this order when looking up the image for a stem (VOC itself only uses .jpg).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")
# Copied along with the data when importing, so the licence travels with the images.
_METADATA_PREFIXES = ("LICENSE", "LICENCE", "README", "COPYING")


class VocObject(NamedTuple):
    """One ``<object>`` as written in the XML (coordinates 1-based inclusive, unclipped)."""

    name: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    truncated: int
    difficult: int


@dataclass(frozen=True)
class VocAnnotation:
    """One parsed VOC XML. ``width``/``height`` are 0 when the XML does not give a size."""

    filename: str
    width: int
    height: int
    objects: list[VocObject]


@dataclass(frozen=True)
class DroppedBox:
    file: str  # annotation path relative to the dataset root
    class_name: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "class": self.class_name, "reason": self.reason}


@dataclass(frozen=True)
class BadFile:
    """An image or annotation left out of the dataset (``dataset.on_bad_image: skip``)."""

    file: str  # relative to the dataset root
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "problem": self.problem}


BAD_IMAGE_POLICIES = ("error", "skip")
# An error lists this many bad files, then how many more there are.
MAX_LISTED_BAD_FILES = 20


# --- the VOC layout -----------------------------------------------------------------------


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DetbenchError(f"{path}: {what} does not exist")


def read_image_set(path: Path) -> list[str]:
    """Stems listed in an ``ImageSets/Main/*.txt`` file, in order.

    Only the first column counts: VOC's per-class files (``cat_train.txt``) add a ``1``/``-1``.
    """
    if not path.is_file():
        raise DetbenchError(f"{path}: image set file does not exist")
    stems = []
    for line in path.read_text(encoding="utf-8").splitlines():
        fields = line.split()
        if fields:
            stems.append(fields[0])
    return stems


def _index_images(image_dir: Path) -> dict[str, str]:
    """Map stem -> image file name, preferring extensions in IMAGE_EXTENSIONS order."""
    names = {p.name for p in image_dir.iterdir() if p.is_file()}
    index: dict[str, str] = {}
    for ext in reversed(IMAGE_EXTENSIONS):  # reversed: earlier extensions overwrite later ones
        for name in names:
            if name.endswith(ext):
                index[name[: -len(ext)]] = name
    return index


def _check_listed_stems(
    root: Path, split_file: Path, stems: Sequence[str], images: dict[str, str]
) -> None:
    for stem in stems:
        if stem not in images:
            raise DetbenchError(
                f"{split_file}: lists {stem!r} but {IMAGE_DIR}/{stem}.jpg is missing"
            )
        if not (root / ANNOTATION_DIR / f"{stem}.xml").is_file():
            raise DetbenchError(
                f"{split_file}: lists {stem!r} but {ANNOTATION_DIR}/{stem}.xml is missing"
            )


def check_voc_layout(root: Path) -> None:
    """Raise DetbenchError unless ``root`` is a complete VOC dataset (see import_voc_directory)."""
    _require_dir(root, "dataset directory")
    for sub in (IMAGE_DIR, ANNOTATION_DIR, str(IMAGESET_DIR)):
        _require_dir(root / sub, "dataset sub-folder")
    if not (root / IMAGESET_DIR / "train.txt").is_file():
        raise DetbenchError(f"{root / IMAGESET_DIR / 'train.txt'}: image set file does not exist")
    images = _index_images(root / IMAGE_DIR)
    for split_file in sorted((root / IMAGESET_DIR).glob("*.txt")):
        _check_listed_stems(root, split_file, read_image_set(split_file), images)


def import_voc_directory(source: Path, out_dir: Path) -> None:
    """Check a VOC dataset and copy it to ``out_dir`` (replaced whole, atomically).

    Copies ``JPEGImages/``, ``Annotations/``, ``ImageSets/`` and any LICENSE/README files.
    Requires ``ImageSets/Main/train.txt``; every stem in every ``ImageSets/Main/*.txt`` must
    have an image and an XML.
    """
    source, out_dir = Path(source), Path(out_dir)
    check_voc_layout(source)
    src, dst = source.resolve(), out_dir.resolve()
    # atomic_directory deletes out_dir before the rename: it must not contain the source.
    if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
        raise DetbenchError(f"{out_dir}: output directory overlaps the source dataset {source}")
    with atomic_directory(out_dir) as tmp:
        for sub in COPIED_SUBDIRS:
            shutil.copytree(source / sub, tmp / sub)
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name.upper().startswith(_METADATA_PREFIXES):
                shutil.copy2(path, tmp / path.name)


# --- XML parsing --------------------------------------------------------------------------


_BOX_TAGS = ("xmin", "ymin", "xmax", "ymax")


def _text(element: ET.Element, tag: str) -> str | None:
    child = element.find(tag)
    if child is None or child.text is None or not child.text.strip():
        return None
    return child.text.strip()


def _number(xml_path: Path, element: ET.Element, tag: str, where: str) -> float:
    text = _text(element, tag)
    if text is None:
        raise FileProblem(xml_path, f"{where}<{tag}> is missing or empty")
    try:
        value = float(text)
    except ValueError:
        raise FileProblem(xml_path, f"{where}<{tag}> is not a number: {text!r}") from None
    if not math.isfinite(value):
        raise FileProblem(xml_path, f"{where}<{tag}> is not finite: {text!r}")
    return value


def _flag(xml_path: Path, element: ET.Element, tag: str, where: str) -> int:
    # truncated/difficult are optional in VOC (many tools omit them): absent means 0.
    if _text(element, tag) is None:
        return 0
    value = _number(xml_path, element, tag, where)
    if value not in (0, 1):
        raise FileProblem(xml_path, f"{where}<{tag}> must be 0 or 1, got {value:g}")
    return int(value)


def _size(xml_path: Path, root: ET.Element) -> tuple[int, int]:
    size = root.find("size")
    if size is None:
        return 0, 0  # unknown: the converter reads it from the image
    dims = []
    for tag in ("width", "height"):
        value = _number(xml_path, size, tag, "<size>")
        if value < 0 or value != int(value):
            raise FileProblem(xml_path, f"<size><{tag}> must be a whole number >= 0")
        dims.append(int(value))
    return dims[0], dims[1]


def parse_voc_annotation(xml_path: Path) -> VocAnnotation:
    """Parse one VOC XML; raise DetbenchError naming the file and element on any problem.

    A missing ``<size>`` (or a 0 in it) gives width/height 0 = unknown; a ``<size>`` whose
    width/height element is missing or not a number is an error.
    """
    xml_path = Path(xml_path)
    try:
        # defusedxml refuses any DTD before expat expands an entity, so an entity bomb or an
        # external entity is refused here whatever the machine's libexpat guards against.
        root = defusedxml.ElementTree.parse(xml_path, forbid_dtd=True).getroot()
    except defusedxml.DefusedXmlException:
        raise FileProblem(
            xml_path,
            "refused: the XML declares a DTD (<!DOCTYPE ...>), whose entities can expand "
            "without bound or read other files; VOC annotations have none",
        ) from None
    except FileNotFoundError:
        raise FileProblem(xml_path, "annotation file does not exist") from None
    except ET.ParseError as exc:
        detail = " ".join(str(exc).split())  # keep the message on one line
        raise FileProblem(xml_path, f"not well-formed XML ({detail})") from None
    if root.tag != "annotation":
        raise FileProblem(xml_path, f"root element is <{root.tag}>, expected <annotation>")

    width, height = _size(xml_path, root)
    objects = []
    for number, element in enumerate(root.findall("object"), start=1):
        where = f"<object> #{number} "
        name = _text(element, "name")
        if name is None:
            raise FileProblem(xml_path, f"{where}<name> is missing or empty")
        box = element.find("bndbox")
        if box is None:
            raise FileProblem(xml_path, f"{where}({name}) has no <bndbox>")
        coords = [_number(xml_path, box, tag, f"{where}<bndbox>") for tag in _BOX_TAGS]
        truncated = _flag(xml_path, element, "truncated", where)
        difficult = _flag(xml_path, element, "difficult", where)
        objects.append(VocObject(name, *coords, truncated, difficult))
    return VocAnnotation(_text(root, "filename") or "", width, height, objects)


# --- conversion ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _ConvertedImage:
    entry: dict[str, Any]  # the manifest's per-image record
    lines: list[str]  # YOLO label lines
    class_ids: list[int]
    dropped: list[DroppedBox]
    clipped: int


def voc_box_to_edges(obj: VocObject) -> tuple[float, float, float, float]:
    """1-based inclusive VOC box -> continuous 0-based pixel edges (x0, y0, x1, y1)."""
    return obj.xmin - 1, obj.ymin - 1, obj.xmax, obj.ymax


def _fmt(value: float) -> str:
    return f"{value:g}"


def _convert_image(
    voc_dir: Path,
    stem: str,
    image_file: str,
    class_ids: dict[str, int],
    ignore_unknown_classes: bool,
) -> _ConvertedImage:
    xml_path = voc_dir / ANNOTATION_DIR / f"{stem}.xml"
    xml_rel = f"{ANNOTATION_DIR}/{stem}.xml"
    annotation = parse_voc_annotation(xml_path)
    image_path = voc_dir / IMAGE_DIR / image_file
    width, height = decode_image_file(image_path)
    # A 0 in <size> means "unknown" (some tools write it); any other disagreement means the
    # boxes were drawn on a different image, so normalising by either size would be wrong.
    xml_size = (annotation.width, annotation.height)
    if 0 not in xml_size and xml_size != (width, height):
        raise FileProblem(
            xml_path,
            f"<size> says {annotation.width}x{annotation.height} "
            f"but {image_path} is {width}x{height}",
        )

    lines, ids, dropped, clipped = [], [], [], 0
    for number, obj in enumerate(annotation.objects, start=1):
        if obj.name not in class_ids:
            if not ignore_unknown_classes:
                known = ", ".join(class_ids)
                raise FileProblem(
                    xml_path, f"unknown class {obj.name!r} (expected one of: {known})"
                )
            dropped.append(DroppedBox(xml_rel, obj.name, "class not in class_names"))
            continue
        corners = f"({_fmt(obj.xmin)},{_fmt(obj.ymin)})-({_fmt(obj.xmax)},{_fmt(obj.ymax)})"
        # A max below its min is no click without a drag but swapped or mistyped corners: the
        # image would train with that object as background, so the image is bad as a whole.
        if obj.xmax < obj.xmin or obj.ymax < obj.ymin:
            axis = "xmax < xmin" if obj.xmax < obj.xmin else "ymax < ymin"
            raise FileProblem(
                xml_path, f"<object> #{number} ({obj.name}) has an inverted box {corners} ({axis})"
            )
        # Judge degeneracy on the raw corners, as VOC tools draw them: xmin == xmax is what a
        # click without a drag produces (BCCD 00338, 00343), not a real 1-px-wide object.
        if obj.xmax <= obj.xmin or obj.ymax <= obj.ymin:
            kind = "zero-size" if (obj.xmin, obj.ymin) == (obj.xmax, obj.ymax) else "degenerate"
            dropped.append(DroppedBox(xml_rel, obj.name, f"{kind} box {corners}"))
            continue
        x0, y0, x1, y1 = voc_box_to_edges(obj)
        cx0, cy0 = min(max(x0, 0.0), width), min(max(y0, 0.0), height)
        cx1, cy1 = min(max(x1, 0.0), width), min(max(y1, 0.0), height)
        if (cx0, cy0, cx1, cy1) != (x0, y0, x1, y1):
            clipped += 1
        if cx1 <= cx0 or cy1 <= cy0:
            dropped.append(DroppedBox(xml_rel, obj.name, f"box outside the image {corners}"))
            continue
        class_id = class_ids[obj.name]
        ids.append(class_id)
        lines.append(
            f"{class_id} {(cx0 + cx1) / 2 / width:.6f} {(cy0 + cy1) / 2 / height:.6f} "
            f"{(cx1 - cx0) / width:.6f} {(cy1 - cy0) / height:.6f}"
        )

    entry = {"id": stem, "file": image_file, "width": width, "height": height, "boxes": len(lines)}
    return _ConvertedImage(entry, lines, ids, dropped, clipped)


def _read_splits(voc_dir: Path, splits: Sequence[str]) -> dict[str, list[str]]:
    """Stems per requested split, in file order; a stem listed twice in one file is an error.

    Splits may overlap (VOC's trainval.txt is train + val): a label file depends only on its
    image, so each image is converted once. Keeping the *train* and *eval* splits apart is
    the caller's business.
    """
    result = {}
    for split in splits:
        split_file = voc_dir / IMAGESET_DIR / f"{split}.txt"
        stems = read_image_set(split_file)
        seen: set[str] = set()
        for stem in stems:
            if stem in seen:
                raise DetbenchError(f"{split_file}: {stem!r} is listed more than once")
            seen.add(stem)
        result[split] = stems
    return result


def _convert_all(
    voc_dir: Path,
    stems_by_split: dict[str, list[str]],
    images: dict[str, str],
    class_ids: dict[str, int],
    ignore_unknown_classes: bool,
) -> tuple[dict[str, _ConvertedImage], dict[str, BadFile]]:
    """Convert every listed image once; the bad ones are collected, not raised, so a user
    fixing a dataset sees all its problems in one run."""
    converted: dict[str, _ConvertedImage] = {}  # by stem; an image in two splits is done once
    bad: dict[str, BadFile] = {}
    for split, stems in stems_by_split.items():
        _check_listed_stems(voc_dir, voc_dir / IMAGESET_DIR / f"{split}.txt", stems, images)
        for stem in stems:
            if stem in converted or stem in bad:
                continue
            try:
                converted[stem] = _convert_image(
                    voc_dir, stem, images[stem], class_ids, ignore_unknown_classes
                )
            except FileProblem as problem:
                bad[stem] = BadFile(_relative(problem.path, voc_dir), problem.problem)
    return converted, bad


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _bad_files_message(voc_dir: Path, bad: list[BadFile]) -> str:
    """One header line, then one line per bad file (the first MAX_LISTED_BAD_FILES)."""
    lines = [
        f"{voc_dir}: {len(bad)} bad image or annotation file(s); fix them, or set "
        "dataset.on_bad_image: skip to train without them:"
    ]
    lines += [f"  {voc_dir / item.file}: {item.problem}" for item in bad[:MAX_LISTED_BAD_FILES]]
    if len(bad) > MAX_LISTED_BAD_FILES:
        lines.append(f"  ... and {len(bad) - MAX_LISTED_BAD_FILES} more")
    return "\n".join(lines)


def convert_voc_to_yolo(
    voc_dir: Path,
    out_dir: Path,
    *,
    class_names: Sequence[str],
    splits: Sequence[str] = ("train", "val", "test"),
    dataset_name: str,
    ignore_unknown_classes: bool = False,
    on_bad_image: str = "error",
    origin: Path | None = None,
) -> dict[str, Any]:
    """Write YOLO labels to ``out_dir/labels/<stem>.txt`` and ``out_dir/manifest.json``.

    Returns the manifest. Boxes are clipped to the image; degenerate boxes (and, with
    ``ignore_unknown_classes``, boxes of other classes) are dropped and listed in it.

    Every image is decoded and every annotation parsed; with ``on_bad_image="error"`` all the
    bad ones are listed in one DetbenchError, with ``"skip"`` they are left out and listed in
    the manifest (``skipped_images``). The manifest records the files the labels were made
    from (``source_files``, with sizes) and, as ``origin``, the user's copy of them.

    Everything is read and checked before anything is written. ``labels/`` is replaced
    atomically, then ``manifest.json`` is written atomically last, so a manifest always
    describes a complete label folder.
    """
    voc_dir, out_dir = Path(voc_dir), Path(out_dir)
    if len(set(class_names)) != len(class_names) or not class_names:
        raise DetbenchError(f"class_names: must be non-empty and unique, got {list(class_names)}")
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DetbenchError(f"on_bad_image: one of {BAD_IMAGE_POLICIES}, not {on_bad_image!r}")
    if len(set(splits)) != len(splits) or not splits:
        raise DetbenchError(f"splits: must be non-empty and unique, got {list(splits)}")
    _require_dir(voc_dir, "dataset directory")
    for sub in (IMAGE_DIR, ANNOTATION_DIR, str(IMAGESET_DIR)):
        _require_dir(voc_dir / sub, "dataset sub-folder")

    class_ids = {name: i for i, name in enumerate(class_names)}
    stems_by_split = _read_splits(voc_dir, splits)
    images = _index_images(voc_dir / IMAGE_DIR)

    converted, bad = _convert_all(
        voc_dir, stems_by_split, images, class_ids, ignore_unknown_classes
    )
    if bad and on_bad_image == "error":
        raise DetbenchError(_bad_files_message(voc_dir, list(bad.values())))
    manifest_splits: dict[str, list[dict[str, Any]]] = {}
    counts: dict[str, dict[str, Any]] = {}
    for split, stems in stems_by_split.items():
        kept = [stem for stem in stems if stem in converted]
        box_counts = dict.fromkeys(class_names, 0)
        for stem in kept:
            for class_id in converted[stem].class_ids:
                box_counts[class_names[class_id]] += 1
        manifest_splits[split] = [converted[stem].entry for stem in kept]
        counts[split] = {"images": len(kept), "boxes": box_counts}
        if on_bad_image == "skip":
            counts[split]["skipped"] = len(stems) - len(kept)
    dropped = [box for image in converted.values() for box in image.dropped]
    clipped = sum(image.clipped for image in converted.values())

    voc_root = voc_dir.resolve()
    made_from = [
        rel
        for stem, image in converted.items()
        for rel in (f"{IMAGE_DIR}/{image.entry['file']}", f"{ANNOTATION_DIR}/{stem}.xml")
    ]
    manifest = {
        "dataset": dataset_name,
        "class_names": list(class_names),
        "image_dir": str(voc_root / IMAGE_DIR),
        "label_dir": LABEL_DIR,
        "splits": manifest_splits,
        "counts": counts,
        "dropped_boxes": [box.to_json() for box in dropped],
        "clipped_boxes": clipped,
        "source": str(voc_root),
        "origin": str(Path(origin).resolve()) if origin is not None else str(voc_root),
        "on_bad_image": on_bad_image,
        "skipped_images": [item.to_json() for item in bad.values()],
        "source_files": [f.to_json() for f in record_files(voc_root, made_from)],
    }
    with atomic_directory(out_dir / LABEL_DIR) as tmp:
        for stem, image in converted.items():
            text = "".join(f"{line}\n" for line in image.lines)
            (tmp / f"{stem}.txt").write_text(text, encoding="utf-8")
    write_json(out_dir / MANIFEST_NAME, manifest)
    return manifest


# --- reading labels back ------------------------------------------------------------------


def load_yolo_labels(path: Path) -> np.ndarray:
    """Read a YOLO label file as an (N, 5) float32 array: class, cx, cy, w, h."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DetbenchError(f"{path}: label file does not exist") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        rows.append(_parse_label_line(path, number, line))
    if not rows:
        return np.zeros((0, 5), dtype=np.float32)
    return np.asarray(rows, dtype=np.float32)


def _parse_label_line(path: Path, number: int, line: str) -> list[float]:
    fields = line.split()
    problem = None
    values: list[float] = []
    if len(fields) != 5:
        problem = f"expected 5 fields 'class cx cy w h', got {len(fields)}"
    else:
        try:
            values = [float(field) for field in fields]
        except ValueError:
            problem = "fields must be numbers"
        else:
            if not all(math.isfinite(v) for v in values):
                problem = "fields must be finite numbers"
            elif values[0] < 0 or values[0] != int(values[0]):
                problem = f"class must be a whole number >= 0, got {fields[0]}"
    if problem is not None:
        shown = line.strip()[:60]
        raise DetbenchError(f"{path}: line {number}: {problem} ({shown!r})")
    return values
