"""fetch_coco against a local server serving tiny fake COCO archives with tricky annotations."""

from __future__ import annotations

import io
import json
import logging
import re
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data import remote_zip
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


ANNOTATIONS_PATH = "/annotations/annotations_trainval2017.zip"
IMAGES_PATH = "/zips/val2017.zip"


def serve_coco(
    server: LocalHTTPServer,
    image_jpegs: dict[str, bytes],
    instances: dict[str, Any] | None = None,
    *,
    skip_image: str | None = None,
    ranges: bool = True,
) -> dict[str, bytes]:
    """Serve both archives (``ranges=False``: as a server without range support); returns them."""
    ann_json = json.dumps(instances or _instances()).encode()
    # other.json first: a range download must fetch none of it, not even with the tail.
    annotations = _zip(
        {"annotations/other.json": b"{}" * 500, "annotations/instances_val2017.json": ann_json}
    )
    jpegs = {f"val2017/{name}": data for name, data in image_jpegs.items() if name != skip_image}
    archives = {ANNOTATIONS_PATH: annotations, IMAGES_PATH: _zip(jpegs)}
    for path, data in archives.items():
        server.add(path, data, ignore_range=not ranges)
    return archives


def _fetch(server: LocalHTTPServer, out_dir: Path, **kwargs: Any) -> Path:
    kwargs.setdefault("backoff_s", 0)
    kwargs.setdefault("progress", False)
    return fetch_coco(out_dir, base_url=server.base_url, **kwargs)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _fetched_members(server: LocalHTTPServer, path: str, archive: bytes) -> set[str]:
    """The members of the served ``archive`` of which the requests for ``path`` asked any byte."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        starts = sorted((info.header_offset, info.filename) for info in zf.infolist())
        ends = [start for start, _ in starts[1:]] + [zf.start_dir]
    spans = {name: (start, end) for (start, name), end in zip(starts, ends, strict=True)}
    fetched: set[str] = set()
    for record in server.requests_for(path):
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", record.range or "")
        if match is None:  # no Range: the whole archive
            return set(spans)
        first, last = match.groups()
        if first:
            lo, hi = int(first), int(last) + 1
        else:
            lo, hi = len(archive) - int(last), len(archive)
        fetched |= {name for name, (start, end) in spans.items() if lo < end and start < hi}
    return fetched


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


@pytest.fixture
def short_tail_coco(
    http_server: LocalHTTPServer, image_jpegs: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> dict[str, bytes]:
    """The archives, served with ranges, and a first read shorter than their directories (as
    1 MiB is for the real train2017.zip): the tail must not bring any member along."""
    monkeypatch.setattr(remote_zip, "TAIL_BYTES", 100)
    return serve_coco(http_server, image_jpegs)


def test_subset_fetches_only_its_files_by_range(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    image_jpegs: dict[str, bytes],
    short_tail_coco: dict[str, bytes],
) -> None:
    archives = short_tail_coco
    out_dir = tmp_path / "coco"
    _fetch(http_server, out_dir, max_images=2)
    assert _fetched_members(http_server, IMAGES_PATH, archives[IMAGES_PATH]) == {
        f"val2017/{_file(139)}",
        f"val2017/{_file(285)}",
    }
    assert _fetched_members(http_server, ANNOTATIONS_PATH, archives[ANNOTATIONS_PATH]) == {
        "annotations/instances_val2017.json"
    }
    assert all(r.status == 206 for r in http_server.requests)
    assert _tree(out_dir / "JPEGImages") == {f: image_jpegs[f] for f in (_file(139), _file(285))}
    assert _labels(out_dir / "labels" / "000000000285.txt") == [
        ["16", "0.875000", "0.833333", "0.250000", "0.333333"]
    ]
    cache = tmp_path / ".download"
    assert sorted(p.name for p in cache.iterdir()) == ["instances_val2017.json", "val2017"]
    assert sorted(p.name for p in (cache / "val2017").iterdir()) == [_file(139), _file(285)]


def test_subset_resumes_an_image_after_a_cut_connection(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    image_jpegs: dict[str, bytes],
    short_tail_coco: dict[str, bytes],
) -> None:
    archives = short_tail_coco
    with zipfile.ZipFile(io.BytesIO(archives[IMAGES_PATH])) as zf:
        start = zf.getinfo(f"val2017/{_file(285)}").header_offset
    cut = start + 500
    http_server.add(IMAGES_PATH, archives[IMAGES_PATH], cut_at=cut)
    out_dir = tmp_path / "coco"
    _fetch(http_server, out_dir, max_images=2)
    assert (out_dir / "JPEGImages" / _file(285)).read_bytes() == image_jpegs[_file(285)]
    ranges = [r.range for r in http_server.requests_for(IMAGES_PATH)]
    (cut_request,) = [r for r in ranges if r and r.startswith(f"bytes={start}-")]
    assert ranges[ranges.index(cut_request) + 1] == f"bytes={cut}-{cut_request.split('-')[-1]}"
    assert not list((tmp_path / ".download" / "val2017").glob("*.zipped*"))


def test_without_ranges_whole_archives_are_downloaded_and_the_log_says_so(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    image_jpegs: dict[str, bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    serve_coco(http_server, image_jpegs, ranges=False)
    out_dir = tmp_path / "coco"
    with caplog.at_level(logging.WARNING, logger="detbench.data.coco"):
        _fetch(http_server, out_dir, max_images=2)
    assert sorted(p.name for p in (out_dir / "JPEGImages").iterdir()) == [_file(139), _file(285)]
    for path in (ANNOTATIONS_PATH, IMAGES_PATH):
        url = http_server.url(path)
        assert (
            f"{url}: server ignored a Range request (HTTP 200); "
            "downloading the whole archive instead" in caplog.messages
        )
        # The range request (its 200 body left unread), then one plain download.
        assert [r.range is None for r in http_server.requests_for(path)] == [False, True]
    assert sorted(p.name for p in (tmp_path / ".download").iterdir()) == [
        "annotations_trainval2017.zip",
        "val2017.zip",
    ]


def test_subset_by_range_matches_whole_archive_conversion(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs)
    by_range = _fetch(http_server, tmp_path / "range", max_images=3, cache_dir=tmp_path / "c1")
    serve_coco(http_server, image_jpegs, ranges=False)
    whole = _fetch(http_server, tmp_path / "whole", max_images=3, cache_dir=tmp_path / "c2")
    everything = _fetch(http_server, tmp_path / "all", cache_dir=tmp_path / "c2")
    assert (tmp_path / "c2" / "val2017.zip").exists() and not (
        tmp_path / "c1" / "val2017.zip"
    ).exists()

    manifests = [json.loads((d / "manifest.json").read_text()) for d in (by_range, whole)]
    for manifest in manifests:
        del manifest["image_dir"]  # the output folder's own path
    assert manifests[0] == manifests[1]
    tree = _tree(by_range)
    del tree["manifest.json"]
    assert len(tree) == 6  # 3 images, 3 label files
    assert tree == {k: v for k, v in _tree(whole).items() if k != "manifest.json"}
    assert tree == {k: v for k, v in _tree(everything).items() if k in tree}


def test_archives_are_cached_between_calls(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    serve_coco(http_server, image_jpegs)
    cache = tmp_path / "cache"
    _fetch(http_server, tmp_path / "a", cache_dir=cache, max_images=1)
    # By range: the annotation zip's tail and instances JSON, the image zip's tail and 1 image.
    assert len(http_server.requests) == 4
    _fetch(http_server, tmp_path / "b", cache_dir=cache, max_images=1)
    assert len(http_server.requests) == 4  # all of it in the cache
    _fetch(http_server, tmp_path / "c", cache_dir=cache, max_images=2)
    assert len(http_server.requests) == 6  # the image zip's tail and the one new image
    _fetch(http_server, tmp_path / "d", cache_dir=cache)
    assert len(http_server.requests) == 7  # the whole image zip: every image is wanted
    _fetch(http_server, tmp_path / "e", cache_dir=cache, max_images=3)
    assert len(http_server.requests) == 7  # the whole zip is there now: images come from it
    assert sorted(p.name for p in cache.iterdir()) == [
        "instances_val2017.json",
        "val2017",
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


@pytest.mark.parametrize("ranges", [True, False], ids=["by-range", "whole"])
def test_corrupt_annotation_archive_is_an_error(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes], ranges: bool
) -> None:
    serve_coco(http_server, image_jpegs, ranges=ranges)
    http_server.add(ANNOTATIONS_PATH, b"PK\x03\x04 truncated", ignore_range=not ranges)
    with pytest.raises(DetbenchError, match="not a valid zip archive"):
        _fetch(http_server, tmp_path / "coco")
    # A corrupt archive in the cache is deleted, so that the next run downloads it again.
    assert list((tmp_path / ".download").glob("*")) == []


def test_unsafe_file_name_is_refused() -> None:
    instances = _instances(
        images=[{"id": 1, "file_name": "../evil.jpg", "width": 10, "height": 10}], annotations=[]
    )
    with pytest.raises(DetbenchError, match="unsafe file_name"):
        convert_instances(instances)


def test_unknown_split_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError, match="split: expected one of train2017, val2017"):
        fetch_coco(tmp_path / "coco", splits=["test2017"])


# Training images: ids disjoint from the val images', as COCO's are.
TRAIN_IMAGES = {9: (48, 36), 25: (40, 40), 30: (36, 48)}


def test_train_and_val_splits_in_one_dataset(
    http_server: LocalHTTPServer, tmp_path: Path, image_jpegs: dict[str, bytes]
) -> None:
    """A study's train2017 and val2017 subsets: one manifest with both splits, each split's
    first ``max_images`` by id, only those members fetched from each zip."""
    train_jpegs = {_file(i): _jpeg(w, h, seed=i) for i, (w, h) in TRAIN_IMAGES.items()}
    train_instances = {
        "images": [
            {"id": i, "file_name": _file(i), "width": w, "height": h}
            for i, (w, h) in TRAIN_IMAGES.items()
        ],
        "annotations": [
            {"id": 100 + i, "image_id": i, "category_id": 1, "bbox": [2, 2, 10, 10], "iscrowd": 0}
            for i in TRAIN_IMAGES
        ],
        "categories": CATEGORIES,
    }
    annotations = _zip(
        {
            "annotations/instances_train2017.json": json.dumps(train_instances).encode(),
            "annotations/instances_val2017.json": json.dumps(_instances()).encode(),
        }
    )
    http_server.add(ANNOTATIONS_PATH, annotations)
    http_server.add(IMAGES_PATH, _zip({f"val2017/{n}": d for n, d in image_jpegs.items()}))
    # The image not chosen first, and a large member last: the zip's tail (its directory,
    # fetched first) then holds no image.
    padding = np.random.default_rng(0).bytes(3 << 20)  # > the 1 MiB tail fetched
    order = [_file(30), _file(9), _file(25)]
    train_members = {f"train2017/{n}": train_jpegs[n] for n in order}
    train_zip = _zip(train_members | {"train2017/padding.bin": padding})
    http_server.add("/zips/train2017.zip", train_zip)

    out_dir = _fetch(http_server, tmp_path / "coco", splits=["train2017", "val2017"], max_images=2)

    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["dataset"] == "coco-train2017+val2017"
    assert {split: [e["id"] for e in entries] for split, entries in manifest["splits"].items()} == {
        "train2017": ["000000000009", "000000000025"],
        "val2017": ["000000000139", "000000000285"],
    }
    assert [manifest["counts"][s]["images"] for s in ("train2017", "val2017")] == [2, 2]
    assert manifest["source"] == [
        http_server.url("/zips/train2017.zip"),
        http_server.url("/zips/val2017.zip"),
    ]
    assert _fetched_members(http_server, "/zips/train2017.zip", train_zip) - {
        "train2017/padding.bin"
    } == {
        f"train2017/{_file(9)}",
        f"train2017/{_file(25)}",
    }
    assert (out_dir / "JPEGImages" / _file(25)).read_bytes() == train_jpegs[_file(25)]
    assert _labels(out_dir / "labels" / "000000000009.txt") == [
        ["0", "0.145833", "0.194444", "0.208333", "0.277778"]  # bbox 2,2,10,10 in 48x36
    ]
    # Both splits read as the workflow reads them.
    from detbench.data.manifest import DatasetManifest

    loaded = DatasetManifest.load(out_dir)
    assert [r.id for r in loaded.records("train2017")] == ["000000000009", "000000000025"]
    assert len(loaded.records("val2017")) == 2


def test_a_study_fetches_its_train_and_eval_splits_and_refuses_other_names() -> None:
    from detbench.data.prepare import coco_splits

    study = {"train_split": "train2017", "eval_split": "val2017"}
    assert coco_splits(study) == ["train2017", "val2017"]
    assert coco_splits({"train_split": "val2017", "eval_split": "val2017"}) == ["val2017"]
    with pytest.raises(DetbenchError, match=r"dataset\.train_split: COCO's splits are "):
        coco_splits({"train_split": "train", "eval_split": "val2017"})
