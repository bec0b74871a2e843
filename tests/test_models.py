"""YOLOv3 / YOLOv3-tiny architecture, shapes and decoding.

Shape checks on the 62M-parameter YOLOv3 run on the "meta" device (shapes only, no compute),
so the suite stays fast; real forwards use YOLOv3-tiny or small inputs.
"""

from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from detbench.errors import DetbenchError
from detbench.models import MODEL_NAMES, YOLO, build_model
from detbench.models.darknet import (
    MAX_LOG_WH,
    Conv,
    ConvBlock,
    DarknetMaxPool,
    LayerSpec,
    MaxPool,
    MaxPoolKeepingNoIndices,
    Route,
    Shortcut,
    Upsample,
    YoloHead,
)


def meta_model(name: str, num_classes: int) -> YOLO:
    with torch.device("meta"):
        return build_model(name, num_classes)


def describe(spec: LayerSpec) -> str:
    """Compact cfg-like notation: c<filters>/<size>/<stride>, d<filters> (linear detection conv),
    s<from>, r<layers>, up, mp<size>/<stride>, yolo<mask>."""
    if isinstance(spec, Conv):
        if not spec.batch_normalize:
            assert spec.activation == "linear" and spec.size == 1
            return f"d{spec.filters}"
        assert spec.activation == "leaky"
        return f"c{spec.filters}/{spec.size}/{spec.stride}"
    if isinstance(spec, Shortcut):
        return f"s{spec.from_}"
    if isinstance(spec, Route):
        return "r" + ",".join(map(str, spec.layers))
    if isinstance(spec, Upsample):
        return f"up{spec.stride}"
    if isinstance(spec, MaxPool):
        return f"mp{spec.size}/{spec.stride}"
    assert isinstance(spec, YoloHead)
    return "yolo" + "".join(map(str, spec.mask))


@pytest.fixture(scope="module")
def tiny3() -> YOLO:
    torch.manual_seed(0)
    return build_model("yolov3-tiny", num_classes=3)


@pytest.fixture(scope="module")
def yolov3_3() -> YOLO:
    torch.manual_seed(0)
    return build_model("yolov3", num_classes=3)


def residuals(filters: int, n: int) -> list[str]:
    return [f"c{filters // 2}/1/1", f"c{filters}/3/1", "s-3"] * n


def head(filters: int) -> list[str]:
    return [f"c{filters}/1/1", f"c{2 * filters}/3/1"] * 3


# Transcribed section by section from Darknet's cfg/yolov3.cfg (80 classes: 255 filters).
YOLOV3_CFG = [
    "c32/3/1",
    "c64/3/2", *residuals(64, 1),
    "c128/3/2", *residuals(128, 2),
    "c256/3/2", *residuals(256, 8),
    "c512/3/2", *residuals(512, 8),
    "c1024/3/2", *residuals(1024, 4),
    *head(512), "d255", "yolo678",
    "r-4", "c256/1/1", "up2", "r-1,61",
    *head(256), "d255", "yolo345",
    "r-4", "c128/1/1", "up2", "r-1,36",
    *head(128), "d255", "yolo012",
]  # fmt: skip

# cfg/yolov3-tiny.cfg, with the stride-16 mask 1,2,3 of the official weights' cfg.
YOLOV3_TINY_CFG = [
    "c16/3/1", "mp2/2", "c32/3/1", "mp2/2", "c64/3/1", "mp2/2", "c128/3/1", "mp2/2",
    "c256/3/1", "mp2/2", "c512/3/1", "mp2/1", "c1024/3/1",
    "c256/1/1", "c512/3/1", "d255", "yolo345",
    "r-4", "c128/1/1", "up2", "r-1,8", "c256/3/1", "d255", "yolo123",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def test_model_names() -> None:
    assert MODEL_NAMES == ("yolov3", "yolov3-tiny")


def test_unknown_model_name_lists_valid_names() -> None:
    with pytest.raises(DetbenchError) as info:
        build_model("yolov4", num_classes=3)
    message = str(info.value)
    assert "yolov4" in message and "yolov3, yolov3-tiny" in message and "\n" not in message


@pytest.mark.parametrize("num_classes", [0, -1, 2.5, True])
def test_bad_num_classes(num_classes: object) -> None:
    with pytest.raises(DetbenchError, match="num_classes"):
        build_model("yolov3-tiny", num_classes=num_classes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "cfg", "counts"),
    [
        ("yolov3", YOLOV3_CFG, {Conv: 75, Shortcut: 23, Route: 4, Upsample: 2, YoloHead: 3}),
        (
            "yolov3-tiny",
            YOLOV3_TINY_CFG,
            {Conv: 13, MaxPool: 6, Route: 2, Upsample: 1, YoloHead: 2},
        ),
    ],
)
def test_layers_follow_darknet_cfg(name: str, cfg: list[str], counts: dict[type, int]) -> None:
    model = meta_model(name, 80)
    assert [describe(spec) for spec in model.layer_specs] == cfg
    assert len(model.layer_specs) == sum(counts.values()) == len(model.layers)
    assert Counter(type(spec) for spec in model.layer_specs) == counts


