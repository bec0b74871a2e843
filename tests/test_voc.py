"""Tests for detbench.data.voc: VOC import, XML parsing, VOC -> YOLO conversion, label reading.

The BCCD tests run on the real dataset (DETBENCH_BCCD_DIR, default ../shared/data/bccd next
to the repository) and skip when it is absent; everything else uses small synthetic datasets.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from detbench.data.synthetic import SYNTHETIC_CLASSES, generate_synthetic_voc
from detbench.data.voc import (
    VocObject,
    convert_voc_to_yolo,
    import_voc_directory,
    load_yolo_labels,
    parse_voc_annotation,
    read_image_set,
    voc_box_to_edges,
)
from detbench.errors import DetbenchError

REPO_ROOT = Path(__file__).resolve().parents[1]
BCCD_DIR = Path(os.environ.get("DETBENCH_BCCD_DIR", REPO_ROOT.parent / "shared/data/bccd"))
BCCD_CLASSES = ("RBC", "WBC", "Platelets")
MANIFEST_KEYS = [
    "dataset",
    "class_names",
    "image_dir",
    "label_dir",
    "splits",
    "counts",
    "dropped_boxes",
    "clipped_boxes",
    "source",
    "origin",
    "on_bad_image",
    "skipped_images",
    "source_files",
]

needs_bccd = pytest.mark.skipif(
    not (BCCD_DIR / "Annotations").is_dir(),
    reason=f"real BCCD dataset not found at {BCCD_DIR} (set DETBENCH_BCCD_DIR)",
)


def assert_bad_files_error(
    info: pytest.ExceptionInfo[DetbenchError], voc_dir: Path, expected: dict[str, str]
) -> list[str]:
    """The conversion error lists each bad file (relative path -> a word of its problem) on a
    line of its own, under one header line naming the dataset."""
    header, *lines = str(info.value).splitlines()
    assert header.startswith(f"{voc_dir}: {len(expected)} bad image or annotation file")
    assert "on_bad_image: skip" in header
    assert len(lines) == len(expected), str(info.value)
    for rel, needle in expected.items():
        matching = [line for line in lines if line.strip().startswith(f"{voc_dir / rel}: ")]
        assert len(matching) == 1 and needle in matching[0], (rel, str(info.value))
    return lines


def assert_one_line_error(info: pytest.ExceptionInfo[DetbenchError], path: Path) -> str:
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message and "\r" not in message
    return message


@pytest.fixture(scope="module")
def synth_source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "voc"
    generate_synthetic_voc(root, num_images={"train": 3, "val": 2, "test": 2}, seed=3)
    return root


@pytest.fixture
def voc(synth_source: Path, tmp_path: Path) -> Path:
    """A fresh, writable copy of a small synthetic VOC dataset, for breaking."""
    root = tmp_path / "voc"
    shutil.copytree(synth_source, root)
    return root


def _convert(voc_dir: Path, out: Path, **kwargs) -> dict:
    kwargs.setdefault("class_names", SYNTHETIC_CLASSES)
    kwargs.setdefault("dataset_name", "synthetic")
    return convert_voc_to_yolo(voc_dir, out, **kwargs)


def _write_xml(path: Path, objects: str, size: str | None = None) -> None:
    if size is None:
        size = "<size><width>320</width><height>240</height><depth>3</depth></size>"
    path.write_text(
        f"<annotation><filename>{path.stem}.jpg</filename>{size}{objects}</annotation>\n",
        encoding="utf-8",
    )


def _box(name: str, xmin: object, ymin: object, xmax: object, ymax: object) -> str:
    return (
        f"<object><name>{name}</name><truncated>0</truncated><difficult>0</difficult>"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax>"
        "</bndbox></object>"
    )


# --- real BCCD ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bccd(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("bccd_yolo")
    manifest = convert_voc_to_yolo(BCCD_DIR, out, class_names=BCCD_CLASSES, dataset_name="bccd")
    return manifest, out


def _split_of(stem: str) -> str:
    for split in ("train", "val", "test"):
        if stem in read_image_set(BCCD_DIR / "ImageSets/Main" / f"{split}.txt"):
            return split
    raise AssertionError(stem)


@needs_bccd
def test_bccd_counts_match_dataset_md(bccd: tuple[dict, Path]) -> None:
    manifest, _ = bccd
    # DATASET.md's per-split counts, less the two zero-size RBC points, wherever they are.
    expected = {
        "train": {"images": 205, "boxes": {"RBC": 2382, "WBC": 214, "Platelets": 209}},
        "val": {"images": 87, "boxes": {"RBC": 968, "WBC": 87, "Platelets": 83}},
        "test": {"images": 72, "boxes": {"RBC": 805, "WBC": 71, "Platelets": 69}},
    }
    for stem in ("BloodImage_00338", "BloodImage_00343"):
        expected[_split_of(stem)]["boxes"]["RBC"] -= 1
    assert manifest["counts"] == expected
    assert sum(e["boxes"] for s in manifest["splits"].values() for e in s) == 4888 - 2


@needs_bccd
def test_bccd_drops_exactly_the_two_zero_size_points(bccd: tuple[dict, Path]) -> None:
    manifest, _ = bccd
    assert sorted(manifest["dropped_boxes"], key=lambda d: d["file"]) == [
        {
            "file": "Annotations/BloodImage_00338.xml",
            "class": "RBC",
            "reason": "zero-size box (504,337)-(504,337)",
        },
        {
            "file": "Annotations/BloodImage_00343.xml",
            "class": "RBC",
            "reason": "zero-size box (181,329)-(181,329)",
        },
    ]
    # The 1-based convention puts xmax=640 / ymax=480 exactly on the edge: nothing to clip.
    assert manifest["clipped_boxes"] == 0


@needs_bccd
def test_bccd_manifest_structure(bccd: tuple[dict, Path]) -> None:
    manifest, out = bccd
    assert list(manifest) == MANIFEST_KEYS
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["dataset"] == "bccd"
    assert manifest["class_names"] == list(BCCD_CLASSES)
    assert manifest["image_dir"] == str(BCCD_DIR.resolve() / "JPEGImages")
    assert manifest["source"] == str(BCCD_DIR.resolve())
    assert manifest["label_dir"] == "labels"
    first = manifest["splits"]["train"][0]
    assert list(first) == ["id", "file", "width", "height", "boxes"]
    entries = [e for s in manifest["splits"].values() for e in s]
    assert len({e["id"] for e in entries}) == 364
    assert all((e["width"], e["height"]) == (640, 480) for e in entries)
    assert all(e["file"] == f"{e['id']}.jpg" for e in entries)


@needs_bccd
def test_bccd_labels_are_normalised(bccd: tuple[dict, Path]) -> None:
    manifest, out = bccd
    entries = [e for s in manifest["splits"].values() for e in s]
    assert len(list((out / "labels").iterdir())) == len(entries)
    for entry in entries:
        labels = load_yolo_labels(out / "labels" / f"{entry['id']}.txt")
        assert labels.shape == (entry["boxes"], 5)
        cls, cx, cy, w, h = labels.T
        assert set(np.unique(cls)) <= {0.0, 1.0, 2.0}
        assert (w > 0).all() and (h > 0).all()
        eps = 1e-6  # labels are written with 6 decimals
        assert (cx - w / 2 >= -eps).all() and (cx + w / 2 <= 1 + eps).all()
        assert (cy - h / 2 >= -eps).all() and (cy + h / 2 <= 1 + eps).all()


@needs_bccd
def test_bccd_right_edge_box_maps_to_exactly_one(bccd: tuple[dict, Path]) -> None:
    manifest, out = bccd
    dropped = {d["file"] for d in manifest["dropped_boxes"]}
    for xml in sorted((BCCD_DIR / "Annotations").glob("*.xml")):
        if f"Annotations/{xml.name}" in dropped:
            continue  # there label lines no longer line up with <object>s
        ann = parse_voc_annotation(xml)
        edge = [i for i, o in enumerate(ann.objects) if o.xmax == 640]
        if edge:
            break
    obj = ann.objects[edge[0]]
    x0, _, x1, _ = voc_box_to_edges(obj)
    assert x1 / ann.width == 1.0 and x0 == obj.xmin - 1
    # In the label file the same box ends at 1 to 6 decimals.
    cls, cx, _, w, _ = load_yolo_labels(out / "labels" / f"{xml.stem}.txt")[edge[0]]
    assert BCCD_CLASSES[int(cls)] == obj.name
    assert abs(cx + w / 2 - 1.0) <= 1e-6
    assert abs(w * 640 - (obj.xmax - obj.xmin + 1)) < 1e-3  # inclusive: 1..640 is 640 px


# --- conversion on synthetic data ---------------------------------------------------------


def test_synthetic_roundtrip(synth_source: Path, tmp_path: Path) -> None:
    manifest = _convert(synth_source, tmp_path / "out")
    assert list(manifest) == MANIFEST_KEYS
    assert manifest["dropped_boxes"] == [] and manifest["clipped_boxes"] == 0
    assert {s: c["images"] for s, c in manifest["counts"].items()} == {
        "train": 3,
        "val": 2,
        "test": 2,
    }
    for entry in manifest["splits"]["train"]:
        ann = parse_voc_annotation(synth_source / "Annotations" / f"{entry['id']}.xml")
        labels = load_yolo_labels(tmp_path / "out/labels" / f"{entry['id']}.txt")
        assert len(labels) == len(ann.objects) == entry["boxes"]
        for obj, (cls, cx, cy, w, h) in zip(ann.objects, labels, strict=True):
            assert SYNTHETIC_CLASSES[int(cls)] == obj.name
            x0, y0, x1, y1 = voc_box_to_edges(obj)
            np.testing.assert_allclose(
                [cx * 320, cy * 240, w * 320, h * 240],
                [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0],
                atol=1e-3,
            )


def test_clips_and_counts_boxes_past_the_edge(voc: Path, tmp_path: Path) -> None:
    xml = voc / "Annotations/Synth_00000.xml"
    _write_xml(xml, _box("RBC", 0, 1, 330, 240) + _box("WBC", 400, 10, 420, 20))
    manifest = _convert(voc, tmp_path / "out")
    assert manifest["clipped_boxes"] == 2
    assert manifest["dropped_boxes"] == [
        {
            "file": "Annotations/Synth_00000.xml",
            "class": "WBC",
            "reason": "box outside the image (400,10)-(420,20)",
        }
    ]
    labels = load_yolo_labels(tmp_path / "out/labels/Synth_00000.txt")
    np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 1.0, 1.0]])


def test_missing_size_is_read_from_the_image(voc: Path, tmp_path: Path) -> None:
    _write_xml(voc / "Annotations/Synth_00000.xml", _box("RBC", 1, 1, 160, 120), size="")
    manifest = _convert(voc, tmp_path / "out")
    assert manifest["splits"]["train"][0]["width"] == 320
    labels = load_yolo_labels(tmp_path / "out/labels/Synth_00000.txt")
    np.testing.assert_allclose(labels, [[0, 0.25, 0.25, 0.5, 0.5]])


def test_unknown_class_can_be_ignored(voc: Path, tmp_path: Path) -> None:
    _write_xml(voc / "Annotations/Synth_00000.xml", _box("Neutrophil", 1, 1, 9, 9))
    manifest = _convert(voc, tmp_path / "out", ignore_unknown_classes=True)
    assert manifest["dropped_boxes"][0]["class"] == "Neutrophil"
    assert load_yolo_labels(tmp_path / "out/labels/Synth_00000.txt").shape == (0, 5)


def test_only_requested_splits_are_converted(synth_source: Path, tmp_path: Path) -> None:
    manifest = _convert(synth_source, tmp_path / "out", splits=("trainval",))
    assert list(manifest["splits"]) == ["trainval"]
    assert manifest["counts"]["trainval"]["images"] == 5
    assert len(list((tmp_path / "out/labels").iterdir())) == 5


def test_overlapping_splits_convert_each_image_once(voc: Path, tmp_path: Path) -> None:
    # trainval = train + val, as in VOC; the workflow may ask for all three.
    _write_xml(voc / "Annotations/Synth_00003.xml", _box("RBC", 5, 5, 5, 5))  # a val image
    manifest = _convert(voc, tmp_path / "out", splits=("trainval", "train", "val"))
    assert [s["images"] for s in manifest["counts"].values()] == [5, 3, 2]
    assert len(manifest["dropped_boxes"]) == 1  # not once per split
    assert len(list((tmp_path / "out/labels").iterdir())) == 5


# --- conversion errors --------------------------------------------------------------------


def test_unknown_class_is_an_error(voc: Path, tmp_path: Path) -> None:
    xml = voc / "Annotations/Synth_00001.xml"
    _write_xml(xml, _box("Neutrophil", 1, 1, 9, 9))
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    assert_bad_files_error(info, voc, {"Annotations/Synth_00001.xml": "'Neutrophil'"})
    assert not (tmp_path / "out").exists()  # nothing written on failure


def test_inverted_box_is_an_error_naming_the_file_and_the_box(voc: Path, tmp_path: Path) -> None:
    xml = voc / "Annotations/Synth_00001.xml"
    _write_xml(xml, _box("RBC", 10, 10, 40, 40) + _box("WBC", 300, 200, 100, 100))
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    [line] = assert_bad_files_error(info, voc, {"Annotations/Synth_00001.xml": "inverted box"})
    assert "<object> #2 (WBC)" in line and "(300,200)-(100,100)" in line
    assert not (tmp_path / "out").exists()


def test_inverted_box_in_one_axis_is_an_error(voc: Path, tmp_path: Path) -> None:
    _write_xml(voc / "Annotations/Synth_00001.xml", _box("RBC", 10, 50, 40, 20))
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    [line] = assert_bad_files_error(info, voc, {"Annotations/Synth_00001.xml": "ymax < ymin"})
    assert "(10,50)-(40,20)" in line


def test_inverted_box_image_is_skipped_and_listed_zero_size_still_dropped(
    voc: Path, tmp_path: Path
) -> None:
    _write_xml(voc / "Annotations/Synth_00001.xml", _box("RBC", 300, 200, 100, 100))
    _write_xml(
        voc / "Annotations/Synth_00000.xml", _box("RBC", 5, 5, 5, 5) + _box("WBC", 1, 1, 9, 9)
    )
    manifest = _convert(voc, tmp_path / "out", on_bad_image="skip")
    [skipped] = manifest["skipped_images"]
    assert skipped["file"] == "Annotations/Synth_00001.xml"
    assert "inverted box (300,200)-(100,100)" in skipped["problem"]
    train = manifest["counts"]["train"]
    assert (train["images"], train["skipped"]) == (2, 1)
    assert "Synth_00001" not in [e["id"] for e in manifest["splits"]["train"]]
    assert not (tmp_path / "out/labels/Synth_00001.txt").exists()
    # The zero-size point stays a dropped box of a kept image, as before.
    assert manifest["dropped_boxes"] == [
        {
            "file": "Annotations/Synth_00000.xml",
            "class": "RBC",
            "reason": "zero-size box (5,5)-(5,5)",
        }
    ]
    np.testing.assert_allclose(load_yolo_labels(tmp_path / "out/labels/Synth_00000.txt")[:, 0], [1])


def test_missing_split_file_is_an_error(voc: Path, tmp_path: Path) -> None:
    split_file = voc / "ImageSets/Main/test.txt"
    split_file.unlink()
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    assert_one_line_error(info, split_file)


def test_size_mismatch_is_an_error(voc: Path, tmp_path: Path) -> None:
    xml = voc / "Annotations/Synth_00000.xml"
    size = "<size><width>640</width><height>480</height><depth>3</depth></size>"
    _write_xml(xml, _box("RBC", 1, 1, 9, 9), size=size)
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    [line] = assert_bad_files_error(info, voc, {"Annotations/Synth_00000.xml": "640x480"})
    assert "320x240" in line and "Synth_00000.jpg" in line


def test_stem_listed_twice_in_a_split_is_an_error(voc: Path, tmp_path: Path) -> None:
    test_file = voc / "ImageSets/Main/test.txt"
    test_file.write_text("Synth_00005\nSynth_00006\nSynth_00005\n", encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    assert "Synth_00005" in assert_one_line_error(info, test_file)


def test_listed_stem_without_image_is_a_conversion_error(voc: Path, tmp_path: Path) -> None:
    (voc / "JPEGImages/Synth_00004.jpg").unlink()
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    assert "Synth_00004" in assert_one_line_error(info, voc / "ImageSets/Main/val.txt")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a copy cut short: no end-of-image marker


def test_truncated_jpeg_fails_conversion_naming_it(voc: Path, tmp_path: Path) -> None:
    _truncate(voc / "JPEGImages/Synth_00002.jpg")
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    assert_bad_files_error(info, voc, {"JPEGImages/Synth_00002.jpg": "Premature end of JPEG"})
    assert not (tmp_path / "out").exists()


def test_truncated_jpeg_is_skipped_and_counted(voc: Path, tmp_path: Path) -> None:
    from detbench.report.dataset import dataset_document

    _truncate(voc / "JPEGImages/Synth_00002.jpg")  # a train image (also in trainval)
    manifest = _convert(voc, tmp_path / "out", on_bad_image="skip", splits=("train", "trainval"))
    [skipped] = manifest["skipped_images"]
    assert skipped["file"] == "JPEGImages/Synth_00002.jpg"
    assert "Premature end of JPEG file" in skipped["problem"]
    assert manifest["counts"]["train"]["images"] == 2
    assert manifest["counts"]["train"]["skipped"] == 1
    assert manifest["counts"]["trainval"]["skipped"] == 1
    ids = [e["id"] for split in manifest["splits"].values() for e in split]
    assert "Synth_00002" not in ids and not (tmp_path / "out/labels/Synth_00002.txt").exists()
    assert json.loads((tmp_path / "out/manifest.json").read_text()) == manifest
    report = dataset_document(manifest, {"name": "synthetic", "source": str(voc)}).to_markdown()
    assert "Skipped 1 bad images" in report and "JPEGImages/Synth_00002.jpg" in report


def test_five_broken_files_are_reported_in_one_run(voc: Path, tmp_path: Path) -> None:
    _truncate(voc / "JPEGImages/Synth_00000.jpg")
    (voc / "JPEGImages/Synth_00001.jpg").write_bytes(b"<html>not an image</html>")
    (voc / "Annotations/Synth_00002.xml").write_text("<annotation><size>", encoding="utf-8")
    _write_xml(voc / "Annotations/Synth_00003.xml", _box("RBC", 1, 1, "ten", 9))
    _write_xml(voc / "Annotations/Synth_00004.xml", _box("Neutrophil", 1, 1, 9, 9))
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    expected = {
        "JPEGImages/Synth_00000.jpg": "Premature end of JPEG file",
        "JPEGImages/Synth_00001.jpg": "not a readable image",
        "Annotations/Synth_00002.xml": "not well-formed XML",
        "Annotations/Synth_00003.xml": "<xmax> is not a number",
        "Annotations/Synth_00004.xml": "unknown class 'Neutrophil'",
    }
    assert_bad_files_error(info, voc, expected)


def test_many_bad_files_are_capped_with_a_count(voc: Path, tmp_path: Path, monkeypatch) -> None:
    import detbench.data.voc as voc_module

    monkeypatch.setattr(voc_module, "MAX_LISTED_BAD_FILES", 2)
    for number in range(5):
        (voc / f"JPEGImages/Synth_0000{number}.jpg").write_bytes(b"")
    with pytest.raises(DetbenchError) as info:
        _convert(voc, tmp_path / "out")
    lines = str(info.value).splitlines()
    assert "5 bad image" in lines[0] and len(lines) == 4 and lines[-1] == "  ... and 3 more"


# --- XML parsing --------------------------------------------------------------------------


def test_parse_returns_objects_as_given(voc: Path) -> None:
    xml = voc / "Annotations/Synth_00000.xml"
    _write_xml(xml, _box("WBC", 3, 4, 50.5, 60))
    ann = parse_voc_annotation(xml)
    assert (ann.filename, ann.width, ann.height) == ("Synth_00000.jpg", 320, 240)
    assert ann.objects == [VocObject("WBC", 3, 4, 50.5, 60, 0, 0)]


def test_not_well_formed_xml(tmp_path: Path) -> None:
    xml = tmp_path / "broken.xml"
    xml.write_text("<annotation>\n<size>\n</annotation>\n", encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        parse_voc_annotation(xml)
    assert "not well-formed XML (" in assert_one_line_error(info, xml)


@pytest.mark.parametrize(
    ("objects", "size", "needle"),
    [
        (_box("RBC", 1, 1, "ten", 9), None, "<xmax> is not a number"),
        (_box("RBC", 1, 1, "", 9), None, "<xmax> is missing"),
        ("<object><name>RBC</name></object>", None, "no <bndbox>"),
        ("<object><bndbox/></object>", None, "<name> is missing"),
        ("", "<size><height>240</height></size>", "<size><width> is missing"),
        ("", "<size><width>x</width><height>240</height></size>", "<width> is not a number"),
    ],
)
def test_bad_fields_name_file_and_element(
    tmp_path: Path, objects: str, size: str | None, needle: str
) -> None:
    xml = tmp_path / "bad.xml"
    _write_xml(xml, objects, size=size)
    with pytest.raises(DetbenchError) as info:
        parse_voc_annotation(xml)
    assert needle in assert_one_line_error(info, xml)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE annotation [
  <!ENTITY lol "lol">
  <!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
  <!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">
  <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
  <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
  <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
  <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
  <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
  <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
  <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<annotation><filename>&lol9;</filename></annotation>
"""


