"""Darknet .weights reading and writing (no downloads: every file is written by the test)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from detbench.errors import DetbenchError
from detbench.models import (
    YOLO,
    WeightsLoadReport,
    build_model,
    expected_weights_bytes,
    load_darknet_weights,
    save_darknet_weights,
)
from detbench.models.darknet import ConvBlock
from detbench.models.weights import conv_tensors


def randomized(name: str, num_classes: int, seed: int) -> YOLO:
    """A model whose every Darknet-stored tensor is random, BN statistics included (a fresh
    model has running mean 0 / var 1 and gamma 1 / beta 0, which would hide order mix-ups)."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes)
    with torch.no_grad():
        for block in model.modules():
            if isinstance(block, ConvBlock):
                for tensor in conv_tensors(block)[:-1]:  # all but the conv weights
                    tensor.uniform_(0.5, 1.5)  # positive: valid running variances
                    tensor.add_(torch.randn_like(tensor) * 0.1)
    return model


def conv_state(model: YOLO, layer: int) -> list[torch.Tensor]:
    block = model.layers[layer]
    assert isinstance(block, ConvBlock)
    return [t.detach().clone() for t in conv_tensors(block)]


def assert_state_equal(a: YOLO, b: YOLO) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        if not key.endswith("num_batches_tracked"):  # not part of the Darknet format
            assert torch.equal(sa[key], sb[key]), key


def write_header_variant(source: Path, target: Path, major: int, minor: int, seen: int) -> None:
    """Re-write ``source`` (a v0.2.0 file) with another version and the matching seen width."""
    body = source.read_bytes()[20:]
    seen_format = "<q" if major * 10 + minor >= 2 else "<i"
    target.write_bytes(struct.pack("<iii", major, minor, 0) + struct.pack(seen_format, seen) + body)


@pytest.fixture(scope="module")
def tiny3() -> YOLO:
    return randomized("yolov3-tiny", 3, seed=0)