def test_yolov3_backbone_ends_at_layer_74_and_routes_read_stage_outputs() -> None:
    model = meta_model("yolov3", 80)
    assert isinstance(model.layer_specs[74], Shortcut)
    assert isinstance(model.layer_specs[75], Conv)
    assert model.yolo_indices == [82, 94, 106]
    # route -1, 61 / -1, 36 read the last shortcut of the stride-16 / stride-8 stages.
    assert model.sources[86] == (85, 61) and model.shapes[61].stride == 16
    assert model.sources[98] == (97, 36) and model.shapes[36].stride == 8
    assert model.sources[83] == (79,) and model.sources[95] == (91,)


@pytest.mark.parametrize(("name", "expected"), [("yolov3", 61_949_149), ("yolov3-tiny", 8_852_366)])
def test_parameter_count_with_80_classes(name: str, expected: int) -> None:
    model = meta_model(name, 80)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_conv_blocks_are_darknet_style() -> None:
    model = meta_model("yolov3-tiny", 3)
    first = model.layers[0]
    assert isinstance(first, ConvBlock) and first.bn is not None
    assert first.conv.bias is None and first.conv.padding == (1, 1)
    assert first.bn.eps == 1e-5
    assert isinstance(first.act, torch.nn.LeakyReLU) and first.act.negative_slope == 0.1
    detection = model.layers[15]
    assert isinstance(detection, ConvBlock) and detection.bn is None
    assert detection.conv.bias is not None and detection.conv.kernel_size == (1, 1)
    assert detection.conv.out_channels == 3 * (5 + 3)
    # state_dict keys carry Darknet layer numbers.
    assert "layers.22.conv.weight" in model.state_dict()


@pytest.mark.parametrize(
    ("name", "strides", "anchors"),
    [
        (
            "yolov3",
            [32, 16, 8],
            [[[116, 90], [156, 198], [373, 326]], [[30, 61], [62, 45], [59, 119]],
             [[10, 13], [16, 30], [33, 23]]],
        ),
        (
            "yolov3-tiny",
            [32, 16],
            [[[81, 82], [135, 169], [344, 319]], [[23, 27], [37, 58], [81, 82]]],
        ),
    ],
)  # fmt: skip
def test_strides_and_anchors(
    name: str, strides: list[int], anchors: list, request: pytest.FixtureRequest
) -> None:
    model: YOLO = request.getfixturevalue({"yolov3": "yolov3_3", "yolov3-tiny": "tiny3"}[name])
    assert model.name == name
    assert model.num_classes == 3 and model.num_outputs == 8
    assert model.strides == strides
    assert model.anchors.dtype == torch.float32
    assert model.anchors.tolist() == anchors
    assert "anchors" in dict(model.named_buffers())