def _external_entity(secret: Path) -> str:
    return (
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE annotation [<!ENTITY xxe SYSTEM "file://{secret}">]>\n'
        "<annotation><filename>&xxe;</filename></annotation>\n"
    )


@pytest.mark.parametrize("case", ["billion_laughs", "external_entity", "harmless_entity"])
def test_dtds_and_entities_are_refused_before_expansion(tmp_path: Path, case: str) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET-CONTENT", encoding="utf-8")
    text = {
        "billion_laughs": BILLION_LAUGHS,
        "external_entity": _external_entity(secret),
        # Any libexpat accepts this one; refusing it shows the refusal is detbench's own.
        "harmless_entity": '<!DOCTYPE a [<!ENTITY e "x">]><annotation>&e;</annotation>',
    }[case]
    xml = tmp_path / "evil.xml"
    xml.write_text(text, encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(DetbenchError) as info:
        parse_voc_annotation(xml)
    message = assert_one_line_error(info, xml)
    # Refused at the DOCTYPE, by detbench: not libexpat's "amplification" limit (absent from
    # expat < 2.4) nor its "undefined entity", and before any entity is expanded or read.
    assert "declares a DTD" in message and "amplification" not in message
    assert "SECRET" not in message and "lol" not in message
    assert time.perf_counter() - started < 1.0


def test_missing_annotation_file(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError) as info:
        parse_voc_annotation(tmp_path / "nope.xml")
    assert_one_line_error(info, tmp_path / "nope.xml")


# --- import -------------------------------------------------------------------------------


def test_import_copies_the_dataset(voc: Path, tmp_path: Path) -> None:
    (voc / "LICENSE").write_text("MIT\n", encoding="utf-8")
    (voc / "unrelated.bin").write_bytes(b"x")
    out = tmp_path / "imported"
    import_voc_directory(voc, out)
    copied = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    expected = sorted(
        str(p.relative_to(voc)) for p in voc.rglob("*") if p.is_file() and p.name != "unrelated.bin"
    )
    assert copied == expected and "LICENSE" in copied and "README.md" in copied
    assert (out / "JPEGImages/Synth_00000.jpg").read_bytes() == (
        voc / "JPEGImages/Synth_00000.jpg"
    ).read_bytes()


def test_import_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError) as info:
        import_voc_directory(tmp_path / "absent", tmp_path / "out")
    message = assert_one_line_error(info, tmp_path / "absent")
    assert message == f"{tmp_path / 'absent'}: dataset directory does not exist"


