"""Evaluate one trained cell on a held-out split: detections, COCO-style metrics, losses."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from detbench import atomic
from detbench.data.dataset import DatasetManifest, DetectionDataset, collate
from detbench.evaluation import final_evaluation
from detbench.evaluation.inference import (
    Detections,
    load_trained_model,
    model_input,
    non_max_suppression,
    to_original_pixels,
)
from detbench.evaluation.metrics import (
    DetectionMetrics,
    ImageDetections,
    ImageGroundTruth,
    coco_image_ids,
    evaluate_detections,
    to_coco_results,
)
from detbench.evaluation.parts import part_metrics
from detbench.study.config import EvalSettings, TrainHyperparameters
from detbench.training.device import select_device, select_precision
from detbench.training.loss import YoloLoss

log = logging.getLogger("detbench.evaluation.evaluate")


def predict_split(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    settings: EvalSettings,
    hyp: TrainHyperparameters,
    device: torch.device,
    amp: bool = True,
) -> tuple[dict[str, Detections], dict[str, float], float]:
    """Detections per image (original-image pixels), mean validation losses, and seconds."""
    precision = select_precision(device, amp)
    loader = DataLoader(
        dataset,
        batch_size=settings.batch_size,
        shuffle=False,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
    )
    loss_fn = YoloLoss(model, hyp)
    detections: dict[str, Detections] = {}
    loss_sums = np.zeros(3)
    start = time.perf_counter()
    model.eval()
    if hyp.channels_last:  # as training runs it: see TrainingState.create
        model.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        for batch in loader:
            images = model_input(batch.images, device, channels_last=hyp.channels_last)
            with torch.autocast(
                device.type, dtype=precision.dtype, enabled=precision.dtype is not None
            ):
                decoded, raw = model(images)
            _, items = loss_fn(raw, batch.targets)
            loss_sums += np.array([items.box, items.obj, items.cls]) * len(batch.images)
            per_image = non_max_suppression(
                decoded,
                conf_threshold=settings.conf_threshold,
                iou_threshold=settings.nms_iou,
                max_detections=settings.max_detections,
            )
            for image_id, placement, found in zip(
                batch.image_ids, batch.letterboxes, per_image, strict=True
            ):
                record = dataset.records[dataset.index_of(image_id)]
                detections[image_id] = to_original_pixels(
                    found, placement, record.width, record.height
                )
    seconds = time.perf_counter() - start
    means = loss_sums / max(len(dataset), 1)
    losses = {"box": float(means[0]), "obj": float(means[1]), "cls": float(means[2])}
    return detections, losses, seconds


@dataclasses.dataclass
class SplitEvaluation:
    """A model's detections on one split and what they score."""

    metrics: DetectionMetrics
    detections: dict[str, ImageDetections]
    losses: dict[str, float]
    seconds: float  # predicting (forward, losses, NMS); scoring not included
    num_images: int

    def history_columns(self) -> dict[str, float]:
        """history.csv's evaluation columns (an evaluation during training)."""
        return {
            "eval_map50": self.metrics.map50,
            "eval_map50_95": self.metrics.map50_95,
            "eval_total_loss": sum(self.losses.values()),
            "eval_seconds": self.seconds,
        }


def evaluate_model(
    model: torch.nn.Module,
    dataset: DetectionDataset,
    class_names: tuple[str, ...],
    settings: EvalSettings,
    hyp: TrainHyperparameters,
    device: torch.device,
) -> SplitEvaluation:
    """Detect on ``dataset`` (a split, letterboxed, no augmentation) with ``model`` (already
    on ``device``) and score the detections: the evaluate job's computation, also run during
    training (train.eval_interval_epochs), which builds the dataset once for all of them."""
    detections, losses, seconds = predict_split(model, dataset, settings, hyp, device, hyp.amp)
    ground_truth = {
        r.id: ImageGroundTruth(boxes=r.boxes_xyxy(), classes=r.classes) for r in dataset.records
    }
    image_detections = {
        image_id: ImageDetections(boxes=d.boxes, scores=d.scores, classes=d.classes)
        for image_id, d in detections.items()
    }
    metrics = evaluate_detections(
        ground_truth,
        image_detections,
        class_names,
        pr_confidence=settings.pr_confidence,
        max_detections=settings.max_detections,
    )
    return SplitEvaluation(metrics, image_detections, losses, seconds, len(dataset))


