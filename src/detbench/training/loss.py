"""The YOLOv3 training loss: 1 - CIoU for boxes, BCE for objectness and classes.

Follows the recipe of ultralytics/yolov3 v9 (the code the 2020 study trained with), with one
difference that keeps training and inference consistent: boxes are decoded Darknet's way
(``xy = sigmoid(t) + cell``, ``wh = exp(t) * anchor``), the same decoding the model uses at
inference and the official weights were trained with. Each target is assigned, at every level,
to the grid cell containing its centre and to every anchor whose width and height ratios to
the target are below ``anchor_threshold``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import torch
from torch import nn

from detbench.study.config import TrainHyperparameters

# Objectness weight per level, finest grid first (ultralytics' [4.0, 1.0, 0.4]): fine grids have
# many more cells, hence many more negatives per positive.
LEVEL_BALANCE = (4.0, 1.0, 0.4)
MAX_LOG_WH = math.log(1e3)  # exp() cap: no box more than 1000 anchors wide


@dataclasses.dataclass
class LossItems:
    box: float
    obj: float
    cls: float

    @property
    def total(self) -> float:
        return self.box + self.obj + self.cls


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired boxes given as (cx, cy, w, h), shape (N, 4) each."""
    b1_x0, b1_x1 = box1[:, 0] - box1[:, 2] / 2, box1[:, 0] + box1[:, 2] / 2
    b1_y0, b1_y1 = box1[:, 1] - box1[:, 3] / 2, box1[:, 1] + box1[:, 3] / 2
    b2_x0, b2_x1 = box2[:, 0] - box2[:, 2] / 2, box2[:, 0] + box2[:, 2] / 2
    b2_y0, b2_y1 = box2[:, 1] - box2[:, 3] / 2, box2[:, 1] + box2[:, 3] / 2
    inter = (torch.min(b1_x1, b2_x1) - torch.max(b1_x0, b2_x0)).clamp(0) * (
        torch.min(b1_y1, b2_y1) - torch.max(b1_y0, b2_y0)
    ).clamp(0)
    w1, h1, w2, h2 = box1[:, 2], box1[:, 3] + eps, box2[:, 2], box2[:, 3] + eps
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union
    enclose_w = torch.max(b1_x1, b2_x1) - torch.min(b1_x0, b2_x0)
    enclose_h = torch.max(b1_y1, b2_y1) - torch.min(b1_y0, b2_y0)
    diagonal_sq = enclose_w**2 + enclose_h**2 + eps
    centre_sq = (box2[:, 0] - box1[:, 0]) ** 2 + (box2[:, 1] - box1[:, 1]) ** 2
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)) ** 2
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (centre_sq / diagonal_sq + v * alpha)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Which predictions a batch's targets supervise, all levels in two tensors.

    ``indices`` rows: (image, anchor, grid x, grid y, class); ``boxes`` rows: the target box
    (cx and cy relative to its cell, w and h) in grid cells; ``counts``: rows per level, in
    order, known on the host so that splitting them never waits for the device.
    """

    indices: torch.Tensor  # (n, 5) int64
    boxes: torch.Tensor  # (n, 4) float
    counts: tuple[int, ...]

    def to(self, device: torch.device) -> Assignment:
        """Copies that do not wait for the device's queue: from pinned memory on CUDA."""
        if self.indices.device == device:
            return self
        if device.type == "cuda" and self.indices.device.type == "cpu":
            return Assignment(
                self.indices.pin_memory().to(device, non_blocking=True),
                self.boxes.pin_memory().to(device, non_blocking=True),
                self.counts,
            )
        return Assignment(self.indices.to(device), self.boxes.to(device), self.counts)

    def level(self, level: int) -> tuple[torch.Tensor, ...] | None:
        """(image, anchor, gi, gj, box, cls) of one level, or None when it has no targets."""
        if self.counts[level] == 0:
            return None
        start = sum(self.counts[:level])
        rows = slice(start, start + self.counts[level])
        image, anchor, gi, gj, cls = self.indices[rows].unbind(1)
        return image, anchor, gi, gj, self.boxes[rows], cls