@pytest.mark.parametrize("sub", ["JPEGImages", "Annotations", "ImageSets/Main"])
def test_import_missing_subfolder(voc: Path, tmp_path: Path, sub: str) -> None:
    shutil.rmtree(voc / sub)
    with pytest.raises(DetbenchError) as info:
        import_voc_directory(voc, tmp_path / "out")
    assert_one_line_error(info, voc / sub)
    assert not (tmp_path / "out").exists()


def test_import_requires_train_txt(voc: Path, tmp_path: Path) -> None:
    (voc / "ImageSets/Main/train.txt").unlink()
    with pytest.raises(DetbenchError) as info:
        import_voc_directory(voc, tmp_path / "out")
    assert_one_line_error(info, voc / "ImageSets/Main/train.txt")


@pytest.mark.parametrize("missing", ["JPEGImages/Synth_00003.jpg", "Annotations/Synth_00003.xml"])
def test_import_listed_stem_missing(voc: Path, tmp_path: Path, missing: str) -> None:
    (voc / missing).unlink()
    with pytest.raises(DetbenchError) as info:
        import_voc_directory(voc, tmp_path / "out")
    # Synth_00003 is in val.txt and trainval.txt; either file may be reported first.
    message = str(info.value)
    assert "Synth_00003" in message and missing in message and "\n" not in message
    assert (
        str(voc / "ImageSets/Main/trainval.txt") in message
        or str(voc / "ImageSets/Main/val.txt") in message
    )