@pytest.fixture(scope="module")
def tiny3_file(tiny3: YOLO, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "tiny3.weights"
    save_darknet_weights(tiny3, path, seen=123_456)
    return path


@pytest.fixture(scope="module")
def tiny80_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[YOLO, Path]:
    model = randomized("yolov3-tiny", 80, seed=1)
    path = tmp_path_factory.mktemp("weights") / "tiny80.weights"
    save_darknet_weights(model, path)
    return model, path


# --------------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------------


def test_expected_bytes_of_official_files() -> None:
    assert expected_weights_bytes("yolov3") == 248_007_048
    assert expected_weights_bytes("yolov3-tiny") == 35_434_956
    assert expected_weights_bytes("yolov3", num_classes=80) == 248_007_048
    # darknet53.conv.74, Darknet's published backbone file.
    assert expected_weights_bytes("yolov3", cutoff=75) == 162_482_580
    # A backbone does not depend on the class count.
    assert expected_weights_bytes("yolov3-tiny", 3, cutoff=15) == expected_weights_bytes(
        "yolov3-tiny", 80, cutoff=15
    )


def test_expected_bytes_errors() -> None:
    with pytest.raises(DetbenchError, match="unknown model"):
        expected_weights_bytes("yolov2")
    with pytest.raises(ValueError, match="cutoff"):
        expected_weights_bytes("yolov3-tiny", cutoff=25)


def test_saved_size_matches_expected(tiny3_file: Path) -> None:
    assert tiny3_file.stat().st_size == expected_weights_bytes("yolov3-tiny", num_classes=3)
    assert not list(tiny3_file.parent.glob("*.tmp"))  # atomic write left nothing behind


def test_file_layout_is_darknets(tiny3: YOLO, tiny3_file: Path) -> None:
    """Header, then per conv: beta, gamma, mean, var (or bias), weights (out, in, kh, kw)."""
    data = tiny3_file.read_bytes()
    assert struct.unpack("<iiiq", data[:20]) == (0, 2, 0, 123_456)
    floats = np.frombuffer(data, dtype="<f4", offset=20)
    first = tiny3.layers[0]
    assert isinstance(first, ConvBlock) and first.bn is not None
    expected_start = [
        first.bn.bias,
        first.bn.weight,
        first.bn.running_mean,
        first.bn.running_var,
        first.conv.weight,
    ]
    start = np.concatenate([t.detach().numpy().ravel() for t in expected_start])
    assert np.array_equal(floats[: start.size], start)
    last = tiny3.layers[22]  # the file ends with the last detection conv: bias, weights
    assert isinstance(last, ConvBlock) and last.conv.bias is not None
    end = np.concatenate(
        [last.conv.bias.detach().numpy(), last.conv.weight.detach().numpy().ravel()]
    )
    assert np.array_equal(floats[-end.size :], end)


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_round_trip_restores_state_and_outputs(tiny3: YOLO, tiny3_file: Path) -> None:
    fresh = build_model("yolov3-tiny", num_classes=3)
    report = load_darknet_weights(fresh, tiny3_file)
    assert isinstance(report, WeightsLoadReport)
    assert (report.major, report.minor, report.revision, report.seen) == (0, 2, 0, 123_456)
    assert report.loaded_tensors == 11 * 5 + 2 * 2  # 11 BN convs, 2 detection convs
    assert report.skipped_tensors == 0 and report.skipped_layers == ()
    assert report.loaded_layers == (0, 2, 4, 6, 8, 10, 12, 13, 14, 15, 18, 21, 22)
    assert str(tiny3_file) in report.summary()
    assert_state_equal(tiny3, fresh)

    x = torch.rand(2, 3, 64, 96)
    tiny3.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(tiny3(x)[0], fresh(x)[0])


def test_80_class_file_into_3_class_model(tiny80_file: tuple[YOLO, Path]) -> None:
    source, path = tiny80_file
    target = randomized("yolov3-tiny", 3, seed=2)
    before = {i: conv_state(target, i) for i in (15, 22)}
    report = load_darknet_weights(target, path, file_num_classes=80)
    assert report.skipped_layers == (15, 22)
    assert report.skipped_tensors == 2 * 2
    assert report.loaded_tensors == 11 * 5
    for key, value in target.state_dict().items():
        if key.startswith(("layers.15.", "layers.22.")):
            continue
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, source.state_dict()[key]), key
    for i, tensors in before.items():  # detection convs untouched
        assert all(torch.equal(a, b) for a, b in zip(tensors, conv_state(target, i), strict=True))


