"""Accuracy on the real BCCD, measured not assumed (issue 3).

Trains one cell on BCCD's train split from the configured starting weights and evaluates it on
the test split, printing per-class AP, mAP@0.5, mAP@0.5:0.95, precision/recall (at confidence
0.1 and at the best-F1 confidence) and the wall time. The default is the acceptance setting:
yolov3-tiny, batch 8, 416 px, 20 epochs, from scratch (target: test mAP@0.5 >= 0.55).

    .venv/bin/python benchmarks/bccd_accuracy.py                   # ~10-35 min on 2 CPU cores
    .venv/bin/python benchmarks/bccd_accuracy.py --model yolov3 --batch 4 --epochs 10

BCCD is read from DETBENCH_BCCD_DIR (default ../shared/data/bccd, a VOC copy of the dataset).
"""

from __future__ import annotations

import argparse
import logging
import time

from common import description, environment, prepare_data, print_table, work_dir, write_json

from detbench.evaluation.evaluate import evaluate_cell
from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
from detbench.training.train import TrainOutputs, train


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--model", default="yolov3-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    # The cell beside the data it trains on: one trained on another copy is never resumed.
    work, manifest, data = prepare_data(work_dir("bccd-accuracy"), synthetic_fallback=False)
    hyp = TrainHyperparameters()
    settings = TrainSettings(
        model=args.model,
        batch=args.batch,
        epochs=args.epochs,
        img_size=args.img_size,
        seed=args.seed,
        hyp=hyp,
    )
    cell = work / f"{args.model}_b{args.batch}_e{args.epochs}_{args.img_size}_s{args.seed}"
    outputs = TrainOutputs.in_folder(cell)
    start = time.perf_counter()
    record = train(settings, manifest, outputs, threads=args.threads)
    train_wall = time.perf_counter() - start
    result = evaluate_cell(
        outputs.weights, manifest, "test", EvalSettings(), hyp,
        cell / "metrics.json", cell / "detections.json", threads=args.threads,
    )
    metrics = result["metrics"]

    print(f"\n{args.model}, batch {args.batch}, {args.epochs} epochs, {args.img_size} px, from "
          f"scratch, seed {args.seed}; data: {data}; device: {record['device_name']}")
    print(f"train wall time {train_wall:.0f} s ({record['images_per_second']:.2f} images/s); "
          f"evaluation {result['eval_seconds']:.1f} s")
    resources = record["resources"]
    print(f"train peak memory: {resources['max_tree_rss_kb'] / 2**20:.2f} GiB process tree, "
          f"{resources['max_rss_kb'] / 2**20:.2f} GiB largest process (max RSS, as time -v)\n")
    print("test split (72 images): COCO 101-point AP per class")
    print_table(
        ["class", "ground truth", "AP@0.5", "AP@0.5:0.95"],
        [[c["name"], c["num_ground_truth"], c["ap50"], c["ap50_95"]] for c in metrics["per_class"]],
    )
    print(f"\nmAP@0.5 {metrics['map50']:.4f}   mAP@0.5:0.95 {metrics['map50_95']:.4f}")
    print(f"precision {metrics['precision_at_conf']:.4f} recall {metrics['recall_at_conf']:.4f} "
          f"at confidence {metrics['pr_confidence']} (IoU 0.5, class mean)")
    print(f"precision {metrics['precision_at_best_f1']:.4f} recall "
          f"{metrics['recall_at_best_f1']:.4f} at the best-F1 confidence "
          f"{metrics['best_f1_confidence']:.3f}")
    write_json(args.output, {
        "environment": environment_from(record),
        "setting": vars(args),
        "data": data,
        "train_wall_s": train_wall,
        "train_resources": record["resources"],
        "metrics": metrics,
    })


def environment_from(record: dict) -> dict:
    import torch

    return environment(torch.device(record["device"]))


if __name__ == "__main__":
    main()
