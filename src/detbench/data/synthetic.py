"""A deterministic synthetic blood-smear dataset in Pascal VOC layout.

It stands in for BCCD where the real data is not available (CI, smoke runs): the same three
classes, the same VOC file layout and XML structure, and a look that is plausible enough for a
small detector to learn quickly:

* RBC: pinkish-red discs with a darker rim and a paler centre, ~1/6 of the image height across,
  many per image, some overlapping, some cut by the border;
* WBC: 0-2 larger (~1/3 height) lavender cells with a lobed dark violet nucleus;
* Platelets: 0-4 small (~1/16 height) dark purple irregular blobs.

Every image is drawn from its own ``numpy.random.Generator`` seeded from
``(seed, split, index within split)``, so image *k* of a split is the same whatever the other
counts are, and the same seed gives byte-identical files (JPEG quality is fixed; the bytes are
stable for a given OpenCV/libjpeg build).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from xml.etree import ElementTree as ET

import cv2
import numpy as np

from detbench.atomic import atomic_directory
from detbench.errors import DetbenchError

SYNTHETIC_CLASSES = ("RBC", "WBC", "Platelets")

DEFAULT_NUM_IMAGES: Mapping[str, int] = MappingProxyType({"train": 64, "val": 16, "test": 16})

JPEG_QUALITY = 92
_MIN_IMAGE_SIDE = 64

# Colours are BGR (OpenCV order). Calibrated by eye against BCCD, where RBC centres average
# about BGR (164, 164, 186), WBC nuclei (200, 121, 136) and the background (187, 189, 193).
_BACKGROUND_BGR = (214.0, 212.0, 232.0)
_RBC_BODY_BGR = (150.0, 140.0, 205.0)
_WBC_CYTOPLASM_BGR = (215.0, 180.0, 195.0)
_WBC_NUCLEUS_BGR = (165.0, 70.0, 105.0)
_PLATELET_BGR = (160.0, 85.0, 125.0)

# Cells per image. RBC dominate as in BCCD (85% RBC, 7.6% WBC, 7.4% Platelets there).
_RBC_COUNT_RANGE = (10, 18)
_WBC_COUNT_PROBS = (0.1, 0.75, 0.15)  # P(0), P(1), P(2)
_PLATELET_COUNT_PROBS = (0.15, 0.35, 0.25, 0.15, 0.10)  # P(0) .. P(4)


@dataclass(frozen=True)
class SyntheticObject:
    """One annotated object: VOC 1-based inclusive pixel box, already clipped to the image."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int
    truncated: bool


@dataclass(frozen=True)
class _Cell:
    """A cell outline: an ellipse with semi-axes (ax, ay) rotated by ``angle`` degrees."""

    name: str
    cx: float
    cy: float
    ax: float
    ay: float
    angle: float = 0.0

    @property
    def radius(self) -> float:
        return max(self.ax, self.ay)

    def extent(self) -> tuple[float, float, float, float]:
        """Exact bounding box (x0, y0, x1, y1) in continuous 0-based pixel coordinates."""
        theta = math.radians(self.angle)
        cos, sin = math.cos(theta), math.sin(theta)
        half_w = math.hypot(self.ax * cos, self.ay * sin)
        half_h = math.hypot(self.ax * sin, self.ay * cos)
        return self.cx - half_w, self.cy - half_h, self.cx + half_w, self.cy + half_h