def evaluate_cell(
    weights_path: str | Path,
    manifest_path: str | Path,
    split: str,
    settings: EvalSettings,
    hyp: TrainHyperparameters,
    metrics_path: str | Path,
    detections_path: str | Path,
    *,
    cell: dict[str, Any] | None = None,
    threads: int | None = None,
    image_caches: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Evaluate a trained model on ``split``; write metrics JSON and COCO results JSON.
    ``image_caches``: split -> disk image cache folder (else the split is decoded in memory)."""
    if threads:
        torch.set_num_threads(threads)
    device = select_device(hyp.device)
    model, metadata = load_trained_model(weights_path, device)
    manifest = DatasetManifest.load(manifest_path, image_caches)
    if tuple(metadata["class_names"]) != manifest.class_names:
        raise_mismatch(weights_path, metadata["class_names"], manifest)
    img_size = int(metadata["img_size"])
    dataset = DetectionDataset.of_split(manifest, split, img_size)
    evaluation = evaluate_model(model, dataset, manifest.class_names, settings, hyp, device)
    result, coco_results = cell_results(evaluation, dataset, manifest, split, settings, device)
    result["cell"] = cell or {}
    atomic.write_json(detections_path, coco_results)
    atomic.write_json(metrics_path, result)
    log.info(
        "%s split %s: mAP@0.5 %.4f  mAP@0.5:0.95 %.4f  P %.3f R %.3f at conf %.2f  (%.1f s)",
        weights_path,
        split,
        evaluation.metrics.map50,
        evaluation.metrics.map50_95,
        evaluation.metrics.precision_at_conf,
        evaluation.metrics.recall_at_conf,
        settings.pr_confidence,
        evaluation.seconds,
    )
    return result


def cell_results(
    evaluation: SplitEvaluation,
    dataset: DetectionDataset,
    manifest: DatasetManifest,
    split: str,
    settings: EvalSettings,
    device: torch.device,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """What a cell's metrics.json and detections.json hold (the former with an empty
    ``cell``): built here for the evaluate job and for the train job's final evaluation, so
    that the two write the same files."""
    image_id_map = coco_image_ids(record.id for record in dataset.records)
    coco_results = to_coco_results(evaluation.detections, image_id_map)
    result = {
        "cell": {},
        "dataset": manifest.dataset,
        "split": split,
        "num_images": evaluation.num_images,
        "img_size": dataset.img_size,
        "nms": {
            "conf_threshold": settings.conf_threshold,
            "iou_threshold": settings.nms_iou,
            "max_detections_per_image": settings.max_detections,
        },
        "metrics": evaluation.metrics.to_dict(),
        "val_loss": evaluation.losses,
        "val_loss_definition": (
            f"mean per-image training loss terms (box 1-CIoU, objectness BCE, class BCE, with "
            f"the training gains) on the {split} split"
        ),
        "eval_seconds": evaluation.seconds,
        "device": str(device),
    }
    # A merged dataset: each part's images and classes scored on their own as well.
    parts = part_metrics(
        manifest.raw,
        split,
        {r.id: ImageGroundTruth(boxes=r.boxes_xyxy(), classes=r.classes) for r in dataset.records},
        evaluation.detections,
        pr_confidence=settings.pr_confidence,
        max_detections=settings.max_detections,
    )
    if parts:
        result["parts"] = parts
    return result, coco_results


def save_final_evaluation(
    path: Path,
    evaluation: SplitEvaluation,
    dataset: DetectionDataset,
    manifest: DatasetManifest,
    split: str,
    settings: EvalSettings,
    hyp: TrainHyperparameters,
    device: torch.device,
    weights_path: Path,
) -> None:
    """The train job's evaluation of its final weights, for the evaluate job to reuse (see
    detbench.evaluation.final_evaluation)."""
    result, coco_results = cell_results(evaluation, dataset, manifest, split, settings, device)
    key = final_evaluation.evaluation_key(split, settings, hyp, manifest.path, weights_path)
    final_evaluation.save(path, key, result, coco_results)


def raise_mismatch(weights_path: str | Path, names: list[str], manifest: DatasetManifest) -> None:
    from detbench.errors import DetbenchError

    raise DetbenchError(
        f"{weights_path}: trained for classes {names}, but {manifest.path} has "
        f"{list(manifest.class_names)}"
    )