def test_80_class_file_without_file_num_classes_is_rejected(
    tiny80_file: tuple[YOLO, Path],
) -> None:
    _, path = tiny80_file
    with pytest.raises(DetbenchError) as info:
        load_darknet_weights(build_model("yolov3-tiny", 3), path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "left over" in message and "\n" not in message


def test_yolov3_backbone_cutoff_round_trip(tmp_path: Path) -> None:
    source = randomized("yolov3", 3, seed=3)
    path = tmp_path / "darknet53.conv.74"
    save_darknet_weights(source, path, cutoff=75)
    assert path.stat().st_size == expected_weights_bytes("yolov3", cutoff=75) == 162_482_580

    target = build_model("yolov3", num_classes=3)
    head_before = conv_state(target, 105)
    report = load_darknet_weights(target, path, cutoff=75)
    assert report.loaded_tensors == 52 * 5 and report.skipped_tensors == 0
    assert report.loaded_layers[-1] == 73  # last conv of Darknet-53 (74 is a shortcut)

    for i in report.loaded_layers:
        assert all(
            torch.equal(a, b)
            for a, b in zip(conv_state(source, i), conv_state(target, i), strict=True)
        )
    assert all(torch.equal(a, b) for a, b in zip(head_before, conv_state(target, 105), strict=True))


def test_cutoff_reads_the_start_of_a_full_file(tiny3: YOLO, tiny3_file: Path) -> None:
    target = build_model("yolov3-tiny", num_classes=3)
    report = load_darknet_weights(target, tiny3_file, cutoff=15)
    assert report.loaded_layers == (0, 2, 4, 6, 8, 10, 12, 13, 14)
    assert torch.equal(conv_state(target, 14)[-1], conv_state(tiny3, 14)[-1])
    assert not torch.equal(conv_state(target, 15)[-1], conv_state(tiny3, 15)[-1])


# --------------------------------------------------------------------------------------------
# Headers
# --------------------------------------------------------------------------------------------


def test_int32_seen_header(tiny3: YOLO, tiny3_file: Path, tmp_path: Path) -> None:
    old = tmp_path / "old.weights"
    write_header_variant(tiny3_file, old, major=0, minor=1, seen=4242)
    assert old.stat().st_size == tiny3_file.stat().st_size - 4
    target = build_model("yolov3-tiny", num_classes=3)
    report = load_darknet_weights(target, old)
    assert (report.major, report.minor, report.seen) == (0, 1, 4242)
    assert_state_equal(tiny3, target)


def test_int64_seen_header_beyond_int32(tiny3: YOLO, tiny3_file: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.weights"
    write_header_variant(tiny3_file, big, major=0, minor=2, seen=2**40)
    report = load_darknet_weights(build_model("yolov3-tiny", num_classes=3), big)
    assert report.seen == 2**40


@pytest.mark.parametrize(("major", "minor"), [(-1, 2), (1000, 0), (0, 5000)])
def test_nonsense_header(tiny3_file: Path, tmp_path: Path, major: int, minor: int) -> None:
    bad = tmp_path / "bad.weights"
    write_header_variant(tiny3_file, bad, major=major, minor=minor, seen=0)
    with pytest.raises(DetbenchError, match="not a Darknet weights file") as info:
        load_darknet_weights(build_model("yolov3-tiny", num_classes=3), bad)
    assert str(info.value).startswith(f"{bad}: ")


# --------------------------------------------------------------------------------------------
# Broken files
# --------------------------------------------------------------------------------------------


def test_truncated_file(tiny3_file: Path, tmp_path: Path) -> None:
    short = tmp_path / "short.weights"
    data = tiny3_file.read_bytes()
    short.write_bytes(data[:-4])
    with pytest.raises(DetbenchError) as info:
        load_darknet_weights(build_model("yolov3-tiny", num_classes=3), short)
    assert str(info.value) == (
        f"{short}: truncated: expected {len(data)} bytes of weights for yolov3-tiny (3 classes), "
        f"found {len(data) - 4}"
    )


@pytest.mark.parametrize("size", [0, 8, 18])
def test_file_shorter_than_header(tmp_path: Path, size: int) -> None:
    path = tmp_path / "tiny.weights"
    path.write_bytes(struct.pack("<iii", 0, 2, 0) + bytes(8))
    path.write_bytes(path.read_bytes()[:size])
    with pytest.raises(DetbenchError, match="truncated"):
        load_darknet_weights(build_model("yolov3-tiny", num_classes=3), path)


def test_trailing_bytes(tiny3_file: Path, tmp_path: Path) -> None:
    long = tmp_path / "long.weights"
    long.write_bytes(tiny3_file.read_bytes() + bytes(8))
    with pytest.raises(DetbenchError, match="8 bytes left over") as info:
        load_darknet_weights(build_model("yolov3-tiny", num_classes=3), long)
    assert str(info.value).startswith(f"{long}: ") and "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.weights"
    with pytest.raises(DetbenchError, match="not found") as info:
        load_darknet_weights(build_model("yolov3-tiny", num_classes=3), path)
    assert str(info.value).startswith(f"{path}: ")


def test_failed_load_of_a_broken_file_leaves_the_model_alone(
    tiny3_file: Path, tmp_path: Path
) -> None:
    short = tmp_path / "short.weights"
    short.write_bytes(tiny3_file.read_bytes()[:-4])
    model = build_model("yolov3-tiny", num_classes=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DetbenchError):
        load_darknet_weights(model, short)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
