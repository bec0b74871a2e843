"""YOLOv3-tiny, layer for layer as Darknet's ``cfg/yolov3-tiny.cfg``.

24 layers: a 7-conv / 6-maxpool backbone, two detection levels (stride 32 and 16).
The stride-16 yolo layer uses mask 1,2,3: the cfg the official ``yolov3-tiny.weights`` were
trained with (Darknet later changed it to 0,1,2; anchor 0 is then unused).
"""

from __future__ import annotations

from detbench.models.darknet import (
    Conv,
    LayerSpec,
    MaxPool,
    ModelSpec,
    Route,
    Upsample,
    YoloHead,
)

ANCHORS = ((10, 14), (23, 27), (37, 58), (81, 82), (135, 169), (344, 319))

# Backbone layer read by the stride-16 route ("layers = -1, 8"): the 256-filter conv at stride 16.
STRIDE16_FEATURES = 8


def backbone() -> list[LayerSpec]:
    """Layers 0-11: 3x3 convs doubling the width, each followed by a 2x2 max pool. The 6th pool
    has stride 1 (Darknet pads it right/bottom so 13x13 stays 13x13 at 416)."""
    layers: list[LayerSpec] = []
    for filters in (16, 32, 64, 128, 256):
        layers += [Conv(filters, 3), MaxPool(2, 2)]
    layers += [Conv(512, 3), MaxPool(2, 1)]
    return layers


def detection_conv(num_classes: int, mask: tuple[int, ...]) -> Conv:
    return Conv(len(mask) * (5 + num_classes), 1, batch_normalize=False, activation="linear")


def yolov3_tiny_layers(num_classes: int) -> tuple[LayerSpec, ...]:
    coarse, fine = (3, 4, 5), (1, 2, 3)
    return (
        *backbone(),  # 0-11
        Conv(1024, 3),  # 12
        Conv(256, 1),  # 13
        Conv(512, 3),  # 14 (last layer of the yolov3-tiny.conv.15 backbone file)
        detection_conv(num_classes, coarse),  # 15
        YoloHead(coarse),  # 16, stride 32
        Route((-4,)),  # 17: back to layer 13
        Conv(128, 1),  # 18
        Upsample(2),  # 19
        Route((-1, STRIDE16_FEATURES)),  # 20
        Conv(256, 3),  # 21
        detection_conv(num_classes, fine),  # 22
        YoloHead(fine),  # 23, stride 16
    )


YOLOV3_TINY = ModelSpec(name="yolov3-tiny", anchors=ANCHORS, layers=yolov3_tiny_layers)

# Number of leading layers in the tiny backbone file (yolov3-tiny.conv.15: layers 0..14).
TINY_BACKBONE_CUTOFF = 15