class YoloLoss:
    def __init__(self, model: nn.Module, hyp: TrainHyperparameters, *, ranks: int = 1) -> None:
        self.strides: list[int] = list(model.strides)
        self.anchors: torch.Tensor = model.anchors.detach()  # (levels, 3, 2) px
        # Targets arrive from the loader on the host; assigning them there keeps the loss free
        # of device syncs (see assign).
        self.host_anchors: torch.Tensor = self.anchors.cpu()
        self.num_classes: int = model.num_classes
        self.hyp = hyp
        finest_first = sorted(range(len(self.strides)), key=lambda i: self.strides[i])
        self.balance = [0.0] * len(self.strides)
        for rank, level in enumerate(finest_first):
            self.balance[level] = LEVEL_BALANCE[min(rank, len(LEVEL_BALANCE) - 1)]
        # The 2020 recipe scales the COCO-tuned class gain to the number of classes.
        self.cls_gain = hyp.cls_gain * self.num_classes / 80
        self.bce = nn.BCEWithLogitsLoss()
        # With N ranks each computes its share's loss times the global batch, so that DDP's
        # mean of the ranks' gradients is the one-rank gradient of the whole batch (exactly so
        # for the objectness term, a mean over every image's cells; see
        # detbench.training.distributed).
        self.ranks = ranks

    def __call__(
        self, raw: list[torch.Tensor], targets: torch.Tensor | Assignment
    ) -> tuple[torch.Tensor, LossItems]:
        """Loss for one batch.

        ``raw``: per level (B, 3, ny, nx, 5 + nc) network outputs; ``targets``: (N, 6) rows of
        (image index, class, cx, cy, w, h) normalised to the input, or their ``assign`` result.
        Returns the loss to backpropagate (summed terms times the batch size, as the 2020
        recipe does; the global batch's size under several ranks) and the three per-image
        terms for logging: reading those is the one point where the host waits for the device.
        """
        terms = self.terms(raw, targets)
        box, obj, cls = terms.detach().float().tolist()
        items = LossItems(box=box, obj=obj, cls=cls)
        return (terms[0] + terms[1] + terms[2]) * (raw[0].shape[0] * self.ranks), items

    def terms(self, raw: list[torch.Tensor], targets: torch.Tensor | Assignment) -> torch.Tensor:
        """The box, objectness and class terms (gains applied), a (3,) tensor on the device,
        computed without waiting for the device when the targets are on the host."""
        device = raw[0].device
        if not isinstance(targets, Assignment):
            targets = self.assign(targets, [tuple(output.shape[2:4]) for output in raw])
        assignment = targets.to(device)
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        for level, output in enumerate(raw):
            output = output.float()
            tobj = torch.zeros(output.shape[:4], device=device)
            matched = assignment.level(level)
            if matched is not None:
                image, anchor, gi, gj, box_target, cls_target = matched
                pred = output[image, anchor, gj, gi]
                anchor_wh = self.anchors[level].to(device)[anchor] / self.strides[level]
                pred_box = torch.cat(
                    [pred[:, :2].sigmoid(), pred[:, 2:4].clamp(max=MAX_LOG_WH).exp() * anchor_wh],
                    dim=1,
                )
                ciou = bbox_ciou(pred_box, box_target)
                lbox = lbox + (1.0 - ciou).mean()
                tobj[image, anchor, gj, gi] = ciou.detach().clamp(0)
                if self.num_classes > 1:
                    onehot = torch.zeros_like(pred[:, 5:])
                    onehot[torch.arange(len(cls_target), device=device), cls_target] = 1.0
                    lcls = lcls + self.bce(pred[:, 5:], onehot)
            lobj = lobj + self.bce(output[..., 4], tobj) * self.balance[level]
        return torch.stack(
            (lbox * self.hyp.box_gain, lobj * self.hyp.obj_gain, lcls * self.cls_gain)
        )

    def grid_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """(ny, nx) of every level's grid for an input of ``height`` x ``width`` pixels."""
        return [(height // stride, width // stride) for stride in self.strides]

    def assign(self, targets: torch.Tensor, grid_sizes: Sequence[tuple[int, int]]) -> Assignment:
        """Each target, at every level, goes to the grid cell containing its centre, with
        every anchor whose width and height ratios to it are below ``anchor_threshold``.

        Computed where ``targets`` are: on the host (as the loader delivers them) ``nonzero``
        and the lengths it yields cost no device sync. Done on the device, they would stall
        the host until the forward pass has finished, then leave the GPU idle while the
        loss's small kernels are launched one by one.
        """
        anchors = self.host_anchors if targets.device.type == "cpu" else self.anchors
        indices, boxes, counts = [], [], []
        for level, (ny, nx) in enumerate(grid_sizes):
            level_indices, level_boxes = self._assign_level(
                targets, anchors[level].to(targets.device) / self.strides[level], nx, ny
            )
            indices.append(level_indices)
            boxes.append(level_boxes)
            counts.append(len(level_indices))
        return Assignment(torch.cat(indices), torch.cat(boxes), tuple(counts))

    def _assign_level(
        self, targets: torch.Tensor, anchor_wh: torch.Tensor, nx: int, ny: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows of (image, anchor, gi, gj, class) and (cx, cy in the cell, w, h) for one level;
        ``anchor_wh``: (3, 2) anchor sizes in this level's grid cells."""
        if len(targets) == 0:
            empty = torch.zeros((0, 5), dtype=torch.long, device=targets.device)
            return empty, torch.zeros((0, 4), dtype=targets.dtype, device=targets.device)
        scale = torch.tensor([nx, ny, nx, ny], device=targets.device, dtype=targets.dtype)
        grid_boxes = targets[:, 2:6] * scale  # cx, cy, w, h in grid cells
        ratio = grid_boxes[:, None, 2:4] / anchor_wh[None]  # (N, 3, 2)
        fits = torch.max(ratio, 1 / ratio).amax(dim=2) < self.hyp.anchor_threshold
        target_index, anchor = fits.nonzero(as_tuple=True)
        boxes = grid_boxes[target_index]
        gi = boxes[:, 0].long().clamp(0, nx - 1)
        gj = boxes[:, 1].long().clamp(0, ny - 1)
        box_target = torch.cat(
            [boxes[:, 0:1] - gi[:, None], boxes[:, 1:2] - gj[:, None], boxes[:, 2:4]], dim=1
        )
        image = targets[target_index, 0].long()
        cls_target = targets[target_index, 1].long()
        return torch.stack((image, anchor, gi, gj, cls_target), dim=1), box_target