def generate_synthetic_voc(
    out_dir: Path,
    *,
    num_images: Mapping[str, int] = DEFAULT_NUM_IMAGES,
    image_size: tuple[int, int] = (320, 240),
    seed: int = 0,
) -> None:
    """Write a synthetic VOC dataset to ``out_dir`` (replaced whole, atomically).

    ``num_images`` maps split name -> image count; ``image_size`` is ``(width, height)``.
    Files are numbered ``Synth_00000`` ... in split order; ``ImageSets/Main/trainval.txt`` is
    train followed by val (as in VOC) when both splits are present.
    """
    counts = _validate_num_images(num_images)
    width, height = _validate_image_size(image_size)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise DetbenchError(f"seed: expected an integer >= 0, got {seed!r}")

    splits: dict[str, list[str]] = {}
    with atomic_directory(out_dir) as tmp:
        image_dir = tmp / "JPEGImages"
        annotation_dir = tmp / "Annotations"
        imageset_dir = tmp / "ImageSets" / "Main"
        for folder in (image_dir, annotation_dir, imageset_dir):
            folder.mkdir(parents=True)

        number = 0
        for split, count in counts.items():
            stems = splits[split] = []
            for index in range(count):
                stem = f"Synth_{number:05d}"
                number += 1
                rng = np.random.default_rng([seed, _split_code(split), index])
                image, objects = render_synthetic_image(rng, width, height)
                ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
                if not ok:  # pragma: no cover - OpenCV always has a JPEG encoder
                    raise RuntimeError("OpenCV could not encode a JPEG")
                (image_dir / f"{stem}.jpg").write_bytes(jpeg.tobytes())
                xml = annotation_xml(f"{stem}.jpg", width, height, objects)
                (annotation_dir / f"{stem}.xml").write_text(xml, encoding="utf-8")
                stems.append(stem)

        if "train" in splits and "val" in splits and "trainval" not in splits:
            splits["trainval"] = splits["train"] + splits["val"]
        for split, stems in splits.items():
            text = "".join(f"{stem}\n" for stem in stems)
            (imageset_dir / f"{split}.txt").write_text(text, encoding="utf-8")

        (tmp / "README.md").write_text(
            _readme(counts, width, height, seed, splits.keys()), encoding="utf-8"
        )


def render_synthetic_image(
    rng: np.random.Generator, width: int, height: int
) -> tuple[np.ndarray, list[SyntheticObject]]:
    """Draw one smear; return the BGR uint8 image and its annotated objects."""
    image = _background(rng, width, height)
    wbcs = _place_wbcs(rng, width, height)
    rbcs = _place_rbcs(rng, width, height, wbcs)
    platelets = _place_platelets(rng, width, height, wbcs + rbcs)

    # Draw order = stacking order: RBC under WBC under platelets, as in a smear where the
    # large cells sit on top of the red cells they push aside.
    extents = []
    for cell in rbcs:
        _draw_rbc(image, rng, cell)
        extents.append((cell.name, cell.extent()))
    for cell in wbcs:
        _draw_wbc(image, rng, cell)
        extents.append((cell.name, cell.extent()))
    for cell in platelets:
        extents.append((cell.name, _draw_platelet(image, rng, cell)))

    # A slight blur softens the drawn edges like a microscope's optics, then sensor grain.
    image = cv2.GaussianBlur(image, (0, 0), sigmaX=0.8)
    noisy = rng.standard_normal(size=image.shape, dtype=np.float32)
    noisy *= 3.0
    noisy += image
    image = np.clip(noisy, 0, 255, out=noisy).astype(np.uint8)

    objects = [
        obj
        for name, extent in extents
        if (obj := _to_voc_object(name, extent, width, height)) is not None
    ]
    return image, objects


def annotation_xml(filename: str, width: int, height: int, objects: list[SyntheticObject]) -> str:
    """A VOC annotation with BCCD's element structure (tab-indented, like BCCD's files)."""
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "JPEGImages"
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "detbench synthetic"
    size = ET.SubElement(root, "size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(size, "depth").text = "3"
    ET.SubElement(root, "segmented").text = "0"
    for obj in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = obj.name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = str(int(obj.truncated))
        ET.SubElement(element, "difficult").text = "0"
        box = ET.SubElement(element, "bndbox")
        for key in ("xmin", "ymin", "xmax", "ymax"):
            ET.SubElement(box, key).text = str(getattr(obj, key))
    ET.indent(root, space="\t")
    return ET.tostring(root, encoding="unicode") + "\n"


# --- validation ---------------------------------------------------------------------------


def _validate_num_images(num_images: Mapping[str, int]) -> dict[str, int]:
    if not num_images:
        raise DetbenchError("num_images: at least one split is needed")
    counts: dict[str, int] = {}
    for split, count in num_images.items():
        if not isinstance(split, str) or not split.isidentifier():
            raise DetbenchError(f"num_images: split name {split!r} must be a plain identifier")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise DetbenchError(f"num_images.{split}: expected a count >= 0, got {count!r}")
        counts[split] = count
    if sum(counts.values()) > 100_000:
        raise DetbenchError("num_images: at most 100000 images (file names have 5 digits)")
    return counts


def _validate_image_size(image_size: tuple[int, int]) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in image_size)
    except (TypeError, ValueError):
        raise DetbenchError(f"image_size: expected (width, height), got {image_size!r}") from None
    if min(width, height) < _MIN_IMAGE_SIDE:
        raise DetbenchError(
            f"image_size: both sides must be >= {_MIN_IMAGE_SIDE} px, got {width}x{height}"
        )
    return width, height


