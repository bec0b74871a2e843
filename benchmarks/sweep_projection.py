"""Projected wall time of one platform's whole sweep, from short real jobs (issue 8).

For each model x batch it runs what the workflow runs for a cell, in this process, on the
current device: `detbench.training.train.train` for a few epochs, `evaluate_cell` on the eval split
and
`profile_cell` (the profile stage's job). From those it takes

* **job overhead**: train job seconds minus its epochs (loader, model build, weights, record,
  and any resume checkpoint: with the default `checkpoint_interval_s` a job of a minute or less
  writes none), plus a fresh interpreter's imports, timed in a subprocess;
* **first-epoch extra**: the first epoch minus a steady one (cuDNN autotuning, worker start);
* **steady epoch**: the last epoch's seconds;
* **evaluate** and **profile** job seconds;

and projects every cell of the config's grid (default: the 2020 study's batch sizes {4, 8,
16, 32} x epochs {1, 5, 10, 20}): overhead + extra + epochs x steady + evaluate, plus one
profile job per model x batch. Jobs are counted one after another (one GPU); the figure a
user waits for with several GPUs is this over their number, plus the scheduler's queueing.

    .venv/bin/python benchmarks/sweep_projection.py --models yolov3-tiny --batches 8   # CPU
    python3 benchmarks/sweep_projection.py --output sweep.json                         # GPU
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import (
    REPO,
    description,
    environment,
    prepare_manifest,
    print_table,
    work_dir,
    write_json,
)

from detbench.evaluation.evaluate import evaluate_cell
from detbench.study.config import EvalSettings, ProfileSettings, TrainHyperparameters, TrainSettings
from detbench.telemetry.kernels import ProfileOutputs, profile_cell
from detbench.training.train import TrainOutputs, train

STUDY_BATCHES = (4, 8, 16, 32)
STUDY_EPOCHS = (1, 5, 10, 20)

IMPORTS = (
    "import sys; sys.path.insert(0, {src!r}); import torch; import detbench.training.train; "
    "import detbench.evaluation.evaluate; torch.cuda.is_available() and torch.cuda.init()"
)


def import_seconds() -> float:
    """A fresh interpreter importing what a train job imports (and starting CUDA if present)."""
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", IMPORTS.format(src=str(REPO / "src"))], check=True
    )
    return time.perf_counter() - start


def measure_cell(
    model: str, batch: int, args: argparse.Namespace, manifest: Path, folder: Path
) -> dict[str, float]:
    hyp = TrainHyperparameters(cudnn_benchmark=args.cudnn_benchmark == "on")
    settings = TrainSettings(model=model, batch=batch, epochs=args.epochs, hyp=hyp)
    outputs = TrainOutputs.in_folder(folder)
    record = train(settings, manifest, outputs)
    with outputs.history.open(encoding="utf-8") as handle:
        history = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]
    start = time.perf_counter()
    result = evaluate_cell(
        outputs.weights, manifest, "test", EvalSettings(), settings.hyp,
        folder / "metrics.json", folder / "detections.json",
    )
    evaluate_seconds = time.perf_counter() - start
    start = time.perf_counter()
    profile = profile_cell(
        settings, manifest,
        ProfileOutputs(folder / "kernels.csv", folder / "profile.json", folder / "trace.json.gz"),
        ProfileSettings(),
    )
    profile_seconds = time.perf_counter() - start
    gpu = record["gpu"]
    return {
        "model": model,
        "batch": batch,
        "epochs_run": args.epochs,
        "job_seconds": record["job_seconds_this_segment"],
        "epoch_seconds": history,
        "overhead_seconds": record["job_seconds_this_segment"] - sum(history),
        "checkpoints_written": record["checkpoints_written_this_segment"],
        "checkpoint_seconds": record["checkpoint_seconds_this_segment"],
        "first_epoch_extra_seconds": max(history[0] - history[-1], 0.0),
        "steady_epoch_seconds": history[-1],
        "train_images": record["train_images"],
        "evaluate_seconds": evaluate_seconds,
        "eval_map50": result["metrics"]["map50"],
        "profile_seconds": profile_seconds,
        "biggest_activity": profile["biggest_activity_name"],
        "biggest_activity_avg_us": profile["biggest_activity_avg_us"],
        "activity_kind": profile["activity_kind"],
        "gpu_status": gpu.get("status"),
        "gpu_peak_memory_used_mib": gpu.get("peak_memory_used_mib"),
        "gpu_mean_utilization_percent": gpu.get("mean_utilization_percent"),
        "gpu_mean_power_w": gpu.get("mean_power_w"),
        "torch_peak_reserved_mib": gpu.get("torch_peak_reserved_mib"),
        "max_rss_kb": record["resources"]["max_rss_kb"],
    }


def project(cells: list[dict], epochs_grid: list[int], start_seconds: float) -> list[list]:
    rows = []
    for cell in cells:
        per_epoch = cell["steady_epoch_seconds"]
        fixed = start_seconds + cell["overhead_seconds"] + cell["first_epoch_extra_seconds"]
        train_total = sum(fixed + epochs * per_epoch for epochs in epochs_grid)
        evaluate_total = len(epochs_grid) * (start_seconds + cell["evaluate_seconds"])
        profile_total = start_seconds + cell["profile_seconds"]
        rows.append([cell["model"], cell["batch"], train_total, evaluate_total, profile_total])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--models", nargs="+", default=["yolov3-tiny", "yolov3"])
    parser.add_argument("--batches", type=int, nargs="+", default=list(STUDY_BATCHES))
    parser.add_argument("--epochs-grid", type=int, nargs="+", default=list(STUDY_EPOCHS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs each measured job runs")
    parser.add_argument("--cudnn-benchmark", choices=["on", "off"], default="off",
                        help="train.cudnn_benchmark (config/config.yaml sets off): autotuning "
                        "costs seconds per new batch shape at a job's start")
    parser.add_argument("--output")
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: a steady epoch is the one after the first")

    manifest, data = prepare_manifest(work_dir("data"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    start_seconds = import_seconds()
    cells = []
    with tempfile.TemporaryDirectory(prefix="detbench-sweep-") as tmp:
        for model in args.models:
            for batch in args.batches:
                folder = Path(tmp) / f"{model}_b{batch}"
                cells.append(measure_cell(model, batch, args, manifest, folder))

    print(f"sweep projection on {environment(device)['device_name']} ({device}, cudnn.benchmark "
          f"{args.cudnn_benchmark}); data: {data}; a fresh job's imports {start_seconds:.2f} s")
    print_table(
        ["model", "batch", "job s", "overhead s", "1st-epoch extra s", "steady epoch s",
         "evaluate s", "profile s", "biggest activity avg µs", "GPU util %", "GPU peak MiB"],
        [[c["model"], c["batch"], c["job_seconds"], c["overhead_seconds"],
          c["first_epoch_extra_seconds"], c["steady_epoch_seconds"], c["evaluate_seconds"],
          c["profile_seconds"], c["biggest_activity_avg_us"],
          c["gpu_mean_utilization_percent"], c["gpu_peak_memory_used_mib"]] for c in cells],
    )
    rows = project(cells, args.epochs_grid, start_seconds)
    total = sum(sum(row[2:]) for row in rows)
    print(f"projected sweep, epochs {args.epochs_grid} per model x batch, one job at a time:")
    print_table(["model", "batch", "train jobs s", "evaluate jobs s", "profile job s"], rows)
    print(f"total: {total:.0f} s = {total / 60:.1f} min for {len(rows) * len(args.epochs_grid)} "
          f"cells on one {device.type} device")
    write_json(args.output, {
        "environment": environment(device),
        "data": data,
        "import_seconds": start_seconds,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "cells": cells,
        "projection_rows": rows,
        "projected_total_seconds": total,
    })


if __name__ == "__main__":
    main()
