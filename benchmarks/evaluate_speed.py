"""Seconds to evaluate the val split, against one training epoch; and our mAP against
pycocotools' time on the same detections (issue 8; target: evaluation < 25% of an epoch).

One epoch of yolov3-tiny (batch 8, 416 px) is trained first, in the same process, so both
figures come from one run on one machine; the evaluation then predicts the val split with that
model (NMS at confidence 0.001, as for the metrics) and computes the metrics twice: with
detbench.evaluation.metrics and with pycocotools' COCOeval.

    .venv/bin/python benchmarks/evaluate_speed.py
    .venv/bin/python benchmarks/evaluate_speed.py --model yolov3 --weights results/.../weights.pt
"""

from __future__ import annotations

import argparse
import contextlib
import io
import time
from pathlib import Path

import torch
from coco_reference import to_coco_ground_truth
from common import description, environment, prepare_data, print_table, work_dir, write_json

from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.evaluation.evaluate import predict_split
from detbench.evaluation.inference import load_trained_model
from detbench.evaluation.metrics import (
    ImageDetections,
    ImageGroundTruth,
    coco_image_ids,
    evaluate_detections,
    to_coco_results,
)
from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
from detbench.training.train import TrainOutputs, train


def pycocotools_seconds(ground_truth, detections, class_names, sizes) -> tuple[float, float]:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    ids = coco_image_ids(ground_truth)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = to_coco_ground_truth(ground_truth, class_names, sizes)
        coco.createIndex()
        results = coco.loadRes(to_coco_results(detections, ids))
        evaluation = COCOeval(coco, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return time.perf_counter() - start, float(evaluation.stats[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--model", default="yolov3-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--weights", help="evaluate these weights instead of a 1-epoch model")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output")
    args = parser.parse_args()

    # The cell beside the data it trains on: one trained on another source is never resumed.
    work, manifest_path, data = prepare_data(work_dir("evaluate"))
    settings = TrainSettings(args.model, args.batch, 1, img_size=args.img_size)
    cell = work / f"{args.model}_b{args.batch}_{args.img_size}"
    outputs = TrainOutputs.in_folder(cell)
    record = train(settings, manifest_path, outputs, threads=args.threads)
    epoch_seconds = record["train_seconds"]
    weights = Path(args.weights) if args.weights else outputs.weights

    device = torch.device(record["device"])
    model, metadata = load_trained_model(weights, device)
    manifest = DatasetManifest.load(manifest_path)
    records = manifest.records("val")
    dataset = DetectionDataset(records, int(metadata["img_size"]))
    hyp = TrainHyperparameters()
    detections, _, predict_seconds = predict_split(model, dataset, EvalSettings(), hyp, device)
    ground_truth = {r.id: ImageGroundTruth(r.boxes_xyxy(), r.classes) for r in records}
    found = {k: ImageDetections(d.boxes, d.scores, d.classes) for k, d in detections.items()}
    start = time.perf_counter()
    metrics = evaluate_detections(ground_truth, found, manifest.class_names)
    ours_seconds = time.perf_counter() - start
    sizes = {r.id: (r.width, r.height) for r in records}
    coco_seconds, coco_map50 = pycocotools_seconds(ground_truth, found, manifest.class_names, sizes)

    evaluate_seconds = predict_seconds + ours_seconds
    print(f"{args.model}, {args.img_size} px; data: {data}; {environment(device)['device_name']}")
    print(f"one training epoch ({record['train_images']} images, batch {args.batch}): "
          f"{epoch_seconds:.1f} s")
    print_table(
        ["step", "seconds", "share of one epoch"],
        [
            ["predict val split (forward + NMS)", predict_seconds, predict_seconds / epoch_seconds],
            ["metrics (detbench)", ours_seconds, ours_seconds / epoch_seconds],
            ["evaluation in all", evaluate_seconds, evaluate_seconds / epoch_seconds],
            ["metrics (pycocotools)", coco_seconds, coco_seconds / epoch_seconds],
        ],
    )
    detections_count = sum(len(d) for d in detections.values())
    print(f"val split: {len(records)} images, {detections_count} detections; mAP@0.5 detbench "
          f"{metrics.map50:.4f} vs pycocotools {coco_map50:.4f}; metrics "
          f"{coco_seconds / ours_seconds:.1f}x faster than pycocotools")
    write_json(args.output, {
        "environment": environment(device), "data": data, "settings": vars(args),
        "epoch_s": epoch_seconds, "predict_s": predict_seconds, "metrics_s": ours_seconds,
        "pycocotools_s": coco_seconds, "evaluation_share": evaluate_seconds / epoch_seconds,
        "map50_detbench": metrics.map50, "map50_pycocotools": coco_map50,
    })


if __name__ == "__main__":
    main()
