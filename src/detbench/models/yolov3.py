"""YOLOv3 (Redmon & Farhadi, 2018), layer for layer as Darknet's ``cfg/yolov3.cfg``.

107 layers: Darknet-53 (layers 0-74: 52 convs + 23 shortcuts) and a three-level head
(stride 32, 16, 8). The helpers below only group the flat list for the reader; the flattened
order is exactly the cfg's, which the Darknet ``.weights`` format relies on.
"""

from __future__ import annotations

from detbench.models.darknet import Conv, LayerSpec, ModelSpec, Route, Shortcut, Upsample, YoloHead

ANCHORS = (
    (10, 13), (16, 30), (33, 23),  # mask 0,1,2: stride 8
    (30, 61), (62, 45), (59, 119),  # mask 3,4,5: stride 16
    (116, 90), (156, 198), (373, 326),  # mask 6,7,8: stride 32
)  # fmt: skip

# Last layers of the stride-8 and stride-16 backbone stages, read by the head's routes
# (the cfg's "layers = -1, 36" and "layers = -1, 61").
STRIDE8_FEATURES = 36
STRIDE16_FEATURES = 61


def residual(filters: int) -> list[LayerSpec]:
    """Darknet-53 residual unit: 1x1 conv to half the channels, 3x3 back, add the input."""
    return [Conv(filters // 2, 1), Conv(filters, 3), Shortcut(from_=-3)]


def stage(filters: int, blocks: int) -> list[LayerSpec]:
    """Halve the resolution with a strided 3x3 conv, then ``blocks`` residual units."""
    layers: list[LayerSpec] = [Conv(filters, 3, stride=2)]
    for _ in range(blocks):
        layers += residual(filters)
    return layers


def darknet53() -> list[LayerSpec]:
    """The backbone: layers 0-74 (what ``darknet53.conv.74`` holds)."""
    return [
        Conv(32, 3),
        *stage(64, 1),  # layers 1-4, stride 2
        *stage(128, 2),  # 5-11, stride 4
        *stage(256, 8),  # 12-36, stride 8
        *stage(512, 8),  # 37-61, stride 16
        *stage(1024, 4),  # 62-74, stride 32
    ]


def head_convs(filters: int) -> list[LayerSpec]:
    """Five convs alternating 1x1 (``filters``) and 3x3 (``2 * filters``)."""
    return [
        Conv(filters, 1),
        Conv(filters * 2, 3),
        Conv(filters, 1),
        Conv(filters * 2, 3),
        Conv(filters, 1),
    ]


def detect(filters: int, num_classes: int, mask: tuple[int, ...]) -> list[LayerSpec]:
    """3x3 conv, the linear 1x1 detection conv (with bias, no BN) and the yolo layer."""
    return [
        Conv(filters * 2, 3),
        Conv(len(mask) * (5 + num_classes), 1, batch_normalize=False, activation="linear"),
        YoloHead(mask),
    ]


def upsample_and_merge(filters: int, skip: int) -> list[LayerSpec]:
    """Take the last head_convs output (4 layers back, past detect), 1x1 conv, upsample 2x,
    concatenate with backbone layer ``skip``."""
    return [Route((-4,)), Conv(filters, 1), Upsample(2), Route((-1, skip))]


def yolov3_layers(num_classes: int) -> tuple[LayerSpec, ...]:
    return (
        *darknet53(),
        *head_convs(512),  # 75-79
        *detect(512, num_classes, mask=(6, 7, 8)),  # 80-82, stride 32
        *upsample_and_merge(256, STRIDE16_FEATURES),  # 83-86
        *head_convs(256),  # 87-91
        *detect(256, num_classes, mask=(3, 4, 5)),  # 92-94, stride 16
        *upsample_and_merge(128, STRIDE8_FEATURES),  # 95-98
        *head_convs(128),  # 99-103
        *detect(128, num_classes, mask=(0, 1, 2)),  # 104-106, stride 8
    )


YOLOV3 = ModelSpec(name="yolov3", anchors=ANCHORS, layers=yolov3_layers)

# Number of leading layers in Darknet's backbone file darknet53.conv.74 (layers 0..74).
DARKNET53_CUTOFF = 75
