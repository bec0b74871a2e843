"""The highest model FLOP utilisation a training step can reach on given hardware (issue 8).

A roofline of one training step (`benchmarks/roofline.py`): every kernel takes at least
max(FLOPs / peak, bytes / bandwidth), kernels of one stream run one after another, so a step
takes at least their sum, and MFU can be at most model FLOPs / that floor / peak. Printed per
model x batch for three kernel sets: what eager PyTorch runs, with batch norm + LeakyReLU fused
into one kernel each way, and convolutions alone (everything else free).

Counted from the layer specs, so it runs anywhere and needs no data. By default for an H100
SXM's datasheet figures (bf16 dense 989.4 TFLOP/s, 3.35 TB/s): nominal figures, so the ceiling
is an upper bound. `--measure` takes both from the current device instead (a large matmul in
the training dtype and a large copy, as `train_throughput.py` measures them).

    .venv/bin/python benchmarks/mfu_ceiling.py
    .venv/bin/python benchmarks/mfu_ceiling.py --peak-tflops 784   # the peak run 3 measured
    .venv/bin/python benchmarks/mfu_ceiling.py --measure --output ceiling.json
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from common import (
    description,
    environment,
    peak_copy_bandwidth,
    peak_matmul_flops,
    print_table,
    write_json,
)
from roofline import (
    H100_SXM,
    SCHEMES,
    Hardware,
    step_ceiling,
    training_kernels,
)

from detbench.models import get_model_spec
from detbench.models.darknet import LayerSpec
from detbench.models.flops import forward_conv_flops
from detbench.training.device import select_device, select_precision

KINDS = ("conv", "batch norm", "activation", "data movement", "optimizer")


def hardware_from_args(args: argparse.Namespace) -> tuple[Hardware, int]:
    """The hardware to bound against, and the bytes of one activation element."""
    if args.measure:
        device = select_device("auto")
        precision = select_precision(device, amp=True)
        peak, peak_how = peak_matmul_flops(device, precision)
        bandwidth, bandwidth_how = peak_copy_bandwidth(device)
        name = f"{environment(device)['device_name']}, measured: {peak_how}, {bandwidth_how}"
        return Hardware(name, peak, bandwidth), (precision.dtype or torch.float32).itemsize
    if args.peak_tflops is None and args.bandwidth_tbs is None:
        return H100_SXM, 2
    peak = args.peak_tflops * 1e12 if args.peak_tflops else H100_SXM.peak_flops
    bandwidth = args.bandwidth_tbs * 1e12 if args.bandwidth_tbs else H100_SXM.bandwidth
    return Hardware(f"given: {peak / 1e12:.4g} TFLOP/s, {bandwidth / 1e12:.4g} TB/s", peak,
                    bandwidth), 2


def biggest_kernels(layers: Sequence[LayerSpec], batch: int, img_size: int,
                    hardware: Hardware, element: int, count: int) -> list[list[object]]:
    """The eager step's kernel groups that take longest at the roofline, summed over layers."""
    totals: dict[tuple[str, str], float] = {}
    for kernel in training_kernels(layers, img_size, batch, "eager", element):
        key = (kernel.kind, kernel.what)
        totals[key] = totals.get(key, 0.0) + kernel.seconds(hardware)
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [[kind, what, 1000 * seconds] for (kind, what), seconds in ranked]


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--models", nargs="+", default=["yolov3", "yolov3-tiny"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s in the training dtype")
    parser.add_argument("--bandwidth-tbs", type=float, help="device memory bandwidth, TB/s")
    parser.add_argument("--measure", action="store_true",
                        help="measure peak and bandwidth on the current device instead")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()

    hardware, element = hardware_from_args(args)
    layers_of = {model: get_model_spec(model).layers(3) for model in args.models}  # BCCD's 3
    rows, results = [], []
    for model, layers in layers_of.items():
        for batch in args.batches:
            for scheme in SCHEMES:
                ceiling = step_ceiling(layers, args.img_size, batch, hardware, scheme, element)
                by_kind = [1000 * ceiling.seconds_by_kind.get(kind, 0.0) for kind in KINDS]
                rows.append([model, batch, scheme, *by_kind, 1000 * ceiling.seconds,
                             100 * ceiling.mfu])
                results.append({
                    "model": model, "batch": batch, "scheme": scheme,
                    "model_flops": ceiling.model_flops,
                    "floor_ms_by_kind": {k: 1000 * v for k, v in ceiling.seconds_by_kind.items()},
                    "floor_ms": 1000 * ceiling.seconds, "mfu_ceiling": ceiling.mfu,
                })
    print(f"MFU ceiling of one training step at {args.img_size} px, 3 classes, "
          f"{element}-byte activations; hardware: {hardware.name} (ridge point "
          f"{hardware.ridge_point:.0f} FLOPs/byte)")
    for model, layers in layers_of.items():
        gflops = forward_conv_flops(layers, args.img_size) / 1e9
        print(f"  {model}: {gflops:.2f} forward GFLOPs per image; model FLOPs = 3 x forward")
    print("floor in ms per step, by kernel kind (each kernel at max(FLOPs/peak, bytes/bandwidth))")
    print_table(["model", "batch", "kernels", *KINDS, "floor ms", "MFU ceiling %"], rows)
    largest = args.batches[-1]
    for model, layers in layers_of.items():
        print(f"\nlargest eager kernel groups, {model} batch {largest} (ms per step at the floor)")
        print_table(["kind", "kernel", "ms"],
                    biggest_kernels(layers, largest, args.img_size, hardware, element, 8))
    write_json(args.output, {
        "hardware": {"name": hardware.name, "peak_flops": hardware.peak_flops,
                     "bandwidth_bytes_per_s": hardware.bandwidth},
        "img_size": args.img_size,
        "element_bytes": element,
        "results": results,
    })


if __name__ == "__main__":
    main()