def test_import_refuses_to_overwrite_its_source(voc: Path) -> None:
    with pytest.raises(DetbenchError) as info:
        import_voc_directory(voc, voc)
    assert_one_line_error(info, voc)
    assert (voc / "JPEGImages").is_dir()


# --- YOLO labels --------------------------------------------------------------------------


def test_load_yolo_labels(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("0 0.5 0.5 0.25 0.125\n\n2 0.1 0.2 0.3 0.4\n", encoding="utf-8")
    labels = load_yolo_labels(path)
    assert labels.dtype == np.float32
    np.testing.assert_allclose(labels, [[0, 0.5, 0.5, 0.25, 0.125], [2, 0.1, 0.2, 0.3, 0.4]])
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert load_yolo_labels(empty).shape == (0, 5)


@pytest.mark.parametrize(
    "bad_line", ["0 0.5 0.5 0.25", "0 0.5 0.5 0.25 x", "1.5 0.5 0.5 0.2 0.2", "0 nan 0 1 1"]
)
def test_load_yolo_labels_malformed_line(tmp_path: Path, bad_line: str) -> None:
    path = tmp_path / "bad.txt"
    path.write_text(f"0 0.5 0.5 0.25 0.125\n{bad_line}\n", encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        load_yolo_labels(path)
    assert "line 2" in assert_one_line_error(info, path)
