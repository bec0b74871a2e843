"""The YOLOv3 loss: target assignment by hand, CIoU, and a loss that never waits for the GPU."""

from __future__ import annotations

import math

import pytest
import torch

from detbench.models import build_model
from detbench.study.config import TrainHyperparameters
from detbench.training.loss import Assignment, YoloLoss, bbox_ciou


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model("yolov3-tiny", num_classes=3).train()


def test_ciou_of_known_boxes() -> None:
    same = torch.tensor([[5.0, 5.0, 2.0, 4.0]])
    assert bbox_ciou(same, same).item() == pytest.approx(1.0, abs=1e-6)
    # concentric, same aspect ratio, a quarter of the area: CIoU is plain IoU
    inner = torch.tensor([[5.0, 5.0, 1.0, 2.0]])
    assert bbox_ciou(same, inner).item() == pytest.approx(0.25, abs=1e-6)
    # disjoint unit squares 2 apart: IoU 0, centre distance^2 4 over enclosing diagonal^2 10
    left, right = torch.tensor([[0.5, 0.5, 1.0, 1.0]]), torch.tensor([[2.5, 0.5, 1.0, 1.0]])
    assert bbox_ciou(left, right).item() == pytest.approx(-0.4, abs=1e-6)


def test_assignment_by_hand(tiny: torch.nn.Module) -> None:
    """yolov3-tiny at 416 px: anchors (81,82) (135,169) (344,319) px on the 13x13 grid
    (stride 32) and (23,27) (37,58) (81,82) on the 26x26 one (stride 16); an anchor takes a
    target when neither side is more than anchor_threshold (4) times larger than the other."""
    loss_fn = YoloLoss(tiny, TrainHyperparameters())
    assert loss_fn.strides == [32, 16]
    # image 1, class 2, a 96 x 128 px box centred at (0.5, 0.25) of the 416 px input
    targets = torch.tensor([[1.0, 2.0, 0.5, 0.25, 96 / 416, 128 / 416]])
    assignment = loss_fn.assign(targets, loss_fn.grid_sizes(416, 416))
    assert assignment.counts == (3, 2)
    image, anchor, gi, gj, box, cls = assignment.level(0)  # type: ignore[misc]
    assert anchor.tolist() == [0, 1, 2]  # worst side ratios 1.56, 1.41, 3.58
    assert image.tolist() == [1, 1, 1] and cls.tolist() == [2, 2, 2]
    assert gi.tolist() == [6, 6, 6] and gj.tolist() == [3, 3, 3]  # centre at 6.5, 3.25 cells
    torch.testing.assert_close(box, torch.tensor([[0.5, 0.25, 3.0, 4.0]] * 3))
    image, anchor, gi, gj, box, cls = assignment.level(1)  # type: ignore[misc]
    assert anchor.tolist() == [1, 2]  # 23x27 is 4.17 times too narrow
    assert gi.tolist() == [13, 13] and gj.tolist() == [6, 6]  # centre at 13.0, 6.5 cells
    torch.testing.assert_close(box, torch.tensor([[0.0, 0.5, 6.0, 8.0]] * 2))


def test_no_targets_assigns_nothing(tiny: torch.nn.Module) -> None:
    loss_fn = YoloLoss(tiny, TrainHyperparameters())
    assignment = loss_fn.assign(torch.zeros((0, 6)), loss_fn.grid_sizes(416, 416))
    assert assignment.counts == (0, 0)
    assert assignment.level(0) is None and assignment.level(1) is None
    raw = tiny(torch.rand(2, 3, 64, 64))
    loss, items = loss_fn(raw, torch.zeros((0, 6)))
    assert items.box == 0 and items.cls == 0 and items.obj > 0
    assert math.isfinite(loss.item())


def test_loss_of_an_assignment_is_the_loss_of_its_targets(tiny: torch.nn.Module) -> None:
    loss_fn = YoloLoss(tiny, TrainHyperparameters())
    generator = torch.Generator().manual_seed(3)
    n = 20
    targets = torch.cat(
        [
            torch.randint(0, 2, (n, 1), generator=generator).float(),
            torch.randint(0, 3, (n, 1), generator=generator).float(),
            torch.rand(n, 2, generator=generator),
            torch.rand(n, 2, generator=generator) * 0.4 + 0.02,
        ],
        dim=1,
    )
    raw = tiny(torch.rand(2, 3, 128, 96, generator=generator))
    direct, direct_items = loss_fn(raw, targets)
    assignment = loss_fn.assign(targets, loss_fn.grid_sizes(128, 96))
    assert isinstance(assignment, Assignment)
    assert sum(assignment.counts) == len(assignment.indices) == len(assignment.boxes)
    assigned, assigned_items = loss_fn(raw, assignment)
    assert torch.equal(direct, assigned)
    assert direct_items == assigned_items
    assert direct_items.total * 2 == pytest.approx(direct.item())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_loss_terms_never_wait_for_the_gpu() -> None:
    """With the targets on the host, as the loader delivers them, computing the loss queues its
    kernels without a single device sync (nonzero, a blocking copy, .item())."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", num_classes=3).to(device).train()
    loss_fn = YoloLoss(model, TrainHyperparameters())
    targets = torch.tensor([[0.0, 1.0, 0.5, 0.5, 0.2, 0.3], [1.0, 0.0, 0.2, 0.7, 0.1, 0.1]])
    raw = model(torch.rand(2, 3, 416, 416, device=device))
    loss_fn.terms(raw, targets)  # warm-up: the pinned-memory pool's first allocation
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        terms = loss_fn.terms(raw, targets)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(terms).all()
