"""fetch_coco against a local server serving tiny fake COCO archives with tricky annotations."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data.coco import (
    COCO_BASE_URL,
    COCO_CATEGORY_IDS,
    COCO_CLASSES,
    COCO_ID_TO_INDEX,
    OFFICIAL_ARCHIVES,
    convert_instances,
    fetch_coco,
    official_pins,
)
from detbench.errors import DetbenchError

# id -> (width, height). Listed out of id order on purpose: the manifest must sort by id.
IMAGES = {724: (40, 30), 139: (64, 48), 632: (50, 50), 285: (32, 24)}
CATEGORIES = [
    {"id": cid, "name": name} for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True)
]
ANNOTATIONS = [
    # image 139 (64x48): a person, a toothbrush (id 90 -> class 79) and a crowd region.
    {"id": 1, "image_id": 139, "category_id": 1, "bbox": [8, 4, 16, 20], "iscrowd": 0},
    {"id": 2, "image_id": 139, "category_id": 90, "bbox": [0, 0, 32, 24], "iscrowd": 0},
    {"id": 3, "image_id": 139, "category_id": 1, "bbox": [0, 0, 64, 48], "iscrowd": 1},
    # image 285 (32x24): a zero-area box and a box running past the right/bottom edge.
    {"id": 4, "image_id": 285, "category_id": 3, "bbox": [10, 10, 0, 5], "iscrowd": 0},
    {"id": 5, "image_id": 285, "category_id": 18, "bbox": [24, 16, 16, 16], "iscrowd": 0},
    # image 632 (50x50): a car and a box entirely outside the image; 724 has no boxes.
    {"id": 6, "image_id": 632, "category_id": 3, "bbox": [5, 10, 20, 10], "iscrowd": 0},
    {"id": 7, "image_id": 632, "category_id": 3, "bbox": [60, 60, 5, 5], "iscrowd": 0},
]


def _file(image_id: int) -> str:
    return f"{image_id:012d}.jpg"


def _jpeg(width: int, height: int, seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (height, width, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".jpg", pixels)
    assert ok
    return encoded.tobytes()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _instances(**overrides: Any) -> dict[str, Any]:
    images = [
        {"id": i, "file_name": _file(i), "width": w, "height": h} for i, (w, h) in IMAGES.items()
    ]
    data = {"images": images, "annotations": ANNOTATIONS, "categories": CATEGORIES}
    data.update(overrides)
    return data


@pytest.fixture(scope="module")
def image_jpegs() -> dict[str, bytes]:
    return {_file(i): _jpeg(w, h, seed=i) for i, (w, h) in IMAGES.items()}


def serve_coco(
    server: LocalHTTPServer,
    image_jpegs: dict[str, bytes],
    instances: dict[str, Any] | None = None,
    *,
    skip_image: str | None = None,
) -> None:
    ann_json = json.dumps(instances or _instances()).encode()
    server.add(
        "/annotations/annotations_trainval2017.zip",
        _zip({"annotations/instances_val2017.json": ann_json, "annotations/other.json": b"{}"}),
    )
    jpegs = {f"val2017/{name}": data for name, data in image_jpegs.items() if name != skip_image}
    server.add("/zips/val2017.zip", _zip(jpegs))


def _fetch(server: LocalHTTPServer, out_dir: Path, **kwargs: Any) -> Path:
    kwargs.setdefault("backoff_s", 0)
    kwargs.setdefault("progress", False)
    return fetch_coco(out_dir, base_url=server.base_url, **kwargs)


def _labels(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()]


def test_class_table() -> None:
    assert len(COCO_CLASSES) == len(set(COCO_CLASSES)) == 80
    assert len(COCO_CATEGORY_IDS) == 80 and list(COCO_CATEGORY_IDS) == sorted(COCO_CATEGORY_IDS)
    assert (COCO_CLASSES[0], COCO_CLASSES[-1]) == ("person", "toothbrush")
    assert COCO_ID_TO_INDEX[1] == 0 and COCO_ID_TO_INDEX[90] == 79
    assert COCO_CLASSES[COCO_ID_TO_INDEX[18]] == "dog"
    gaps = sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS))
    assert gaps == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]


def test_official_pins_only_for_the_official_host() -> None:
    assert official_pins(COCO_BASE_URL, "zips/val2017.zip") == OFFICIAL_ARCHIVES["zips/val2017.zip"]
    assert official_pins("https://images.cocodataset.org/", "zips/val2017.zip")[0] == 815_585_330
    assert official_pins("http://127.0.0.1:8000", "zips/val2017.zip") == (None, None)


def test_fetch_val_writes_labels_and_manifest(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs)
    out_dir = tmp_path / "coco"
    assert _fetch(http_server, out_dir) == out_dir

    assert sorted(p.name for p in (out_dir / "JPEGImages").iterdir()) == sorted(image_jpegs)
    assert (out_dir / "JPEGImages" / _file(139)).read_bytes() == image_jpegs[_file(139)]
    assert _labels(out_dir / "labels" / "000000000139.txt") == [
        ["0", "0.250000", "0.291667", "0.250000", "0.416667"],
        ["79", "0.250000", "0.250000", "0.500000", "0.500000"],
    ]
    # Box [24, 16, 16, 16] in a 32x24 image is clipped to x 24..32, y 16..24.
    assert _labels(out_dir / "labels" / "000000000285.txt") == [
        ["16", "0.875000", "0.833333", "0.250000", "0.333333"]
    ]
    assert _labels(out_dir / "labels" / "000000000632.txt") == [
        ["2", "0.300000", "0.300000", "0.400000", "0.200000"]
    ]
    assert (out_dir / "labels" / "000000000724.txt").read_text() == ""

    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert list(manifest) == [
        "dataset",
        "class_names",
        "image_dir",
        "label_dir",
        "splits",
        "counts",
        "dropped_boxes",
        "crowd_boxes_skipped",
        "clipped_boxes",
        "source",
    ]
    assert manifest["dataset"] == "coco-val2017"
    assert manifest["class_names"] == list(COCO_CLASSES)
    assert manifest["image_dir"] == str((out_dir / "JPEGImages").resolve())
    assert manifest["label_dir"] == "labels"
    assert manifest["splits"] == {
        "val2017": [
            {"id": "000000000139", "file": _file(139), "width": 64, "height": 48, "boxes": 2},
            {"id": "000000000285", "file": _file(285), "width": 32, "height": 24, "boxes": 1},
            {"id": "000000000632", "file": _file(632), "width": 50, "height": 50, "boxes": 1},
            {"id": "000000000724", "file": _file(724), "width": 40, "height": 30, "boxes": 0},
        ]
    }
    counts = manifest["counts"]["val2017"]
    assert counts["images"] == 4
    assert list(counts["boxes"]) == list(COCO_CLASSES)
    assert {k: v for k, v in counts["boxes"].items() if v} == {
        "person": 1,
        "toothbrush": 1,
        "dog": 1,
        "car": 1,
    }
    assert [(d["annotation_id"], d["reason"]) for d in manifest["dropped_boxes"]] == [
        (4, "zero area"),
        (7, "outside the image"),
    ]
    assert manifest["dropped_boxes"][0] == {
        "file": _file(285),
        "class": "car",
        "reason": "zero area",
        "annotation_id": 4,
        "bbox": [10.0, 10.0, 0.0, 5.0],
    }
    assert manifest["crowd_boxes_skipped"] == 1
    assert manifest["clipped_boxes"] == 1
    assert manifest["source"] == http_server.url("/zips/val2017.zip")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".download", "coco"]


def test_max_images_takes_first_ids_and_extracts_only_those(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs)
    out_dir = tmp_path / "coco"
    _fetch(http_server, out_dir, max_images=2)
    assert sorted(p.name for p in (out_dir / "JPEGImages").iterdir()) == [_file(139), _file(285)]
    assert sorted(p.name for p in (out_dir / "labels").iterdir()) == [
        "000000000139.txt",
        "000000000285.txt",
    ]
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert [e["id"] for e in manifest["splits"]["val2017"]] == ["000000000139", "000000000285"]
    assert manifest["counts"]["val2017"]["images"] == 2
    assert sum(manifest["counts"]["val2017"]["boxes"].values()) == 3
    # The box outside image 632 belongs to an image that was left out.
    assert [d["annotation_id"] for d in manifest["dropped_boxes"]] == [4]


def test_archives_are_cached_between_calls(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs)
    cache = tmp_path / "cache"
    _fetch(http_server, tmp_path / "a", cache_dir=cache, max_images=1)
    _fetch(http_server, tmp_path / "b", cache_dir=cache)
    assert len(http_server.requests) == 2  # one per archive, first call only
    assert sorted(p.name for p in cache.iterdir()) == [
        "annotations_trainval2017.zip",
        "val2017.zip",
    ]


def test_category_table_mismatch_is_an_error(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    categories = [*CATEGORIES[:-1], {"id": 90, "name": "hair brush"}]
    serve_coco(http_server, image_jpegs, _instances(categories=categories))
    out_dir = tmp_path / "coco"
    with pytest.raises(DetbenchError, match=r"instances_val2017\.json: category 90 'hair brush'"):
        _fetch(http_server, out_dir)
    assert not out_dir.exists()


def test_missing_image_in_zip_leaves_nothing(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs, skip_image=_file(632))
    out_dir = tmp_path / "coco"
    with pytest.raises(DetbenchError, match=r"val2017/000000000632\.jpg not found"):
        _fetch(http_server, out_dir)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".download"]


def test_corrupt_annotation_archive_is_deleted(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs)
    http_server.add("/annotations/annotations_trainval2017.zip", b"PK\x03\x04 truncated")
    with pytest.raises(DetbenchError, match="not a valid zip archive"):
        _fetch(http_server, tmp_path / "coco")
    assert not (tmp_path / ".download" / "annotations_trainval2017.zip").exists()


def test_unsafe_file_name_is_refused() -> None:
    instances = _instances(
        images=[{"id": 1, "file_name": "../evil.jpg", "width": 10, "height": 10}], annotations=[]
    )
    with pytest.raises(DetbenchError, match="unsafe file_name"):
        convert_instances(instances)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError, match="split: expected one of train2017, val2017"):
        fetch_coco(tmp_path / "coco", split="test2017")
