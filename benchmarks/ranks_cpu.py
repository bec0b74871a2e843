"""On the CPU, one cell on 2 ranks x 1 thread against 1 rank x 2 threads (issue 17).

The same cell (yolov3-tiny, the same global batch, img size and epochs) trained twice through
`detbench.training.launch.train_cell`, as the train rule does: once in the job's own process with 2
torch threads, once as 2 gloo ranks of 1 thread each (each rank half of every batch). Prints
images/s of each (all epochs, from run.json; and the last epoch's, from history.csv), the
wall time of the whole call (the ranks' start included), the final training loss, and the
ratio 2 ranks / 1 rank. Data: BCCD where present (DETBENCH_BCCD_DIR or ../shared/data/bccd),
else a synthetic set of BCCD's size. Run it on a quiet machine: the two runs share its cores.

    .venv/bin/python benchmarks/ranks_cpu.py                 # yolov3-tiny b8 416, 2 epochs
    .venv/bin/python benchmarks/ranks_cpu.py --epochs 3 --batch 16 --pairs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from common import description, environment, prepare_manifest, print_table, work_dir, write_json

from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.training.launch import train_cell
from detbench.training.train import TrainOutputs


def run(manifest: Path, folder: Path, settings: TrainSettings, ranks: int) -> dict[str, Any]:
    """Train the cell on ``ranks`` ranks sharing 2 threads; its figures."""
    shutil.rmtree(folder, ignore_errors=True)  # no checkpoint to resume from
    hyp = TrainHyperparameters(**{**vars(settings.hyp), "ranks": ranks})
    cell = TrainSettings(**{**vars(settings), "hyp": hyp})
    outputs = TrainOutputs.in_folder(folder)
    start = time.perf_counter()
    kwargs = {"settings": cell, "manifest_path": manifest, "outputs": outputs}
    train_cell(kwargs, ranks=ranks, nodes=1, threads=2, log_path=None)
    wall = time.perf_counter() - start
    record = json.loads(outputs.record.read_text(encoding="utf-8"))
    rows = outputs.history.read_text(encoding="utf-8").splitlines()
    last = dict(zip(rows[0].split(","), rows[-1].split(","), strict=True))
    return {
        "ranks": ranks,
        "threads_per_rank": record["ranks"][0]["torch_threads"],
        "world_size": record["world_size"],
        "images_per_second": record["images_per_second"],
        "last_epoch_images_per_second": float(last["images_per_second"]),
        "train_seconds": record["train_seconds"],
        "wall_seconds": wall,
        "final_train_loss": float(last["train_total_loss"]),
    }


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over ``runs`` (the run with the median images/s for the rest)."""
    runs = sorted(runs, key=lambda r: r["images_per_second"])
    middle = dict(runs[len(runs) // 2])
    last = sorted(r["last_epoch_images_per_second"] for r in runs)
    middle["last_epoch_images_per_second"] = last[len(last) // 2]
    return middle


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--model", default="yolov3-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--pairs", type=int, default=1, help="runs of each, alternating")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()

    work = work_dir("ranks_cpu")
    manifest, data = prepare_manifest(work)
    hyp = TrainHyperparameters(device="cpu", workers=0, checkpoint_interval_s=1e9)
    settings = TrainSettings(
        model=args.model, batch=args.batch, epochs=args.epochs, img_size=args.img_size, hyp=hyp
    )
    print(f"{args.model} b{args.batch} {args.img_size} px, {args.epochs} epochs on {data}")
    print("load average before: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    # Alternating (1, 2), (2, 1), ...: a machine that gets busier or quieter during the run
    # weighs on both alike.
    order = [(1, 2) if pair % 2 == 0 else (2, 1) for pair in range(args.pairs)]
    results = [run(manifest, work / f"ranks{r}", settings, r) for pair in order for r in pair]
    one, two = (_median([r for r in results if r["ranks"] == ranks]) for ranks in (1, 2))
    print_table(
        ["ranks x threads", "img/s (all epochs)", "img/s (last epoch)", "wall s", "loss"],
        [
            [
                f"{r['ranks']} x {r['threads_per_rank']}",
                r["images_per_second"],
                r["last_epoch_images_per_second"],
                r["wall_seconds"],
                r["final_train_loss"],
            ]
            for r in results
        ],
    )
    if args.pairs > 1:
        print(f"medians of {args.pairs} runs each:")
    ratio = two["images_per_second"] / one["images_per_second"]
    last_ratio = two["last_epoch_images_per_second"] / one["last_epoch_images_per_second"]
    print(f"2 ranks x 1 thread / 1 rank x 2 threads: {ratio:.2f} (last epoch {last_ratio:.2f})")
    print("load average after: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    write_json(
        args.json,
        {"environment": environment(torch.device("cpu")), "data": data, "runs": results},
    )


if __name__ == "__main__":
    main()
