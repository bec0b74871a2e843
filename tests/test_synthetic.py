"""Tests for detbench.data.synthetic: determinism, VOC layout, plausible content."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from detbench.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic_voc
from detbench.data.voc import check_voc_layout, parse_voc_annotation, read_image_set
from detbench.errors import DetbenchError

COUNTS = {"train": 12, "val": 4, "test": 4}
SIZE = (320, 240)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "voc"
    generate_synthetic_voc(out, num_images=COUNTS, image_size=SIZE, seed=7)
    return out


def _all_files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_same_seed_gives_identical_bytes(synth: Path, tmp_path: Path) -> None:
    again = tmp_path / "again"
    generate_synthetic_voc(again, num_images=COUNTS, image_size=SIZE, seed=7)
    assert _all_files(again) == _all_files(synth)


def test_other_seed_gives_other_images(synth: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    generate_synthetic_voc(other, num_images={"train": 1}, image_size=SIZE, seed=8)
    assert (other / "JPEGImages/Synth_00000.jpg").read_bytes() != (
        synth / "JPEGImages/Synth_00000.jpg"
    ).read_bytes()


def test_a_split_does_not_depend_on_the_other_counts(synth: Path, tmp_path: Path) -> None:
    # More training images must not change the validation images (only their numbering).
    bigger = tmp_path / "bigger"
    generate_synthetic_voc(bigger, num_images={"train": 13, "val": 4}, image_size=SIZE, seed=7)
    old_val = read_image_set(synth / "ImageSets/Main/val.txt")
    new_val = read_image_set(bigger / "ImageSets/Main/val.txt")
    for old, new in zip(old_val, new_val, strict=True):
        old_bytes = (synth / "JPEGImages" / f"{old}.jpg").read_bytes()
        assert (bigger / "JPEGImages" / f"{new}.jpg").read_bytes() == old_bytes


def test_layout_is_complete_voc(synth: Path) -> None:
    check_voc_layout(synth)  # raises on any missing piece
    sets = {s: read_image_set(synth / "ImageSets/Main" / f"{s}.txt") for s in COUNTS}
    assert {s: len(v) for s, v in sets.items()} == COUNTS
    assert read_image_set(synth / "ImageSets/Main/trainval.txt") == sets["train"] + sets["val"]
    stems = [stem for v in sets.values() for stem in v]
    assert stems == [f"Synth_{i:05d}" for i in range(sum(COUNTS.values()))]
    assert sorted(p.stem for p in (synth / "JPEGImages").iterdir()) == stems
    assert sorted(p.stem for p in (synth / "Annotations").iterdir()) == stems
    assert not list(synth.parent.glob(".voc.*"))  # no temporary directory left behind


def test_annotations_parse_and_boxes_lie_inside(synth: Path) -> None:
    width, height = SIZE
    names: set[str] = set()
    truncated = 0
    for xml in sorted((synth / "Annotations").glob("*.xml")):
        ann = parse_voc_annotation(xml)
        assert (ann.filename, ann.width, ann.height) == (f"{xml.stem}.jpg", width, height)
        image = cv2.imread(str(synth / "JPEGImages" / ann.filename))
        assert image.shape == (height, width, 3)
        assert ann.objects, xml
        for obj in ann.objects:
            names.add(obj.name)
            assert 1 <= obj.xmin < obj.xmax <= width and 1 <= obj.ymin < obj.ymax <= height
            assert all(float(v).is_integer() for v in obj[1:5])
            assert obj.difficult == 0
            truncated += obj.truncated
            if obj.truncated:  # a cell cut by the border has a box that touches it
                on_border = obj.xmin == 1 or obj.ymin == 1 or obj.xmax == width
                assert on_border or obj.ymax == height, (xml.name, obj)
    assert names == set(SYNTHETIC_CLASSES)
    assert truncated > 0


def _objects(synth: Path):
    for xml in sorted((synth / "Annotations").glob("*.xml")):
        ann = parse_voc_annotation(xml)
        yield cv2.imread(str(synth / "JPEGImages" / ann.filename)), ann.objects


def test_class_proportions_and_sizes_resemble_bccd(synth: Path) -> None:
    height = SIZE[1]
    counts = dict.fromkeys(SYNTHETIC_CLASSES, 0)
    heights: dict[str, list[int]] = {name: [] for name in SYNTHETIC_CLASSES}
    for _, objects in _objects(synth):
        for obj in objects:
            counts[obj.name] += 1
            if not obj.truncated:
                heights[obj.name].append(obj.ymax - obj.ymin + 1)
    # RBC dominate as in BCCD (85% there); the other two are each a few percent or more.
    total = sum(counts.values())
    assert counts["RBC"] / total > 0.7
    assert min(counts["WBC"], counts["Platelets"]) / total > 0.03
    median = {name: float(np.median(h)) for name, h in heights.items()}
    assert height / 8 < median["RBC"] < height / 4.5  # ~1/6
    assert height / 4 < median["WBC"] < height / 2  # ~1/3
    assert height / 32 < median["Platelets"] < height / 10  # ~1/16


def test_classes_look_different(synth: Path) -> None:
    """RBC centres are reddish, WBC nuclei and platelets purple, against a pale background."""
    centre_means: dict[str, list[np.ndarray]] = {name: [] for name in SYNTHETIC_CLASSES}
    backgrounds = []
    for image, objects in _objects(synth):
        free = np.ones(image.shape[:2], dtype=bool)
        for obj in objects:
            x0, y0, x1, y1 = (int(v) - 1 for v in obj[1:5])
            free[y0 : y1 + 1, x0 : x1 + 1] = False
            cx, cy = (x0 + x1) // 2, (y0 + y1) // 2
            rx, ry = max(1, (x1 - x0) // 8), max(1, (y1 - y0) // 8)
            patch = image[cy - ry : cy + ry + 1, cx - rx : cx + rx + 1].reshape(-1, 3)
            centre_means[obj.name].append(patch.mean(axis=0))
        backgrounds.append(image[free].mean(axis=0))
    b, g, r = np.mean(backgrounds, axis=0)
    assert min(b, g, r) > 180 and r > g  # pale and pinkish
    rbc_b, rbc_g, rbc_r = np.mean(centre_means["RBC"], axis=0)
    assert rbc_r > rbc_g + 30 and rbc_r > rbc_b + 30  # red dominates in RBC
    for name in ("WBC", "Platelets"):
        pb, pg, pr = np.mean(centre_means[name], axis=0)
        assert pb > pg + 30 and pr > pg  # purple: blue and red over green
        assert pg < rbc_g - 20  # darker than the RBCs
    assert np.mean(centre_means["RBC"], axis=0).sum() < b + g + r  # cells darker than background


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"num_images": {"train": -1}}, "num_images.train"),
        ({"num_images": {}}, "num_images"),
        ({"image_size": (32, 240)}, "image_size"),
    ],
)
def test_bad_arguments_are_one_line_errors(tmp_path: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(DetbenchError) as info:
        generate_synthetic_voc(tmp_path / "x", **kwargs)
    message = str(info.value)
    assert needle in message and "\n" not in message
    assert not (tmp_path / "x").exists()
