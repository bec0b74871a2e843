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

import torch
from torch import nn

from detbench.config import TrainHyperparameters

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


class YoloLoss:
    def __init__(self, model: nn.Module, hyp: TrainHyperparameters) -> None:
        self.strides: list[int] = list(model.strides)
        self.anchors: torch.Tensor = model.anchors.detach()  # (levels, 3, 2) px
        self.num_classes: int = model.num_classes
        self.hyp = hyp
        finest_first = sorted(range(len(self.strides)), key=lambda i: self.strides[i])
        self.balance = [0.0] * len(self.strides)
        for rank, level in enumerate(finest_first):
            self.balance[level] = LEVEL_BALANCE[min(rank, len(LEVEL_BALANCE) - 1)]
        # The 2020 recipe scales the COCO-tuned class gain to the number of classes.
        self.cls_gain = hyp.cls_gain * self.num_classes / 80
        self.bce = nn.BCEWithLogitsLoss()

    def __call__(
        self, raw: list[torch.Tensor], targets: torch.Tensor
    ) -> tuple[torch.Tensor, LossItems]:
        """Loss for one batch.

        ``raw``: per level (B, 3, ny, nx, 5 + nc) network outputs; ``targets``: (N, 6) rows of
        (image index, class, cx, cy, w, h) normalised to the input. Returns the loss to
        backpropagate (summed terms times the batch size, as the 2020 recipe does) and the
        three per-image terms for logging.
        """
        device = raw[0].device
        lbox = torch.zeros((), device=device)
        lobj = torch.zeros((), device=device)
        lcls = torch.zeros((), device=device)
        targets = targets.to(device)
        for level, output in enumerate(raw):
            output = output.float()
            batch, _, ny, nx, _ = output.shape
            tobj = torch.zeros(output.shape[:4], device=device)
            matched = self._assign(targets, level, nx, ny)
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
        lbox = lbox * self.hyp.box_gain
        lobj = lobj * self.hyp.obj_gain
        lcls = lcls * self.cls_gain
        batch = raw[0].shape[0]
        # One device sync for the three logged values, not three.
        box, obj, cls = torch.stack((lbox, lobj, lcls)).detach().float().tolist()
        items = LossItems(box=box, obj=obj, cls=cls)
        return (lbox + lobj + lcls) * batch, items

    def _assign(
        self, targets: torch.Tensor, level: int, nx: int, ny: int
    ) -> tuple[torch.Tensor, ...] | None:
        if len(targets) == 0:
            return None
        scale = torch.tensor([nx, ny, nx, ny], device=targets.device, dtype=targets.dtype)
        grid_boxes = targets[:, 2:6] * scale  # cx, cy, w, h in grid cells
        anchor_wh = self.anchors[level].to(targets.device) / self.strides[level]  # (3, 2)
        ratio = grid_boxes[:, None, 2:4] / anchor_wh[None]  # (N, 3, 2)
        fits = torch.max(ratio, 1 / ratio).amax(dim=2) < self.hyp.anchor_threshold
        target_index, anchor = fits.nonzero(as_tuple=True)
        if len(target_index) == 0:
            return None
        boxes = grid_boxes[target_index]
        gi = boxes[:, 0].long().clamp(0, nx - 1)
        gj = boxes[:, 1].long().clamp(0, ny - 1)
        box_target = torch.cat(
            [boxes[:, 0:1] - gi[:, None], boxes[:, 1:2] - gj[:, None], boxes[:, 2:4]], dim=1
        )
        image = targets[target_index, 0].long()
        cls_target = targets[target_index, 1].long()
        return image, anchor, gi, gj, box_target, cls_target
