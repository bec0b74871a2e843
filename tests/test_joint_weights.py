"""COCO starting weights for a merged label space (COCO's 80 classes plus others): the 80 COCO
detection rows land in their classes, the new classes keep their initialisation. The Darknet
file is written by the test (a random 80-class model), no download."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from detbench.data.coco import COCO_CLASSES
from detbench.models import YOLO, build_model, save_darknet_weights
from detbench.models.darknet import ConvBlock
from detbench.models.pretrained import coco_block_offset, load_pretrained
from detbench.models.weights import conv_tensors

BLOOD = ("RBC", "WBC", "Platelets")


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


@pytest.fixture(scope="module")
def coco_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[YOLO, Path]:
    source = randomized("yolov3-tiny", 80, seed=7)
    path = tmp_path_factory.mktemp("weights") / "yolov3-tiny.weights"
    save_darknet_weights(source, path, seen=1000)
    return source, path


def rows(conv: torch.nn.Conv2d, model: YOLO) -> tuple[torch.Tensor, torch.Tensor]:
    """A detection conv's weights and biases as (anchor, output row, ...)."""
    assert conv.bias is not None
    return (
        conv.weight.detach().view(model.num_anchors, model.num_outputs, -1),
        conv.bias.detach().view(model.num_anchors, model.num_outputs),
    )


@pytest.mark.parametrize("order", ["coco-first", "blood-first"])
def test_coco_rows_land_in_their_classes_of_an_83_class_model(
    coco_file: tuple[YOLO, Path], order: str
) -> None:
    source, path = coco_file
    names = (*COCO_CLASSES, *BLOOD) if order == "coco-first" else (*BLOOD, *COCO_CLASSES)
    offset = 0 if order == "coco-first" else 3
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", len(names))
    model.initialize_biases()
    initial = [tuple(t.clone() for t in rows(c, model)) for c in model.detection_layers()]

    load_pretrained(model, "coco", path, class_names=names)

    assert model.num_classes == 83
    detection = {i - 1 for i in model.yolo_indices}
    for index, block in enumerate(model.layers):
        if isinstance(block, ConvBlock) and index not in detection:
            for got, want in zip(
                conv_tensors(block), conv_tensors(source.layers[index]), strict=True
            ):
                assert torch.equal(got, want), index
    new = [5 + c for c in range(83) if not offset <= c < offset + 80]
    for conv, origin, (init_w, init_b) in zip(
        model.detection_layers(), source.detection_layers(), initial, strict=True
    ):
        weight, bias = rows(conv, model)
        source_weight, source_bias = rows(origin, source)
        # Box and objectness rows, then the 80 COCO class rows: the source's, row for row.
        assert torch.equal(weight[:, :5], source_weight[:, :5])
        assert torch.equal(bias[:, :5], source_bias[:, :5])
        coco_rows = slice(5 + offset, 5 + offset + 80)
        assert torch.equal(weight[:, coco_rows], source_weight[:, 5:])
        assert torch.equal(bias[:, coco_rows], source_bias[:, 5:])
        # The new classes keep their initialisation (default conv weights, class-prior bias).
        assert torch.equal(weight[:, new], init_w[:, new])
        assert torch.equal(bias[:, new], init_b[:, new])
        assert not torch.equal(weight[:, new], source_weight[:, 5:8])


def test_without_coco_classes_the_detection_convs_keep_their_initialisation(
    coco_file: tuple[YOLO, Path],
) -> None:
    _, path = coco_file
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", 3)
    before = [c.weight.detach().clone() for c in model.detection_layers()]
    load_pretrained(model, "coco", path, class_names=BLOOD)
    assert all(
        torch.equal(c.weight, b) for c, b in zip(model.detection_layers(), before, strict=True)
    )


def test_coco_block_offset() -> None:
    assert coco_block_offset(COCO_CLASSES) == 0
    assert coco_block_offset((*BLOOD, *COCO_CLASSES)) == 3
    assert coco_block_offset((*COCO_CLASSES[:79], "RBC")) is None
    assert coco_block_offset((*reversed(COCO_CLASSES), *BLOOD)) is None
