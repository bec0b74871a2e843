"""A cell's fixed costs (issue 18): the whole `snakemake <cell>/metrics.json --forcerun train`
against the cell's training loop (run.json's train_seconds), for a code tree before and after a
change, and the parts of a train job's start-up before its first step.

    .venv/bin/python benchmarks/cell_overhead.py --before /tmp/detbench-before --epochs 1 5

``--before``: another checkout of detbench (e.g. `git archive main | tar -x -C DIR`), run the
same way in a copy of its workflow; without it only this checkout is measured. Target: on a CPU,
yolov3-tiny b8 416 px on BCCD, 1 epoch, the cell target at most 1.25x its training loop.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from common import REPO, bccd_directory, description, print_table, work_dir, write_json

SNAKEMAKE = str(Path(sys.executable).with_name("snakemake"))
WORKFLOW_ITEMS = ("Snakefile", "rules", "workflow", "config", "envs", "report")
PLATFORM = "bench-cpu"
TARGET_RATIO = 1.25

# A train job's start-up, part by part, in a fresh interpreter (what the train script runs).
STARTUP = """
import json, sys, time
t0 = time.perf_counter(); marks = {{}}
sys.path.insert(0, {src!r})
import torch
marks["import torch"] = time.perf_counter()
from detbench.training.train import train
from detbench.study.config import TrainSettings
from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.data.loader import make_train_loader
from detbench.training.device import select_precision
from detbench.training.engine import TrainingState, build_training_model
marks["import detbench (train, evaluate)"] = time.perf_counter()
torch.set_num_threads(2)
settings = TrainSettings("yolov3-tiny", 8, 1, img_size=416)
manifest = DatasetManifest.load({manifest!r})
device = torch.device("cpu")
loader = make_train_loader(manifest, settings, device)
marks["train split decoded (data cache)"] = time.perf_counter()
DetectionDataset(manifest.records("test"), 416)
marks["evaluation split decoded"] = time.perf_counter()
model = build_training_model(settings, len(manifest.class_names))
state = TrainingState.create(model, settings, select_precision(device, amp=True), device)
marks["model, optimizer, EMA"] = time.perf_counter()
last, parts = t0, {{}}
for name, mark in marks.items():
    parts[name] = mark - last
    last = mark
print(json.dumps(parts))
"""


def copy_workflow(tree: Path, dest: Path) -> Path:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in WORKFLOW_ITEMS:
        source = tree / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.exists():
            shutil.copy2(source, dest / name)
    (dest / "src").symlink_to(tree / "src", target_is_directory=True)
    return dest


def bench_config(source: Path, epochs: list[int], image_cache: str | None) -> dict[str, Any]:
    dataset = {"name": "bccd", "source": str(source), "classes": ["RBC", "WBC", "Platelets"],
               "train_split": "train", "eval_split": "test"}
    if image_cache is not None:  # only for the trees that have the key (issue 17)
        dataset["image_cache"] = image_cache
    return {
        "platform": PLATFORM,
        "dataset": dataset,
        "models": {"yolov3-tiny": {"weights": "scratch"}},
        "batch_sizes": [8],
        "epochs": epochs,
        "img_size": 416,
    }


def snakemake(workdir: Path, *args: str) -> float:
    start = time.perf_counter()
    result = subprocess.run([SNAKEMAKE, *args, "--cores", "2", "--configfile", "bench.yaml"],
                            cwd=workdir, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        command = " ".join(args)
        raise SystemExit(f"snakemake {command} failed in {workdir}:\n{result.stderr[-3000:]}")
    return seconds


def job_seconds(path: Path) -> float | None:
    """A rule job's wall time from its benchmark: file, if it ran."""
    if not path.exists():
        return None
    with path.open(newline="") as handle:
        return float(next(csv.DictReader(handle, delimiter="\t"))["s"])


def measure_cell(workdir: Path, epochs: int) -> dict[str, Any]:
    cell = f"results/{PLATFORM}/yolov3-tiny/b8_e{epochs}"
    wall = snakemake(workdir, f"{cell}/metrics.json", "--forcerun", "train")
    record = json.loads((workdir / cell / "run.json").read_text())
    metrics = json.loads((workdir / cell / "metrics.json").read_text())
    return {
        "epochs": epochs,
        "cell_wall_s": wall,
        "train_loop_s": record["train_seconds"],
        "ratio": wall / record["train_seconds"],
        "train_job_s": job_seconds(workdir / cell / "logs/train.benchmark.tsv"),
        "evaluate_job_s": job_seconds(workdir / cell / "logs/evaluate.benchmark.tsv"),
        "map50": metrics["metrics"]["map50"],
        "map50_95": metrics["metrics"]["map50_95"],
    }


def startup_parts(workdir: Path) -> dict[str, float]:
    manifest = workdir / "results/datasets/bccd/yolo/manifest.json"
    parts: dict[str, float] = {}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    parts["interpreter start"] = time.perf_counter() - start
    code = STARTUP.format(src=str(workdir / "src"), manifest=str(manifest))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    parts |= json.loads(out.stdout)
    cell = f"results/{PLATFORM}/yolov3-tiny/b8_e1/metrics.json"
    parts["snakemake start + plan (-n)"] = snakemake(workdir, "-n", cell, "--forcerun", "train")
    return parts


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--before", type=Path, help="a checkout of detbench before the change")
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 5, 20])
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs per cell")
    parser.add_argument("--image-cache", choices=["memory", "disk"],
                        help="dataset.image_cache of this checkout (default: the config's auto)")
    parser.add_argument("--output")
    args = parser.parse_args()
    source = bccd_directory()
    if source is None:
        raise SystemExit("BCCD not found: set DETBENCH_BCCD_DIR (this benchmark needs it)")
    trees = {"after": REPO} | ({"before": args.before.resolve()} if args.before else {})
    work = work_dir("cell_overhead")
    workdirs = {}
    for label, tree in trees.items():
        workdirs[label] = copy_workflow(tree, work / label)
        config = bench_config(source, args.epochs, args.image_cache if label == "after" else None)
        (workdirs[label] / "bench.yaml").write_text(yaml.safe_dump(config))
        snakemake(workdirs[label], "results/datasets/bccd/yolo")  # not timed
        if args.image_cache == "disk" and label == "after":  # the cache is built once, not timed
            cache_dir = "results/datasets/bccd/image_cache"
            snakemake(workdirs[label], f"{cache_dir}/train_416", f"{cache_dir}/test_416")
    rows, results = [], []
    for epochs in args.epochs:
        for repeat in range(args.repeats):
            for label in sorted(trees, reverse=repeat % 2 == 1):  # alternate the order
                result = {"code": label, "repeat": repeat, **measure_cell(workdirs[label], epochs)}
                results.append(result)
                print(json.dumps(result), flush=True)  # as it comes: a cell can take minutes
                rows.append([label, epochs, result["cell_wall_s"], result["train_loop_s"],
                             result["ratio"], result["train_job_s"], result["evaluate_job_s"],
                             result["map50"]])
    print(f"yolov3-tiny b8 416 px, BCCD ({source}), 2 cores; target ratio <= {TARGET_RATIO}")
    print_table(["code", "epochs", "cell wall s", "train loop s", "ratio", "train job s",
                 "evaluate job s", "mAP@0.5"], rows)
    parts = startup_parts(workdirs["after"])
    print("\ntrain job start-up, part by part (this checkout):")
    print_table(["part", "s"], [[name, seconds] for name, seconds in parts.items()])
    write_json(args.output, {"cells": results, "startup_s": parts})


if __name__ == "__main__":
    main()
