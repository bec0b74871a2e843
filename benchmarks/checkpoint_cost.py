"""What one resume checkpoint costs (issue 8): its size and the seconds to write it, per model,
with the state a real train job saves (weights, SGD momentum, EMA weights, RNG states), to the
folder given (default: a temporary folder; pass the results filesystem to measure that one).

Set against an epoch's time this says how often `train.checkpoint_interval_s` lets a job
checkpoint: on a GPU a BCCD epoch takes about a second, on 2 CPU cores about half a minute.

    .venv/bin/python benchmarks/checkpoint_cost.py --folder /path/on/the/results/filesystem
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import description, environment, print_table, write_json

from detbench.models import build_model
from detbench.study.config import TrainSettings
from detbench.training.checkpoint import save_checkpoint
from detbench.training.device import select_precision
from detbench.training.engine import TrainingState


def training_state(model_name: str) -> TrainingState:
    """A state as after a first optimizer step: SGD's momentum buffers exist."""
    settings = TrainSettings(model_name, batch=8, epochs=1)
    device = torch.device("cpu")
    model = build_model(model_name, num_classes=3)
    state = TrainingState.create(model, settings, select_precision(device, True), device)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    state.optimizer.step()
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--models", nargs="+", default=["yolov3-tiny", "yolov3"])
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output")
    args = parser.parse_args()

    rows, results = [], []
    with tempfile.TemporaryDirectory(dir=args.folder, prefix="detbench-checkpoints-") as tmp:
        for model_name in args.models:
            state = training_state(model_name)
            resume_dir = Path(tmp) / model_name
            seconds = []
            for epoch in range(1, args.repeats + 1):
                state.next_epoch = epoch
                start = time.perf_counter()
                save_checkpoint(resume_dir, state.checkpoint("benchmark", {}))
                seconds.append(time.perf_counter() - start)
            size_mb = (resume_dir / f"epoch-{args.repeats:05d}.pt").stat().st_size / 1e6
            median = statistics.median(seconds)
            rows.append([model_name, size_mb, median, size_mb / median])
            results.append({"model": model_name, "size_mb": size_mb, "seconds": seconds})
        where = args.folder or Path(tempfile.gettempdir())
    env = environment(torch.device("cpu"))
    print(f"one resume checkpoint (sha256 and fsync included), written to {where}; "
          f"median of {args.repeats}")
    print_table(["model", "MB", "seconds", "MB/s"], rows)
    write_json(args.output, {"environment": env, "folder": str(where), "results": results})


if __name__ == "__main__":
    main()
