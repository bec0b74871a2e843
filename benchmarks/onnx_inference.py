"""ONNX Runtime against PyTorch eager at its best on this CPU, side by side in one run: batch-1
forward latency, end-to-end latency (decode, letterbox, forward, NMS at the serving confidence)
and batch-8 throughput, for yolov3-tiny and yolov3 at 416 px (3 classes, as BCCD).

PyTorch runs as detbench's evaluation and web app run it: channels-last, ``inference_mode``,
``torch.set_num_threads(threads)``. ONNX Runtime runs the dynamo export (detbench export) under
several session settings, to show what tuning buys: the default SessionOptions, and graph
optimisation levels basic / extended / all (all adds the NCHWc layout transforms), with the
same intra-op thread count as PyTorch, and with the workers' spin-waiting off. Every timed
iteration runs each configuration once, in rotating order, so a busy machine slows all alike.

The model's forward FLOPs over its latency, against a large fp32 matmul in the same run, say
how close each backend is to what the cores can do: a goal below that bound is out of reach.

    .venv/bin/python benchmarks/onnx_inference.py
    .venv/bin/python benchmarks/onnx_inference.py --models yolov3-tiny --iterations 50
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from common import (
    bccd_directory,
    description,
    environment,
    peak_matmul_flops,
    print_table,
    write_json,
)

from detbench.deploy.export import export_onnx
from detbench.deploy.nms import non_max_suppression
from detbench.deploy.preprocess import decode, letterboxed
from detbench.deploy.torch_backend import TorchModel
from detbench.evaluation.inference import save_trained_model
from detbench.models import build_model
from detbench.models.flops import forward_conv_flops
from detbench.training.device import select_precision
from detbench.web.settings import DEFAULT_CONFIDENCE, InferenceSettings

CLASSES = ["RBC", "WBC", "Platelets"]
GOAL = 0.4  # ONNX Runtime's batch-1 forward latency over eager's, yolov3-tiny


def onnx_sessions(path: Path, threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    def session(level: Any | None, spinning: bool = True, set_threads: bool = True) -> Any:
        options = ort.SessionOptions()
        if level is not None:
            options.graph_optimization_level = level
        if set_threads:
            options.intra_op_num_threads = threads
        if not spinning:
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    levels = ort.GraphOptimizationLevel
    return {
        "ort default options": session(None, set_threads=False),
        "ort basic": session(levels.ORT_ENABLE_BASIC),
        "ort extended": session(levels.ORT_ENABLE_EXTENDED),
        "ort all (NCHWc)": session(levels.ORT_ENABLE_ALL),
        "ort all, no spinning": session(levels.ORT_ENABLE_ALL, spinning=False),
    }


def interleaved(calls: dict[str, Callable[[], object]], warmup: int, iterations: int):
    """Milliseconds per call of each entry, the entries run in rotating order per iteration."""
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iterations):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.perf_counter()
            calls[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def test_images(img_size: int) -> list[bytes]:
    """Encoded images for the end-to-end latency: BCCD's test split, or generated smears."""
    folder = bccd_directory()
    if folder is not None:
        files = sorted((folder / "JPEGImages").glob("*.jpg"))[:32]
        if files:
            return [f.read_bytes() for f in files]
    import cv2

    from detbench.data.synthetic import render_synthetic_image

    rng = np.random.default_rng(0)
    return [
        cv2.imencode(".jpg", render_synthetic_image(rng, 640, 480)[0])[1].tobytes()
        for _ in range(16)
    ]


