"""Official Darknet starting weights: registry, verified fetch (local HTTP server), loading, and
Darknet's test-time preprocessing. No internet: every file is written by the test."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.errors import DetbenchError
from detbench.models import YOLO, build_model, expected_weights_bytes, save_darknet_weights
from detbench.models.darknet import ConvBlock
from detbench.models.darknet_files import (
    DARKNET53_BACKBONE,
    STARTING_WEIGHTS,
    YOLOV3_COCO,
    YOLOV3_TINY_COCO,
    WeightsFile,
    starting_weights,
)
from detbench.models.pretrained import (
    darknet_letterbox,
    darknet_resize,
    default_weights_dir,
    fetch_weights,
    load_pretrained,
    verify_weights,
)
from detbench.models.weights import conv_tensors

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def weights_bytes(
    floats: int = 1000, version: tuple[int, int, int] = (0, 2, 0), seed: int = 0
) -> bytes:
    """A small file with a Darknet header (int64 seen when v0.2+) and random float32 values."""
    major, minor, revision = version
    seen = struct.pack("<q" if major * 10 + minor >= 2 else "<i", 12345)
    body = np.random.default_rng(seed).standard_normal(floats).astype("<f4").tobytes()
    return struct.pack("<iii", major, minor, revision) + seen + body


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def pointed_at(
    file: WeightsFile, urls: list[str], data: bytes, *, pin_sha: bool = True
) -> WeightsFile:
    """``file`` with its URLs, size and sha256 swapped for a small test file (cutoff, class count
    and name stay the registry's)."""
    return dataclasses.replace(
        file, urls=tuple(urls), size=len(data), sha256=sha(data) if pin_sha else None
    )


def fetch(file: WeightsFile, dest_dir: Path, **kwargs: object) -> Path:
    kwargs.setdefault("backoff_s", 0)
    kwargs.setdefault("progress", False)
    return fetch_weights(file, dest_dir, **kwargs)  # type: ignore[arg-type]


def randomized(name: str, num_classes: int, seed: int) -> YOLO:
    """A model whose every Darknet-stored tensor is random, BN statistics included."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, ConvBlock):
                for tensor in conv_tensors(block)[:-1]:
                    tensor.uniform_(0.5, 1.5)
    return model


def conv_state(model: YOLO) -> dict[int, list[torch.Tensor]]:
    return {
        i: [t.detach().clone() for t in conv_tensors(block)]
        for i, block in enumerate(model.layers)
        if isinstance(block, ConvBlock)
    }


def detection_indices(model: YOLO) -> set[int]:
    return {i - 1 for i in model.yolo_indices}


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[YOLO, Path]:
    """A random 80-class yolov3-tiny and its Darknet file (the size of the official one)."""
    model = randomized("yolov3-tiny", 80, seed=1)
    path = tmp_path_factory.mktemp("src") / "yolov3-tiny.weights"
    save_darknet_weights(model, path, seen=32013312)
    return model, path


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "kind", "name", "cutoff", "pinned"),
    [
        ("yolov3", "coco", "yolov3.weights", None, True),
        ("yolov3", "backbone", "darknet53.conv.74", 75, False),
        ("yolov3-tiny", "coco", "yolov3-tiny.weights", None, True),
        ("yolov3-tiny", "backbone", "yolov3-tiny.weights", 15, True),
    ],
)
def test_registry_gives_the_official_files(
    model: str, kind: str, name: str, cutoff: int | None, pinned: bool
) -> None:
    file = starting_weights(model, kind)
    assert file is not None
    assert (file.name, file.cutoff, file.file_num_classes) == (name, cutoff, 80)
    assert (file.sha256 is not None) == pinned
    if file.sha256 is not None:
        assert len(file.sha256) == 64 and file.sha256 == file.sha256.lower()
    assert file.urls[0] == f"https://pjreddie.com/media/files/{name}"
    assert all(url.startswith("https://") and url.endswith("/" + name) for url in file.urls)
    assert len(file.urls) >= 2  # a fallback after the primary


def test_registry_sizes_match_the_architectures() -> None:
    assert YOLOV3_COCO.size == expected_weights_bytes("yolov3") == 248_007_048
    assert YOLOV3_TINY_COCO.size == expected_weights_bytes("yolov3-tiny") == 35_434_956
    assert DARKNET53_BACKBONE.size == expected_weights_bytes("yolov3", cutoff=75) == 162_482_580
    tiny_backbone = starting_weights("yolov3-tiny", "backbone")
    assert tiny_backbone is not None
    # The tiny backbone is cut from the whole COCO file on load: same download, same checks.
    assert (tiny_backbone.name, tiny_backbone.size, tiny_backbone.sha256) == (
        YOLOV3_TINY_COCO.name,
        YOLOV3_TINY_COCO.size,
        YOLOV3_TINY_COCO.sha256,
    )
    assert set(STARTING_WEIGHTS) == {
        (m, k) for m in ("yolov3", "yolov3-tiny") for k in ("backbone", "coco")
    }


def test_scratch_has_no_file() -> None:
    assert starting_weights("yolov3", "scratch") is None
    assert starting_weights("yolov3-tiny", "scratch") is None


def test_unknown_kind_names_the_config_key() -> None:
    with pytest.raises(DetbenchError, match=r"^models\.yolov3-tiny\.weights: .*'imagenet'"):
        starting_weights("yolov3-tiny", "imagenet")


def test_unknown_model_names_the_config_key() -> None:
    with pytest.raises(DetbenchError, match=r"^models\.yolov4: unknown model"):
        starting_weights("yolov4", "coco")


def test_default_weights_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DETBENCH_WEIGHTS_DIR", str(tmp_path / "shared"))
    assert default_weights_dir() == tmp_path / "shared"
    monkeypatch.delenv("DETBENCH_WEIGHTS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_weights_dir() == tmp_path / "xdg" / "detbench" / "weights"


# --------------------------------------------------------------------------------------------
# Fetch
# --------------------------------------------------------------------------------------------


def test_primary_404_then_mirror(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    data = weights_bytes()
    primary = http_server.url("/media/files/yolov3.weights")  # nothing served there: 404
    mirror = http_server.add("/mirror/yolov3.weights", data)
    file = pointed_at(YOLOV3_COCO, [primary, mirror], data)
    path = fetch(file, tmp_path / "cache")
    assert path == tmp_path / "cache" / "yolov3.weights"
    assert path.read_bytes() == data
    assert [(r.path, r.status) for r in http_server.requests] == [
        ("/media/files/yolov3.weights", 404),
        ("/mirror/yolov3.weights", 200),
    ]


def test_bad_bytes_from_one_url_fall_over_to_the_next(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    data = weights_bytes()
    urls = [
        http_server.url("/gone"),
        http_server.add("/html", b"<html>moved</html>"),  # a 200 that is not the file
        http_server.add("/good", data),
    ]
    path = fetch(pointed_at(YOLOV3_TINY_COCO, urls, data), tmp_path)
    assert path.read_bytes() == data
    assert [r.path for r in http_server.requests] == ["/gone", "/html", "/good"]
    assert not list(tmp_path.glob("*.part"))


def test_size_mismatch_is_one_line_naming_the_url(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    # The registry entry as it is (official size), served a small file.
    url = http_server.add("/yolov3-tiny.weights", weights_bytes())
    file = dataclasses.replace(YOLOV3_TINY_COCO, urls=(url,))
    with pytest.raises(DetbenchError) as info:
        fetch(file, tmp_path)
    message = str(info.value)
    assert message.startswith("yolov3-tiny.weights: ")
    assert url in message and "size mismatch: expected 35434956 bytes" in message
    assert "\n" not in message
    assert list(tmp_path.iterdir()) == [tmp_path / ".yolov3-tiny.weights.lock"]


def test_sha256_mismatch(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    data = weights_bytes()
    url = http_server.add("/f", data)
    file = dataclasses.replace(pointed_at(YOLOV3_COCO, [url], data), sha256="ab" * 32)
    with pytest.raises(
        DetbenchError, match=rf"{url}: sha256 mismatch: expected (ab)+, got {sha(data)}"
    ):
        fetch(file, tmp_path)
    assert not (tmp_path / "yolov3.weights").exists()


def test_every_url_failing_lists_each(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    data = weights_bytes()
    urls = [http_server.url("/a"), http_server.url("/b")]
    with pytest.raises(DetbenchError) as info:
        fetch(pointed_at(YOLOV3_COCO, urls, data), tmp_path)
    message = str(info.value)
    assert "no usable download from 2 URL(s)" in message
    assert f"{urls[0]}: HTTP 404" in message and f"{urls[1]}: HTTP 404" in message


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (weights_bytes(version=(5000, 2, 0)), "header version 5000.2.0"),
        (weights_bytes(version=(-1, 0, 0)), "header version -1.0.0"),
        (weights_bytes(version=(0, 1, 0)), "has a 4-byte 'seen'"),
        (b"\x00" * 12, "too short for a Darknet header"),
    ],
)
def test_bad_header_without_sha256_is_rejected(
    http_server: LocalHTTPServer, tmp_path: Path, data: bytes, problem: str
) -> None:
    url = http_server.add("/darknet53.conv.74", data)
    file = pointed_at(DARKNET53_BACKBONE, [url], data, pin_sha=False)
    with pytest.raises(DetbenchError, match=f"{url}: .*{problem}"):
        fetch(file, tmp_path)
    assert not (tmp_path / "darknet53.conv.74").exists()


def test_existing_verified_file_makes_no_request(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    data = weights_bytes()
    url = http_server.add("/f", data)
    (tmp_path / "yolov3.weights").write_bytes(data)
    assert fetch(pointed_at(YOLOV3_COCO, [url], data), tmp_path).read_bytes() == data
    assert http_server.requests == []


def test_existing_corrupt_file_is_replaced(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    data = weights_bytes()
    url = http_server.add("/f", data)
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # same size, other bytes
    (tmp_path / "yolov3.weights").write_bytes(bytes(corrupt))
    assert fetch(pointed_at(YOLOV3_COCO, [url], data), tmp_path).read_bytes() == data
    assert len(http_server.requests) == 1


def test_local_copy_is_verified_and_used_without_requests(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    data = weights_bytes()
    url = http_server.add("/f", data)
    local = tmp_path / "downloads" / "my-yolov3.weights"
    local.parent.mkdir()
    local.write_bytes(data)
    path = fetch(pointed_at(YOLOV3_COCO, [url], data), tmp_path / "cache", local_copy=local)
    assert path == tmp_path / "cache" / "yolov3.weights"
    assert path.read_bytes() == data
    assert http_server.requests == []
    assert local.read_bytes() == data  # the user's file is left alone


def test_bad_local_copy_is_an_error_naming_it(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    data = weights_bytes()
    local = tmp_path / "yolov3.weights.bak"
    local.write_bytes(weights_bytes(seed=1))  # right size, other bytes
    file = pointed_at(YOLOV3_COCO, [http_server.add("/f", data)], data)
    with pytest.raises(DetbenchError, match=rf"^{local}: sha256 mismatch"):
        fetch(file, tmp_path / "cache", local_copy=local)
    with pytest.raises(DetbenchError, match=r"missing\.weights: file not found"):
        fetch(file, tmp_path / "cache", local_copy=tmp_path / "missing.weights")
    assert http_server.requests == []
    assert not (tmp_path / "cache" / "yolov3.weights").exists()


def test_verify_weights_checks_the_official_size(tmp_path: Path) -> None:
    path = tmp_path / "yolov3.weights"
    path.write_bytes(weights_bytes())
    with pytest.raises(DetbenchError, match="size mismatch: expected 248007048 bytes"):
        verify_weights(YOLOV3_COCO, path)


def test_concurrent_fetches_download_once(http_server: LocalHTTPServer, tmp_path: Path) -> None:
    """Parallel jobs sharing a cache: the second waits for the first instead of writing the same
    part file. The first request fails (503) so the first fetch is still busy, backing off,
    when the second starts."""
    data = weights_bytes(floats=100_000)
    url = http_server.add("/f", data, fail_first=1)
    file = pointed_at(YOLOV3_COCO, [url], data)
    barrier = threading.Barrier(2)
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            results.append(fetch(file, tmp_path, backoff_s=0.3))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert results == [tmp_path / "yolov3.weights"] * 2
    assert [r.status for r in http_server.requests] == [503, 200]


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def test_fetch_and_load_tiny_coco_into_three_classes(
    http_server: LocalHTTPServer,
    tmp_path: Path,
    tiny_source: tuple[YOLO, Path],
    caplog: pytest.LogCaptureFixture,
) -> None:
    source, source_path = tiny_source
    data = source_path.read_bytes()
    assert len(data) == YOLOV3_TINY_COCO.size  # a file the size of the official one
    urls = [http_server.url("/missing"), http_server.add("/yolov3-tiny.weights", data)]
    path = fetch(pointed_at(YOLOV3_TINY_COCO, urls, data), tmp_path)

    torch.manual_seed(7)
    model = build_model("yolov3-tiny", 3)
    before = conv_state(model)
    with caplog.at_level(logging.INFO, logger="detbench.models.pretrained"):
        report = load_pretrained(model, "coco", path)

    expected, after = conv_state(source), conv_state(model)
    detection = detection_indices(model)
    assert detection == {15, 22}
    for index, tensors in after.items():
        if index in detection:
            assert same(tensors, before[index]), index  # untouched
        else:
            assert same(tensors, expected[index]), index
    # 11 convs with BN (beta, gamma, mean, var, weights) + 2 detection convs (bias, weights)
    assert (report.loaded_tensors, report.skipped_tensors) == (55, 4)
    assert report.skipped_layers == (15, 22)
    assert report.seen == 32013312
    assert "loaded 55 tensors, skipped 4 (detection layers for 3 classes)" in caplog.text


def test_coco_into_80_classes_reproduces_the_source(tiny_source: tuple[YOLO, Path]) -> None:
    source, path = tiny_source
    model = build_model("yolov3-tiny", 80)
    report = load_pretrained(model, "coco", path)
    assert (report.loaded_tensors, report.skipped_tensors) == (11 * 5 + 2 * 2, 0)
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    source.eval()
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x)[0], source(x)[0])


def test_tiny_backbone_is_the_first_15_layers_of_the_coco_file(
    tiny_source: tuple[YOLO, Path],
) -> None:
    source, path = tiny_source
    torch.manual_seed(8)
    model = build_model("yolov3-tiny", 3)
    before = conv_state(model)
    report = load_pretrained(model, "backbone", path)
    expected, after = conv_state(source), conv_state(model)
    assert {i for i in after if i < 15} == {0, 2, 4, 6, 8, 10, 12, 13, 14}
    for index, tensors in after.items():
        assert same(tensors, expected[index] if index < 15 else before[index]), index
    assert (report.loaded_tensors, report.skipped_tensors) == (9 * 5, 0)
    assert report.loaded_layers == (0, 2, 4, 6, 8, 10, 12, 13, 14)


# The coco case writes and reads a 248 MB file (several seconds).
@pytest.mark.parametrize("kind", [pytest.param("coco", marks=pytest.mark.slow), "backbone"])
def test_yolov3_into_three_classes(kind: str, tmp_path: Path) -> None:
    """yolov3 files of the official sizes (248 MB / 162 MB), written here from a random model."""
    source = randomized("yolov3", 80, seed=2)
    file = starting_weights("yolov3", kind)
    assert file is not None
    path = tmp_path / file.name
    save_darknet_weights(source, path, cutoff=file.cutoff)
    assert path.stat().st_size == file.size
    torch.manual_seed(9)
    model = build_model("yolov3", 3)
    before = conv_state(model)
    report = load_pretrained(model, kind, path)
    expected, after = conv_state(source), conv_state(model)
    detection = detection_indices(model)
    assert detection == {81, 93, 105}
    for index, tensors in after.items():
        loaded = index not in detection and (file.cutoff is None or index < file.cutoff)
        assert same(tensors, expected[index] if loaded else before[index]), index
    if kind == "coco":  # 72 convs with BN, 3 detection convs
        assert (report.loaded_tensors, report.skipped_tensors) == (72 * 5, 3 * 2)
    else:  # Darknet-53: 52 convs
        assert (report.loaded_tensors, report.skipped_tensors) == (52 * 5, 0)


def test_corrupt_header_is_an_error(tmp_path: Path, tiny_source: tuple[YOLO, Path]) -> None:
    _, source_path = tiny_source
    data = bytearray(source_path.read_bytes())
    data[0:4] = struct.pack("<i", 123456)
    path = tmp_path / "yolov3-tiny.weights"
    path.write_bytes(bytes(data))
    with pytest.raises(DetbenchError, match=rf"^{path}: not a Darknet weights file"):
        load_pretrained(build_model("yolov3-tiny", 3), "coco", path)


def test_truncated_file_is_an_error(tmp_path: Path, tiny_source: tuple[YOLO, Path]) -> None:
    _, source_path = tiny_source
    path = tmp_path / "yolov3-tiny.weights"
    path.write_bytes(source_path.read_bytes()[:-4])
    with pytest.raises(DetbenchError, match=rf"^{path}: truncated"):
        load_pretrained(build_model("yolov3-tiny", 3), "coco", path)


def test_scratch_cannot_be_loaded(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError, match=r"^models\.yolov3-tiny\.weights: 'scratch'"):
        load_pretrained(build_model("yolov3-tiny", 3), "scratch", tmp_path / "x")


# --------------------------------------------------------------------------------------------
# Darknet's preprocessing
# --------------------------------------------------------------------------------------------


def c_resize_image(im: np.ndarray, w: int, h: int) -> np.ndarray:
    """Line-by-line transcription of Darknet's src/image.c resize_image, in float32."""
    channels, in_h, in_w = im.shape
    f = np.float32
    resized = np.zeros((channels, h, w), f)
    part = np.zeros((channels, in_h, w), f)
    w_scale = f(in_w - 1) / f(w - 1)
    h_scale = f(in_h - 1) / f(h - 1)
    for k in range(channels):
        for r in range(in_h):
            for c in range(w):
                if c == w - 1 or in_w == 1:
                    val = im[k, r, in_w - 1]
                else:
                    sx = f(c) * w_scale
                    ix = int(sx)
                    dx = sx - f(ix)
                    val = (f(1) - dx) * im[k, r, ix] + dx * im[k, r, ix + 1]
                part[k, r, c] = val
    for k in range(channels):
        for r in range(h):
            sy = f(r) * h_scale
            iy = int(sy)
            dy = sy - f(iy)
            for c in range(w):
                resized[k, r, c] = (f(1) - dy) * part[k, iy, c]
            if r == h - 1 or in_h == 1:
                continue
            for c in range(w):
                resized[k, r, c] += dy * part[k, iy + 1, c]
    return resized


@pytest.mark.parametrize(
    ("in_hw", "out_wh"), [((9, 13), (7, 5)), ((5, 4), (11, 9)), ((6, 6), (6, 6))]
)
def test_darknet_resize_matches_the_c_code(in_hw: tuple[int, int], out_wh: tuple[int, int]) -> None:
    image = np.random.default_rng(3).random((3, *in_hw), dtype=np.float32)
    assert np.array_equal(darknet_resize(image, *out_wh), c_resize_image(image, *out_wh))


def test_darknet_letterbox_pads_with_half_grey_and_maps_boxes_back() -> None:
    image = np.random.default_rng(4).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    canvas, placement = darknet_letterbox(image, 416)
    assert canvas.shape == (3, 416, 416) and canvas.dtype == np.float32
    assert (placement.new_width, placement.new_height) == (416, 312)
    assert np.all(canvas[:, :52] == 0.5) and np.all(canvas[:, 364:] == 0.5)
    content = canvas[:, 52:364]
    assert np.array_equal(
        content, darknet_resize(image.transpose(2, 0, 1).astype(np.float32) / 255, 416, 312)
    )
    assert np.allclose(placement.to_original(np.array([[0, 52, 416, 364.0]])), [[0, 0, 640, 480]])
    # Integer truncation as in C: 427 * 416 / 640 = 277.55 -> 277; pad (416 - 277) // 2 = 69.
    _, odd = darknet_letterbox(np.zeros((427, 640, 3), np.uint8), 416)
    assert odd.new_height == 277