# --------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("num_classes", [3, 80])
@pytest.mark.parametrize(("height", "width"), [(416, 416), (256, 320)])
def test_output_shapes(name: str, num_classes: int, height: int, width: int) -> None:
    model = meta_model(name, num_classes)
    x = torch.empty(2, 3, height, width, device="meta")
    grids = [(height // s, width // s) for s in model.strides]
    if (height, width) == (416, 416):
        expected_grids = {
            "yolov3": [(13, 13), (26, 26), (52, 52)],
            "yolov3-tiny": [(13, 13), (26, 26)],
        }
        assert grids == expected_grids[name]

    model.train()
    raw = model(x)
    assert isinstance(raw, list)
    assert [tuple(r.shape) for r in raw] == [(2, 3, ny, nx, 5 + num_classes) for ny, nx in grids]

    model.eval()
    decoded, raw_eval = model(x)
    assert tuple(decoded.shape) == (2, sum(3 * ny * nx for ny, nx in grids), 5 + num_classes)
    assert [r.shape for r in raw_eval] == [r.shape for r in raw]


@pytest.mark.parametrize(("height", "width"), [(416, 416), (256, 320)])
def test_tiny_real_forward(height: int, width: int, tiny3: YOLO) -> None:
    model = tiny3.eval()
    with torch.no_grad():
        decoded, raw = model(torch.rand(1, 3, height, width))
    assert [tuple(r.shape[2:4]) for r in raw] == [
        (height // 32, width // 32),
        (height // 16, width // 16),
    ]
    assert torch.isfinite(decoded).all()
    assert torch.equal(decoded, model.decode(raw))


def test_yolov3_real_forward_small_input(yolov3_3: YOLO) -> None:
    model = yolov3_3.eval()
    with torch.no_grad():
        decoded, raw = model(torch.rand(1, 3, 64, 96))
    assert [tuple(r.shape) for r in raw] == [(1, 3, 2, 3, 8), (1, 3, 4, 6, 8), (1, 3, 8, 12, 8)]
    assert decoded.shape == (1, 3 * (6 + 24 + 96), 8)


@pytest.mark.parametrize("size", [(100, 416), (416, 400), (31, 32)])
def test_input_must_be_multiple_of_32(size: tuple[int, int]) -> None:
    model = meta_model("yolov3-tiny", 3)
    with pytest.raises(ValueError, match="multiples of 32"):
        model(torch.empty(1, 3, *size, device="meta"))


def test_tiny_stride1_maxpool_keeps_size_and_pads_like_darknet() -> None:
    pool = DarknetMaxPool(2, 1)
    x = -torch.arange(1.0, 1 + 13 * 13).view(1, 1, 13, 13)  # all negative
    y = pool(x)
    assert y.shape == x.shape
    # Border cells pool only real cells (Darknet ignores padding), never a padded 0.
    assert y[0, 0, -1, -1] == x[0, 0, -1, -1]
    assert torch.equal(y[0, 0, -1, :-1], torch.maximum(x[0, 0, -1, :-1], x[0, 0, -1, 1:]))
    assert torch.equal(y[0, 0, :-1, :-1], torch.nn.functional.max_pool2d(x, 2, 1)[0, 0])


def test_stride2_maxpool_is_plain_max_pooling() -> None:
    x = torch.randn(2, 4, 26, 20)
    assert torch.equal(DarknetMaxPool(2, 2)(x), torch.nn.functional.max_pool2d(x, 2, 2))


def _pool_and_gradient(
    base: torch.Tensor, stride: int, channels_last: bool, pool: Callable[..., torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and input gradient of an in-place LeakyReLU (as in a ConvBlock), Darknet's -inf
    padding for the stride-1 pool, then ``pool``."""
    x = base.clone().contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    x.requires_grad_(True)
    activated = torch.nn.functional.leaky_relu(x * 1.0, 0.1, inplace=True)
    if stride == 1:
        activated = torch.nn.functional.pad(activated, (0, 1, 0, 1), value=float("-inf"))
    output = pool(activated, 2, stride)
    output.backward(torch.randn(output.shape, generator=torch.Generator().manual_seed(1)))
    return output.detach(), x.grad


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize(("stride", "size"), [(2, 26), (1, 13)])
def test_pool_keeping_no_indices_is_bit_identical_to_max_pool2d(
    stride: int, size: int, ties: bool, channels_last: bool
) -> None:
    """Output and gradient, the padded stride-1 pool included; with ties (a coarse grid of
    values, -0.0 among them) the same cell wins."""
    base = torch.randn(2, 8, size, size, generator=torch.Generator().manual_seed(0))
    if ties:
        base = (base * 2).round() / 2
        base[base == 0] = -0.0
    expected = _pool_and_gradient(base, stride, channels_last, torch.nn.functional.max_pool2d)
    got = _pool_and_gradient(base, stride, channels_last, MaxPoolKeepingNoIndices.apply)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b) and torch.equal(a.signbit(), b.signbit())


def test_darknet_pool_keeps_no_indices_only_when_training_on_the_cpu() -> None:
    x = torch.randn(1, 4, 26, 26, requires_grad=True)
    assert type(DarknetMaxPool(2, 2)(x).grad_fn).__name__ == "MaxPoolKeepingNoIndicesBackward"
    assert "KeepingNoIndices" in type(DarknetMaxPool(2, 1)(x[:, :, :13, :13]).grad_fn).__name__
    with torch.no_grad():
        assert DarknetMaxPool(2, 2)(x).grad_fn is None
    assert type(DarknetMaxPool(2, 2)(x.detach()).grad_fn).__name__ == "NoneType"


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def test_decode_matches_darknet_formula(tiny3: YOLO) -> None:
    torch.manual_seed(1)
    raw = [torch.randn(2, 3, 4, 5, 8), torch.randn(2, 3, 8, 10, 8)]
    decoded = tiny3.decode(raw)
    assert decoded.shape == (2, 3 * (20 + 80), 8)
    row = 0
    for level, p in enumerate(raw):
        stride = tiny3.strides[level]
        for a in range(3):
            for gy in range(p.shape[2]):
                for gx in range(p.shape[3]):
                    t = p[1, a, gy, gx]
                    aw, ah = tiny3.anchors[level, a].tolist()
                    expected = [
                        (gx + 1 / (1 + math.exp(-t[0]))) * stride,
                        (gy + 1 / (1 + math.exp(-t[1]))) * stride,
                        math.exp(t[2]) * aw,
                        math.exp(t[3]) * ah,
                        *(1 / (1 + math.exp(-v)) for v in t[4:].tolist()),
                    ]
                    assert decoded[1, row].tolist() == pytest.approx(expected, rel=1e-5)
                    row += 1


def test_decode_of_zeros_is_cell_centre_and_anchor(tiny3: YOLO) -> None:
    raw = [torch.zeros(1, 3, 2, 3, 8), torch.zeros(1, 3, 4, 6, 8)]
    decoded = tiny3.decode(raw)
    first_level = decoded[0, : 3 * 6].view(3, 2, 3, 8)
    assert first_level[0, 1, 2, :2].tolist() == [(2 + 0.5) * 32, (1 + 0.5) * 32]
    assert first_level[2, 0, 0, 2:4].tolist() == [344, 319]
    assert torch.all(decoded[..., 4:] == 0.5)


def test_decode_caps_exp_but_not_realistic_values(tiny3: YOLO) -> None:
    raw = [torch.zeros(1, 3, 1, 1, 8), torch.zeros(1, 3, 2, 2, 8)]
    raw[0][..., 2] = 1000.0  # would overflow exp
    raw[0][..., 3] = 5.0  # 148 anchors: absurd, yet under the cap, so exact
    decoded = tiny3.decode(raw)
    assert torch.isfinite(decoded).all()
    assert decoded[0, 0, 2].item() == pytest.approx(math.exp(MAX_LOG_WH) * 81, rel=1e-5)
    assert decoded[0, 0, 3].item() == pytest.approx(math.exp(5.0) * 82, rel=1e-5)


def test_decode_grid_cache_and_half_input(tiny3: YOLO) -> None:
    raw = [torch.randn(1, 3, 2, 2, 8), torch.randn(1, 3, 4, 4, 8)]
    first = tiny3.decode(raw)
    grid = tiny3._grid(2, 2, torch.device("cpu"))
    assert tiny3._grid(2, 2, torch.device("cpu")) is grid
    half = tiny3.decode([r.half() for r in raw])
    assert half.dtype == torch.float32
    assert torch.allclose(half, first, rtol=1e-2, atol=1e-2)


def test_training_mode_returns_raw_and_backpropagates() -> None:
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", num_classes=3).train()
    raw = model(torch.rand(2, 3, 64, 64))
    assert isinstance(raw, list) and len(raw) == 2
    loss = sum(r.square().mean() for r in raw) + model.decode(raw)[..., :4].mean()
    loss.backward()  # type: ignore[union-attr]
    assert all(p.grad is not None for p in model.parameters())


# --------------------------------------------------------------------------------------------
# Detection layers and bias priors
# --------------------------------------------------------------------------------------------


def test_detection_layers_and_bias_priors() -> None:
    model = meta_model("yolov3", 3)
    convs = model.detection_layers()
    assert [c.out_channels for c in convs] == [24, 24, 24]
    assert [c.in_channels for c in convs] == [1024, 512, 256]

    tiny = build_model("yolov3-tiny", num_classes=3)
    tiny.initialize_biases()
    tiny.initialize_biases()  # sets, so idempotent
    for conv, stride in zip(tiny.detection_layers(), tiny.strides, strict=True):
        assert conv.bias is not None
        bias = conv.bias.detach().view(3, 8)
        assert torch.allclose(bias[:, 4], torch.tensor(math.log(8 / (640 / stride) ** 2)))
        assert torch.allclose(bias[:, 5:], torch.tensor(math.log(0.6 / (3 - 0.99))))


def test_deepcopy_and_pickle(tiny3: YOLO, tmp_path: Path) -> None:
    """EMA copies the model with deepcopy; checkpoints may pickle it whole."""
    clone = copy.deepcopy(tiny3)
    for (key, a), b in zip(tiny3.state_dict().items(), clone.state_dict().values(), strict=True):
        assert torch.equal(a, b), key
    torch.save(tiny3, tmp_path / "model.pt")
    again = torch.load(tmp_path / "model.pt", weights_only=False)
    assert again.name == "yolov3-tiny" and again.strides == [32, 16]
    assert torch.equal(again.anchors, tiny3.anchors)