def run_model(name: str, args: argparse.Namespace, work: Path, images: list[bytes]) -> dict:
    torch.manual_seed(0)
    model = build_model(name, num_classes=len(CLASSES))
    model.initialize_biases()  # a trained model's objectness priors: NMS sees a few boxes
    weights = work / f"{name}.pt"
    save_trained_model(
        weights, model, {"model": name, "class_names": CLASSES, "img_size": args.img_size}
    )
    onnx_path = work / f"{name}.onnx"
    exported = export_onnx(weights, onnx_path, dynamic_batch=True)
    print(exported.summary())
    eager = TorchModel(weights, device="cpu")
    sessions = onnx_sessions(onnx_path, args.threads)
    canvases = [letterboxed(decode(data, "image"), args.img_size)[0] for data in images]
    one = canvases[0][None].astype(np.float32) / np.float32(255)
    eight = np.stack([canvases[i % len(canvases)] for i in range(8)]).astype(np.float32) / 255

    def eager_call(batch: np.ndarray) -> Callable[[], object]:
        return lambda: eager.run(batch)

    def ort_call(session: Any, batch: np.ndarray) -> Callable[[], object]:
        return lambda: session.run(None, {"images": batch})

    forward = interleaved(
        {"torch eager": eager_call(one)}
        | {label: ort_call(s, one) for label, s in sessions.items()},
        args.warmup,
        args.iterations,
    )
    best = min(sessions, key=lambda label: statistics.median(forward[label]))
    settings = InferenceSettings()
    nms = {
        "conf_threshold": DEFAULT_CONFIDENCE,
        "iou_threshold": settings.nms_iou,
        "max_detections": settings.max_detections,
    }
    counter = {"torch eager": 0, best: 0}

    def end_to_end(label: str) -> Callable[[], object]:
        def call() -> None:
            data = images[counter[label] % len(images)]
            counter[label] += 1
            canvas, _ = letterboxed(decode(data, "image"), args.img_size)
            if label == "torch eager":
                decoded, _ = eager.run(canvas[None])
                eager.suppress(decoded, **nms)
            else:
                batch = canvas[None].astype(np.float32) / np.float32(255)
                non_max_suppression(sessions[label].run(None, {"images": batch})[0], **nms)

        return call

    e2e = interleaved({k: end_to_end(k) for k in counter}, 2, args.iterations)
    batched = interleaved(
        {"torch eager": eager_call(eight), best: ort_call(sessions[best], eight)},
        1,
        max(3, args.iterations // 6),
    )
    flops = forward_conv_flops(model.layer_specs, args.img_size)
    return {
        "model": name,
        "flops": flops,
        "onnx_bytes": exported.bytes,
        "best": best,
        "forward_ms": forward,
        "end_to_end_ms": e2e,
        "batch8_ms": batched,
    }


def report(result: dict, peak: float) -> None:
    name, flops, forward = result["model"], result["flops"], result["forward_ms"]
    eager_ms = statistics.median(forward["torch eager"])
    rows = []
    for label, values in forward.items():
        median = statistics.median(values)
        rows.append(
            [
                label,
                median,
                p(values, 90),
                median / eager_ms,
                flops / (median / 1000) / 1e9,
                flops / (median / 1000) / peak,
            ]
        )
    print(f"\n{name}, batch-1 forward, {len(forward['torch eager'])} timed iterations:")
    print_table(["backend", "p50 ms", "p90 ms", "/ eager", "GFLOP/s", "of peak"], rows)
    best, e2e, b8 = result["best"], result["end_to_end_ms"], result["batch8_ms"]
    e2e_ratio = statistics.median(e2e[best]) / statistics.median(e2e["torch eager"])
    throughput = {k: 8000 / statistics.median(v) for k, v in b8.items()}
    print(
        f"{name} end to end (decode, letterbox, forward, NMS at confidence "
        f"{DEFAULT_CONFIDENCE}): eager p50 {statistics.median(e2e['torch eager']):.1f} ms, "
        f"{best} {statistics.median(e2e[best]):.1f} ms, ratio {e2e_ratio:.2f}; batch-8 "
        f"throughput eager {throughput['torch eager']:.1f} images/s, {best} "
        f"{throughput[best]:.1f} images/s, ratio {throughput[best] / throughput['torch eager']:.2f}"
    )
    if name == "yolov3-tiny":
        ratio = statistics.median(forward[best]) / eager_ms
        bound = (flops / (eager_ms / 1000)) / peak
        print(
            f"goal: ONNX Runtime <= {GOAL}x eager's batch-1 forward latency for yolov3-tiny: "
            f"{ratio:.2f}x ({best}) {'reached' if ratio <= GOAL else 'not reached'}; eager runs "
            f"at {bound:.0%} of the matmul peak, so {GOAL}x would need "
            f"{bound / GOAL:.0%} of it"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--models", nargs="+", default=["yolov3-tiny", "yolov3"])
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=30)
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    peak, peak_how = peak_matmul_flops(device, select_precision(device, amp=False))
    print(f"{environment(device)}; peak {peak / 1e9:.1f} GFLOP/s ({peak_how})")
    images = test_images(args.img_size)
    results = []
    with tempfile.TemporaryDirectory(prefix="onnx-inference-") as scratch:
        for name in args.models:
            results.append(run_model(name, args, Path(scratch), images))
            report(results[-1], peak)
    write_json(args.output, {"environment": environment(device), "peak_flops": peak,
                             "results": results})  # fmt: skip


if __name__ == "__main__":
    main()
