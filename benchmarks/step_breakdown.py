"""Where one training step's time goes (issue 8): its parts timed cumulatively on a resident
batch, and the GPU's own busy time per step, to tell launch-bound from compute-bound.

Cumulative parts, each the median of --repeats timed runs after warm-up, device synchronised:
forward; + loss; + backward; + optimizer step; + EMA (the whole `train_step`). Then --repeats
profiled `train_step`s: the sum of their GPU activities (device time) per step against the
unprofiled step time. GPU busy close to the step time: compute-bound; far below: the CPU cannot
launch fast enough, or waits on the device.

    python3 benchmarks/step_breakdown.py --model yolov3 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from common import description, environment, prepare_manifest, print_table, work_dir, write_json

from detbench.data.dataset import DatasetManifest
from detbench.data.loader import make_train_loader
from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.telemetry.kernels import CPU_ACTIVITY, CUDA_ACTIVITY, activity_table
from detbench.training.device import select_device, select_precision, synchronize
from detbench.training.engine import (
    TrainingState,
    build_training_model,
    seed_everything,
    train_step,
)
from detbench.training.loss import YoloLoss


def median_ms(run: Callable[[], object], repeats: int, device: torch.device) -> float:
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(1000 * (time.perf_counter() - start))
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--model", default="yolov3")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--output")
    args = parser.parse_args()

    device = select_device("auto")
    precision = select_precision(device, amp=True)
    manifest_path, data = prepare_manifest(work_dir("data"))
    manifest = DatasetManifest.load(manifest_path)
    settings = TrainSettings(args.model, args.batch, 1, img_size=args.img_size,
                             hyp=TrainHyperparameters(workers=0))
    seed_everything(0)
    batch = next(iter(make_train_loader(manifest, settings, device)))
    model = build_training_model(settings, len(manifest.class_names)).to(device)
    state = TrainingState.create(model, settings, precision, device)
    model.train()
    loss_fn = YoloLoss(model, settings.hyp)
    images = batch.images.to(device).float().div_(255)
    images = images.contiguous(memory_format=torch.channels_last)
    targets = batch.targets.to(device)
    autocast = torch.autocast(device.type, dtype=precision.dtype,
                              enabled=precision.dtype is not None)

    def forward() -> list[torch.Tensor]:
        with autocast:
            return model(images)

    def with_loss() -> torch.Tensor:
        return loss_fn(forward(), targets)[0]

    def with_backward() -> None:
        state.optimizer.zero_grad(set_to_none=True)
        state.scaler.scale(with_loss()).backward()

    def with_optimizer() -> None:
        with_backward()
        state.scaler.step(state.optimizer)
        state.scaler.update()

    def whole_step() -> None:
        train_step(state, batch, loss_fn, precision, device)

    parts = [("forward", forward), ("+ loss", with_loss), ("+ backward", with_backward),
             ("+ optimizer", with_optimizer), ("+ EMA = train_step", whole_step)]
    for _, run in parts:  # warm-up: cuDNN autotuning, allocator
        for _ in range(3):
            run()
    rows = [[name, median_ms(run, args.repeats, device)] for name, run in parts]

    kind = CUDA_ACTIVITY if device.type == "cuda" else CPU_ACTIVITY
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    synchronize(device)
    start = time.perf_counter()
    with torch.profiler.profile(activities=activities) as profiler:
        for _ in range(args.repeats):
            whole_step()
        synchronize(device)
    wall_ms = 1000 * (time.perf_counter() - start) / args.repeats
    table = activity_table(profiler.key_averages(), kind)
    busy_ms = sum(a.total_us for a in table) / 1000 / args.repeats
    cpu_ops = activity_table(profiler.key_averages(), CPU_ACTIVITY)
    launches = sum(a.calls for a in cpu_ops if a.name in ("cudaLaunchKernel", "cuLaunchKernel",
                                                          "cudaLaunchKernelExC"))

    env = environment(device)
    print(f"{args.model} b{args.batch} at {args.img_size} px on {env['device_name']} "
          f"({precision.name}, channels-last), median of {args.repeats}; data: {data}")
    print_table(["cumulative part", "ms"], rows)
    step_ms = rows[-1][1]
    print(f"{kind} busy {busy_ms:.1f} ms per train_step = {100 * busy_ms / step_ms:.0f}% of its "
          f"{step_ms:.1f} ms; {launches / args.repeats:.0f} kernel launches/step (profiled "
          f"steps took {wall_ms:.1f} ms: the profiler's own overhead)")
    print("top activities by total time:")
    print_table(["name", "calls/step", "ms/step"],
                [[a.name[:70], a.calls / args.repeats, a.total_us / 1000 / args.repeats]
                 for a in table[:12]])
    print("top CPU operators by self CPU time:")
    print_table(["name", "calls/step", "ms/step"],
                [[a.name[:70], a.calls / args.repeats, a.total_us / 1000 / args.repeats]
                 for a in cpu_ops[:15]])
    write_json(args.output, {
        "environment": env,
        "data": data,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "cumulative_ms": dict(rows),
        "profiled_wall_ms": wall_ms,
        "busy_ms": busy_ms,
        "launches_per_step": launches / args.repeats,
    })


if __name__ == "__main__":
    main()