def _split_code(split: str) -> int:
    # A stable (unlike hash()) integer per split name, so a split's images don't depend on
    # which other splits exist or in which order they are listed.
    return zlib.crc32(split.encode("utf-8"))


def _readme(counts: Mapping[str, int], width: int, height: int, seed: int, splits) -> str:
    lines = [
        "# detbench synthetic blood-smear dataset",
        "",
        "Generated by `detbench.data.synthetic.generate_synthetic_voc`; not real data.",
        f"- seed: {seed}",
        f"- image size: {width}x{height}, JPEG quality {JPEG_QUALITY}",
        "- images per split: " + ", ".join(f"{k} {v}" for k, v in counts.items()),
        "- image sets: " + ", ".join(splits),
        "- classes: " + ", ".join(SYNTHETIC_CLASSES),
    ]
    return "\n".join(lines) + "\n"


# --- placement ----------------------------------------------------------------------------


def _too_close(cx: float, cy: float, radius: float, others: list[_Cell], overlap: float) -> bool:
    """True if a cell here would overlap another by more than ``overlap`` of their radii."""
    return any(
        math.hypot(cx - o.cx, cy - o.cy) < (1.0 - overlap) * (radius + o.radius) for o in others
    )


def _place_wbcs(rng: np.random.Generator, width: int, height: int) -> list[_Cell]:
    count = int(rng.choice(len(_WBC_COUNT_PROBS), p=_WBC_COUNT_PROBS))
    cells: list[_Cell] = []
    for _ in range(count * 20):  # bounded rejection sampling: a crowded image just gets fewer
        if len(cells) == count:
            break
        radius = height / 6 * rng.uniform(0.85, 1.15)
        # Mostly inside: a WBC cut in half by the border would be a poor training example.
        cx = rng.uniform(0.5 * radius, width - 0.5 * radius)
        cy = rng.uniform(0.5 * radius, height - 0.5 * radius)
        if _too_close(cx, cy, radius, cells, overlap=0.0):
            continue
        ay = radius * rng.uniform(0.88, 1.0)
        cells.append(_Cell("WBC", cx, cy, radius, ay, rng.uniform(0, 180)))
    return cells


def _place_rbcs(
    rng: np.random.Generator, width: int, height: int, wbcs: list[_Cell]
) -> list[_Cell]:
    count = int(rng.integers(_RBC_COUNT_RANGE[0], _RBC_COUNT_RANGE[1] + 1))
    cells: list[_Cell] = []
    for _ in range(count * 30):
        if len(cells) == count:
            break
        radius = height / 12 * rng.uniform(0.8, 1.2)
        # Centres may lie up to 30% of a radius outside the image: those cells are cut by the
        # border (truncated=1 in the XML) but enough of them stays visible to recognise.
        cx = rng.uniform(-0.3 * radius, width + 0.3 * radius)
        cy = rng.uniform(-0.3 * radius, height + 0.3 * radius)
        # RBCs may overlap each other a little (as in BCCD) but never hide under a WBC.
        if _too_close(cx, cy, radius, cells, overlap=0.3):
            continue
        if _too_close(cx, cy, radius, wbcs, overlap=0.0):
            continue
        ay = radius * rng.uniform(0.85, 1.0)
        cells.append(_Cell("RBC", cx, cy, radius, ay, rng.uniform(0, 180)))
    return cells


