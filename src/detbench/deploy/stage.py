"""The ``benchmark_inference`` stage: one trained cell served by every backend available, each
measured in a process of its own (detbench.deploy.measure), their detections on the evaluation
split scored as the evaluation scores them, into the cell's ``inference.json``.

Needs no torch itself: the PyTorch backends run in their child processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from detbench import atomic
from detbench.data.manifest import DatasetManifest
from detbench.errors import DetbenchError
from detbench.evaluation.metrics import ImageDetections, ImageGroundTruth, evaluate_detections
from detbench.study.config import EvalSettings

log = logging.getLogger("detbench.deploy.stage")

INFERENCE_FORMAT = "detbench-inference-v1"
# The reference every backend's mAP@0.5 is compared with.
REFERENCE_BACKEND = "torch"
PERCENTILES = (50, 90, 99)


@dataclasses.dataclass(frozen=True)
class DeploySettings:
    """The ``deploy:`` section of the config (see the schema for each field)."""

    backends: tuple[str, ...] = (
        "torch",
        "torch-amp",
        "onnxruntime",
        "onnxruntime-cuda",
        "onnxruntime-tensorrt",
    )
    warmup_images: int = 10
    timed_images: int = 200
    throughput_batches: tuple[int, ...] = (1, 8, 32)
    throughput_images: int = 64

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> DeploySettings:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DetbenchError(f"config: key deploy.{unknown[0]}: unknown deploy setting")
        values = dict(values)
        for key in ("backends", "throughput_batches"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def runnable_backends(requested: Sequence[str], device: str) -> tuple[list[str], dict[str, str]]:
    """(backends to run, {backend left out: why}) on this machine. ``device`` cpu leaves out
    the GPU backends even where a GPU is present."""
    from detbench.deploy.onnx_backend import PROVIDERS, available_backends

    onnx = available_backends()
    gpu = device != "cpu" and _torch_sees_gpu()
    run, skipped = [], {}
    for name in requested:
        if name == "torch" or (name == "torch-amp" and gpu):
            run.append(name)
        elif name == "torch-amp":
            skipped[name] = "no CUDA GPU"
        elif name in onnx and (name == "onnxruntime" or gpu):
            run.append(name)
        elif name in PROVIDERS and not onnx:
            skipped[name] = "onnxruntime not installed"
        else:
            skipped[name] = "provider not available here" if gpu else "no CUDA GPU"
    return run, skipped


def _torch_sees_gpu() -> bool:
    """Whether PyTorch sees a CUDA GPU, asked in a child process (this one stays torch-free)."""
    code = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    if not Path("/dev/nvidia0").exists() and not os.environ.get("CUDA_VISIBLE_DEVICES"):
        return False
    return subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def benchmark_cell(
    weights: str | Path,
    onnx_model: str | Path,
    manifest_path: str | Path,
    split: str,
    settings: DeploySettings,
    nms: EvalSettings,
    output: str | Path,
    *,
    cell: dict[str, Any] | None = None,
    threads: int = 1,
    device: str = "auto",
) -> dict[str, Any]:
    """Measure every runnable backend on ``split`` and write ``output`` (inference.json)."""
    manifest = DatasetManifest.load(manifest_path)
    records = manifest.records(split)
    if not records:
        raise DetbenchError(f"{manifest.path}: split {split!r} has no images to time")
    backends, skipped = runnable_backends(settings.backends, device)
    if REFERENCE_BACKEND not in backends:
        backends.insert(0, REFERENCE_BACKEND)  # every agreement is measured against it
    ground_truth = {
        r.id: ImageGroundTruth(boxes=r.boxes_xyxy(), classes=r.classes) for r in records
    }
    results: dict[str, Any] = {}
    for backend in backends:
        model = weights if backend.startswith("torch") else onnx_model
        request = {
            "backend": backend,
            "model": str(model),
            "images": [str(r.path) for r in records],
            "image_ids": [r.id for r in records],
            "warmup": settings.warmup_images,
            "timed": settings.timed_images,
            "throughput_batches": list(settings.throughput_batches),
            "throughput_images": settings.throughput_images,
            "conf_threshold": nms.conf_threshold,
            "iou_threshold": nms.nms_iou,
            "max_detections": nms.max_detections,
            "threads": threads,
            "device": device,
        }
        measured = run_measurement(request)
        found = measured.pop("detections")
        metrics = evaluate_detections(
            ground_truth,
            {key: _image_detections(value) for key, value in found.items()},
            manifest.class_names,
            max_detections=nms.max_detections,
        )
        results[backend] = summarise(measured) | {"map50": metrics.map50}
        log.info("%s: %s", backend, describe(results[backend]))
    reference = results[REFERENCE_BACKEND]["map50"]
    for entry in results.values():
        entry["map50_difference"] = entry["map50"] - reference
    record = {
        "format": INFERENCE_FORMAT,
        "cell": cell or {},
        "dataset": manifest.dataset,
        "split": split,
        "num_images": len(records),
        "img_size": _img_size(results),
        "warmup_images": settings.warmup_images,
        "timed_images": settings.timed_images,
        "threads": threads,
        "nms": {
            "conf_threshold": nms.conf_threshold,
            "iou_threshold": nms.nms_iou,
            "max_detections_per_image": nms.max_detections,
        },
        "backends": results,
        "skipped_backends": skipped,
    }
    atomic.write_json(output, record)
    return record


def run_measurement(request: dict[str, Any]) -> dict[str, Any]:
    """detbench.deploy.measure in a child process; its one-line error becomes ours."""
    with tempfile.TemporaryDirectory(prefix="detbench-measure-") as scratch:
        request_path, result_path = Path(scratch, "request.json"), Path(scratch, "result.json")
        request_path.write_text(json.dumps(request), encoding="utf-8")
        command = [sys.executable, "-m", "detbench.deploy.measure", str(request_path)]
        done = subprocess.run(
            [*command, str(result_path)], capture_output=True, text=True, check=False,
            env=_child_environment(),
        )
        if done.returncode != 0:
            lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
            raise DetbenchError(f"backend {request['backend']}: {lines[-1]}")
        return json.loads(result_path.read_text(encoding="utf-8"))


def _child_environment() -> dict[str, str]:
    """This process's environment, with detbench's source importable in the child."""
    source = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    return env


def summarise(measured: dict[str, Any]) -> dict[str, Any]:
    """Latency lists (ms) as count, mean and percentiles; the rest as measured."""
    latency = {
        kind: _percentiles(values) for kind, values in measured["latency_ms"].items()
    }
    return {k: v for k, v in measured.items() if k != "latency_ms"} | {"latency_ms": latency}


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, dtype=np.float64)
    summary = {"n": len(array), "mean": float(array.mean())}
    for q in PERCENTILES:
        summary[f"p{q}"] = float(np.percentile(array, q))
    return summary


def _image_detections(value: dict[str, Any]) -> ImageDetections:
    return ImageDetections(
        boxes=np.asarray(value["boxes"], dtype=np.float64).reshape(-1, 4),
        scores=np.asarray(value["scores"], dtype=np.float64),
        classes=np.asarray(value["classes"], dtype=np.int64),
    )


def _img_size(results: dict[str, Any]) -> int | None:
    sizes = {entry.get("img_size") for entry in results.values()}
    return sizes.pop() if len(sizes) == 1 else None


def describe(entry: dict[str, Any]) -> str:
    latency = entry["latency_ms"]
    throughput = ", ".join(
        f"b{b} {v:.1f}/s" for b, v in entry["throughput_images_per_s"].items()
    )
    return (
        f"batch-1 latency p50 end to end {latency['end_to_end']['p50']:.1f} ms, forward "
        f"{latency['forward']['p50']:.1f} ms (n={latency['forward']['n']}); {throughput}; "
        f"peak RSS {entry['peak_rss_bytes'] / 2**20:.0f} MiB; mAP@0.5 {entry['map50']:.4f}"
    )
