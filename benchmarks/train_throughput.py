"""Training throughput per model x batch, against the hardware's own limit (issue 8).

For each model and batch size, on the current device (CUDA when present, else the CPU):

* **bare step**: `detbench.training.train.train_step` (forward, loss, backward, optimizer, EMA) on
one
  batch already resident on the device, repeated: what the model alone costs;
* **real loop**: the same `train_step` fed by the real DataLoader (cached images, augmentation,
  collation, pinned memory and workers as training sets them up): what a training epoch costs.

Their ratio is what the input pipeline costs. Model FLOP utilisation (MFU) = achieved model
FLOP/s over a peak measured in the same run: a square matmul in the training dtype. Model FLOPs
per image = 3 x forward FLOPs (forward + backward's two products), forward FLOPs counted from the
model's convolutions the way Darknet counts them (2 x multiply-adds): yolov3 65.9 GFLOPs and
yolov3-tiny 5.6 at 416 px. "Ceiling" is the highest MFU the step's kernels allow at that peak
and the memory bandwidth measured in the same run (a large copy): the roofline of
`benchmarks/roofline.py` for the kernels eager PyTorch runs (`benchmarks/mfu_ceiling.py`
shows the other schemes); "of ceiling" = bare MFU / ceiling.

    .venv/bin/python benchmarks/train_throughput.py                      # CPU: yolov3-tiny b8
    .venv/bin/python benchmarks/train_throughput.py --models yolov3 yolov3-tiny --batches 8 32
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Callable

import torch
from common import (
    description,
    environment,
    peak_copy_bandwidth,
    peak_matmul_flops,
    prepare_manifest,
    print_table,
    work_dir,
    write_json,
)
from roofline import Hardware, step_ceiling

from detbench.data.dataset import Batch, DatasetManifest
from detbench.data.loader import make_train_loader, steps_per_epoch
from detbench.models import get_model_spec
from detbench.models.flops import forward_conv_flops
from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.telemetry.kernels import ENOUGH_EPOCHS, endless_batches
from detbench.telemetry.resources import shutdown_loader_workers
from detbench.training.device import Precision, select_device, select_precision, synchronize
from detbench.training.engine import (
    TrainingState,
    build_training_model,
    seed_everything,
    train_step,
)
from detbench.training.loss import YoloLoss

COMPILE_MODES = ["default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune"]


@dataclasses.dataclass
class Timing:
    ms_per_step: float
    images_per_s: float


def time_steps(
    step: Callable[[], None], steps: int, warmup: int, batch: int, device: torch.device
) -> Timing:
    for _ in range(warmup):
        step()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    seconds = time.perf_counter() - start
    return Timing(1000 * seconds / steps, batch * steps / seconds)


def to_device(batch: Batch, device: torch.device) -> Batch:
    return dataclasses.replace(
        batch, images=batch.images.to(device), targets=batch.targets.to(device)
    )


def measure(
    model_name: str,
    batch: int,
    args: argparse.Namespace,
    manifest: DatasetManifest,
    device: torch.device,
    precision: Precision,
) -> dict[str, float]:
    settings = TrainSettings(
        model=model_name,
        batch=batch,
        epochs=1,
        img_size=args.img_size,
        # Compiled below, in the mode asked for (train.compile compiles in the default mode).
        hyp=TrainHyperparameters(channels_last=not args.contiguous),
    )
    seed_everything(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # this cell's peak, not the run's
    loader = make_train_loader(manifest, settings, device, epochs=ENOUGH_EPOCHS)
    model = build_training_model(settings, len(manifest.class_names)).to(device)
    state = TrainingState.create(model, settings, precision, device)
    if args.compile_mode is not None:
        state.forward = torch.compile(model, mode=args.compile_mode)
    model.train()
    loss_fn = YoloLoss(model, settings.hyp)
    batches = endless_batches(loader)
    resident = to_device(next(batches), device)

    def step(batch: Batch) -> None:
        if args.compile_mode == "reduce-overhead":
            # CUDA graphs replay into the same output buffers: a new step may overwrite them.
            torch.compiler.cudagraph_mark_step_begin()
        train_step(state, batch, loss_fn, precision, device)

    # The first step pays compilation (torch.compile) and cuDNN autotuning: timed on its own.
    start = time.perf_counter()
    step(resident)
    synchronize(device)
    first_step_s = time.perf_counter() - start
    bare = time_steps(lambda: step(resident), args.steps, args.warmup, batch, device)
    figures = {
        "first_step_s": first_step_s,
        "bare_ms_per_step": bare.ms_per_step,
        "bare_images_per_s": bare.images_per_s,
        "loader_workers": loader.num_workers,
    }
    if args.bare_only:
        batches.close()
        shutdown_loader_workers(loader)
        return figures | {"peak_gpu_memory_gib": peak_gpu_memory(device)}
    # On CUDA the real loop warms up over a whole epoch: the epoch's last, smaller batch is a
    # new shape that cuDNN autotunes once per job (seconds for yolov3), which would otherwise
    # land inside the timed steps (seen on an H100: yolov3 b8 "383 ms/step" against 45 bare).
    real_warmup = steps_per_epoch(loader) if device.type == "cuda" else args.warmup
    real = time_steps(lambda: step(next(batches)), args.steps, real_warmup, batch, device)
    batches.close()
    shutdown_loader_workers(loader)
    return figures | {
        "real_ms_per_step": real.ms_per_step,
        "real_images_per_s": real.images_per_s,
        "real_over_bare_time": real.ms_per_step / bare.ms_per_step,
        "peak_gpu_memory_gib": peak_gpu_memory(device),
    }


def peak_gpu_memory(device: torch.device) -> float:
    """GiB allocated at most by tensors since the cell began (NaN on the CPU)."""
    if device.type != "cuda":
        return float("nan")
    return torch.cuda.max_memory_allocated(device) / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--models", nargs="+", default=None,
                        help="default: both on CUDA, yolov3-tiny on the CPU")
    parser.add_argument("--batches", type=int, nargs="+", default=None,
                        help="default: 8 16 32 on CUDA, 8 on the CPU")
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--steps", type=int, default=None, help="timed steps (CUDA 30, CPU 8)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (CUDA 10, CPU 2)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the forward pass, as `train.compile: true` does")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=None,
                        help="torch.compile the forward pass in this mode (implies --compile)")
    parser.add_argument("--bare-only", action="store_true",
                        help="time the bare step only (no real loop; for slow compiles)")
    parser.add_argument("--contiguous", action="store_true",
                        help="NCHW tensors instead of channels-last (the setting before)")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    if args.compile and args.compile_mode is None:
        args.compile_mode = "default"

    device = select_device("auto")
    cuda = device.type == "cuda"
    args.models = args.models or (["yolov3-tiny", "yolov3"] if cuda else ["yolov3-tiny"])
    args.batches = args.batches or ([8, 16, 32] if cuda else [8])
    args.steps = args.steps or (30 if cuda else 8)
    args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    precision = select_precision(device, amp=True)
    manifest_path, data = prepare_manifest(work_dir("data"))
    manifest = DatasetManifest.load(manifest_path)
    peak, peak_how = peak_matmul_flops(device, precision)
    bandwidth, bandwidth_how = peak_copy_bandwidth(device)
    hardware = Hardware(f"{device} as measured", peak, bandwidth)
    element_bytes = (precision.dtype or torch.float32).itemsize

    rows, results = [], []
    for model_name in args.models:
        spec = get_model_spec(model_name)
        coco_gflops = forward_conv_flops(spec.layers(80), args.img_size) / 1e9
        print(f"{model_name}: {coco_gflops:.1f} forward GFLOPs at {args.img_size} px with COCO's "
              "80 classes (Darknet: yolov3 65.9, yolov3-tiny 5.6 at 416)")
        layers = spec.layers(len(manifest.class_names))
        flops_per_image = 3 * forward_conv_flops(layers, args.img_size)
        for batch in args.batches:
            figures = measure(model_name, batch, args, manifest, device, precision)
            mfu = flops_per_image * figures["bare_images_per_s"] / peak
            real_mfu = flops_per_image * figures.get("real_images_per_s", float("nan")) / peak
            ceiling = step_ceiling(layers, args.img_size, batch, hardware, "eager", element_bytes)
            figures |= {
                "model": model_name,
                "batch": batch,
                "train_gflops_per_image": flops_per_image / 1e9,
                "bare_mfu": mfu,
                "real_mfu": real_mfu,
                "eager_roofline_ms_per_step": 1000 * ceiling.seconds,
                "eager_roofline_mfu": ceiling.mfu,
            }
            results.append(figures)
            rows.append([
                model_name, batch, figures["first_step_s"], figures["bare_ms_per_step"],
                figures["bare_images_per_s"], figures.get("real_ms_per_step", float("nan")),
                figures.get("real_images_per_s", float("nan")),
                figures.get("real_over_bare_time", float("nan")), 100 * mfu, 100 * real_mfu,
                100 * ceiling.mfu, 100 * mfu / ceiling.mfu, figures["loader_workers"],
            ])
    env = environment(device)
    layout = "NCHW" if args.contiguous else "channels-last"
    compiled = f", torch.compile mode {args.compile_mode}" if args.compile_mode else ""
    print(f"training throughput at {args.img_size} px on {env['device_name']} ({device}, "
          f"{precision.name}, {layout}{compiled}); data: {data}")
    print(f"peak: {peak / 1e12:.3g} TFLOP/s ({peak_how}); model FLOPs/image = 3 x forward "
          "(Darknet count: 2 x conv multiply-adds)")
    print(f"memory bandwidth: {bandwidth / 1e9:.4g} GB/s ({bandwidth_how}); ceiling = the eager "
          f"kernels' roofline at that peak and bandwidth, {element_bytes}-byte activations")
    print_table(["model", "batch", "first step s", "bare ms/step", "bare img/s", "real ms/step",
                 "real img/s", "real/bare time", "bare MFU %", "real MFU %", "ceiling %",
                 "of ceiling %", "workers"], rows)
    write_json(args.output, {
        "environment": env,
        "data": data,
        "precision": precision.name,
        "peak_flops": peak,
        "peak_measured_with": peak_how,
        "bandwidth_bytes_per_s": bandwidth,
        "bandwidth_measured_with": bandwidth_how,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "results": results,
    })


if __name__ == "__main__":
    main()