def _place_platelets(
    rng: np.random.Generator, width: int, height: int, others: list[_Cell]
) -> list[_Cell]:
    count = int(rng.choice(len(_PLATELET_COUNT_PROBS), p=_PLATELET_COUNT_PROBS))
    cells: list[_Cell] = []
    for _ in range(count * 30):
        if len(cells) == count:
            break
        radius = height / 28 * rng.uniform(0.8, 1.25)
        cx = rng.uniform(radius, width - radius)
        cy = rng.uniform(radius, height - radius)
        # Platelets lie in gaps or on a cell's edge, never covering its middle (where a
        # platelet on a WBC nucleus would be invisible).
        if _too_close(cx, cy, radius, cells, overlap=0.0):
            continue
        if any(math.hypot(cx - o.cx, cy - o.cy) < 0.6 * o.radius + radius for o in others):
            continue
        cells.append(_Cell("Platelets", cx, cy, radius, radius))
    return cells


def _to_voc_object(
    name: str, extent: tuple[float, float, float, float], width: int, height: int
) -> SyntheticObject | None:
    """Clip an extent to the image and express it as a VOC 1-based inclusive box.

    Continuous edges [x0, x1) cover 0-based pixels floor(x0) .. ceil(x1)-1, i.e. VOC
    xmin = floor(x0) + 1 and xmax = ceil(x1); detbench.data.voc converts back with
    x0 = xmin - 1, x1 = xmax, which gives the covering pixel rectangle.
    """
    x0, y0, x1, y1 = extent
    xmin = max(1, math.floor(x0) + 1)
    ymin = max(1, math.floor(y0) + 1)
    xmax = min(width, math.ceil(x1))
    ymax = min(height, math.ceil(y1))
    if xmax - xmin < 2 or ymax - ymin < 2:
        return None  # (almost) entirely outside the image: nothing left to detect
    truncated = x0 < 0 or y0 < 0 or x1 > width or y1 > height
    return SyntheticObject(name, xmin, ymin, xmax, ymax, truncated)


# --- drawing ------------------------------------------------------------------------------

# OpenCV draws with integer geometry; a 4-bit shift gives 1/16-pixel precision.
_SHIFT = 4
_SCALE = 1 << _SHIFT


def _jitter(rng: np.random.Generator, bgr: tuple[float, float, float], amount: float) -> np.ndarray:
    """Vary a colour mostly in brightness: independent channel noise turns pink into brown."""
    return np.asarray(bgr) + rng.uniform(-amount, amount) + rng.uniform(-0.3, 0.3, 3) * amount


def _colour(bgr: np.ndarray) -> tuple[int, int, int]:
    b, g, r = (round(min(255.0, max(0.0, float(v)))) for v in bgr)
    return b, g, r


