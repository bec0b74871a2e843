"""The workflow's fixed costs (issue 8): `snakemake -n` on the full study config, and the
fixed cost of one train job before its first step (interpreter start, imports, dataset cache,
model build, optimizer and EMA). Targets: planning < 3 s, a job's start-up < 5 s on a CPU.

    .venv/bin/python benchmarks/workflow_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from common import (
    REPO,
    description,
    environment,
    prepare_manifest,
    print_table,
    work_dir,
    write_json,
)

SNAKEMAKE = str(REPO / ".venv" / "bin" / "snakemake")

# What a train job runs before its first optimizer step, as a separate process.
STARTUP = """
import sys, time
sys.path.insert(0, {src!r})
import torch
from detbench.data.dataset import DatasetManifest
from detbench.training.device import select_precision
from detbench.study.config import TrainSettings
from detbench.data.loader import make_train_loader
from detbench.training.engine import TrainingState, build_training_model
settings = TrainSettings({model!r}, 8, 1, img_size=416)
manifest = DatasetManifest.load({manifest!r})
device = torch.device("cpu")
loader = make_train_loader(manifest, settings, device)
model = build_training_model(settings, len(manifest.class_names))
state = TrainingState.create(model, settings, select_precision(device, amp=True), device)
batch = next(iter(loader))
"""


def timed(command: list[str], cwd: str | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()

    plan = [
        timed([SNAKEMAKE, "-n", "--quiet", "all", "--configfile", "config/config.yaml"], str(REPO))
        for _ in range(args.repeats)
    ]
    manifest, data = prepare_manifest(work_dir("data"))
    startup = {}
    for model in ("yolov3-tiny", "yolov3"):
        code = STARTUP.format(src=str(REPO / "src"), model=model, manifest=str(manifest))
        startup[model] = [timed([sys.executable, "-c", code]) for _ in range(args.repeats)]
    import torch

    print(f"{environment(torch.device('cpu'))['device_name']}; data: {data}")
    print_table(
        ["what", "median s", "min s", "target s"],
        [
            ["snakemake -n (config/config.yaml)", statistics.median(plan), min(plan), 3.0],
            *[
                [f"train job start-up, {m}", statistics.median(t), min(t), 5.0]
                for m, t in startup.items()
            ],
        ],
    )
    write_json(args.output, {
        "environment": environment(torch.device("cpu")), "snakemake_dry_run_s": plan,
        "train_job_startup_s": startup,
    })


if __name__ == "__main__":
    main()