def _background(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Pale pink with low-frequency variation (uneven lighting and stain)."""
    base = _jitter(rng, _BACKGROUND_BGR, 6.0).astype(np.float32)
    # Brightness only (shared by all channels): independent per-channel noise would make
    # green and blue patches that no stain produces. The tint varies per image via ``base``.
    coarse = rng.normal(0.0, 5.0, size=(5, 6)).astype(np.float32)
    low_freq = _upsample_smooth(coarse, width, height)
    return np.clip(base + low_freq[:, :, None], 0, 255).astype(np.uint8)


def _smoothstep_weights(nodes: int, length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output position: left node index, right node index, weight of the right one."""
    pos = np.linspace(0.0, nodes - 1, length)
    left = np.minimum(np.floor(pos).astype(np.intp), nodes - 2)
    t = (pos - left).astype(np.float32)
    return left, left + 1, t * t * (3.0 - 2.0 * t)  # smoothstep: no creases at the nodes


def _upsample_smooth(coarse: np.ndarray, width: int, height: int) -> np.ndarray:
    """Smoothly interpolate a (gh, gw) float32 grid to (height, width).

    Plain element-wise numpy arithmetic (exact IEEE, same result on every CPU) rather than
    cv2.resize on floats, whose SIMD paths may round differently elsewhere.
    """
    gh, gw = coarse.shape
    x0, x1, wx = _smoothstep_weights(gw, width)
    rows = coarse[:, x0] * (1.0 - wx) + coarse[:, x1] * wx
    y0, y1, wy = _smoothstep_weights(gh, height)
    return rows[y0] * (1.0 - wy)[:, None] + rows[y1] * wy[:, None]


def _fill_ellipse(
    image: np.ndarray, cell: _Cell, scale: float, colour: tuple[int, int, int]
) -> None:
    """Fill the cell's ellipse shrunk by ``scale`` about its centre."""
    centre = (round(cell.cx * _SCALE), round(cell.cy * _SCALE))
    axes = (max(1, round(cell.ax * scale * _SCALE)), max(1, round(cell.ay * scale * _SCALE)))
    cv2.ellipse(image, centre, axes, cell.angle, 0, 360, colour, -1, cv2.LINE_AA, _SHIFT)


def _draw_rbc(image: np.ndarray, rng: np.random.Generator, cell: _Cell) -> None:
    body = _jitter(rng, _RBC_BODY_BGR, 12.0)
    _fill_ellipse(image, cell, 1.0, _colour(body * 0.86))  # darker rim
    _fill_ellipse(image, cell, 0.86, _colour(body))
    # The biconcave centre is thinner and lets more light through: a paler core, part-way
    # to the background colour.
    pale = rng.uniform(0.45, 0.65)
    core = body + pale * (np.asarray(_BACKGROUND_BGR) - body)
    _fill_ellipse(image, cell, rng.uniform(0.4, 0.5), _colour(core))


def _draw_wbc(image: np.ndarray, rng: np.random.Generator, cell: _Cell) -> None:
    _fill_ellipse(image, cell, 1.0, _colour(_jitter(rng, _WBC_CYTOPLASM_BGR, 10.0)))
    nucleus = _colour(_jitter(rng, _WBC_NUCLEUS_BGR, 15.0))
    # A lobed nucleus, like a neutrophil's: 2-4 overlapping blobs around the centre.
    lobes = int(rng.integers(2, 5))
    start = rng.uniform(0, 2 * math.pi)
    radius = min(cell.ax, cell.ay)
    for lobe in range(lobes):
        phi = start + 2 * math.pi * lobe / lobes + rng.uniform(-0.3, 0.3)
        dist = radius * rng.uniform(0.2, 0.35)
        lobe_cell = _Cell(
            "nucleus",
            cell.cx + dist * math.cos(phi),
            cell.cy + dist * math.sin(phi),
            ax=radius * rng.uniform(0.3, 0.42),
            ay=radius * rng.uniform(0.22, 0.32),
            angle=math.degrees(phi) + 90,  # lobes elongated around the centre
        )
        _fill_ellipse(image, lobe_cell, 1.0, nucleus)


def _draw_platelet(
    image: np.ndarray, rng: np.random.Generator, cell: _Cell
) -> tuple[float, float, float, float]:
    """Draw an irregular polygon blob; return its exact drawn extent."""
    vertices = int(rng.integers(7, 11))
    # Evenly spaced, jittered angles: sorted uniform ones can leave big gaps -> thin slivers.
    step = 2 * math.pi / vertices
    angles = rng.uniform(0, step) + step * (np.arange(vertices) + rng.uniform(-0.3, 0.3, vertices))
    radii = cell.radius * rng.uniform(0.65, 1.0, size=vertices)
    xs = cell.cx + radii * np.cos(angles)
    ys = cell.cy + radii * np.sin(angles)
    points = np.round(np.stack([xs, ys], axis=1) * _SCALE).astype(np.int32)
    colour = _colour(_jitter(rng, _PLATELET_BGR, 15.0))
    cv2.fillPoly(image, [points], colour, cv2.LINE_AA, _SHIFT)
    # The polygon's own extent (not the nominal circle), so the box is tight.
    return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())
