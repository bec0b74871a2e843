"""A cell's inference benchmark (inference.json) as summary.csv columns, and what each holds.

One group of columns per backend measured, named ``infer_<backend>_...`` (backend with
underscores: torch, torch_amp, onnxruntime, onnxruntime_cuda, onnxruntime_tensorrt); a cell
without an inference.json (copied in from elsewhere) has none.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError
from detbench.study.cells import INFERENCE

BACKEND_TITLES = {
    "torch": "PyTorch eager fp32",
    "torch-amp": "PyTorch with AMP (autocast)",
    "onnxruntime": "ONNX Runtime, CPU execution provider",
    "onnxruntime-cuda": "ONNX Runtime, CUDA execution provider",
    "onnxruntime-tensorrt": "ONNX Runtime, TensorRT execution provider",
}
PERCENTILES = ("p50", "p90", "p99")
COMMON = {
    "infer_timed_images": "images timed at batch 1 per backend (eval_split cycled, after warm-up)",
    "infer_threads": "CPU threads each backend ran with (intra-op threads)",
}


def prefix(backend: str) -> str:
    return f"infer_{backend.replace('-', '_')}"


def inference_columns(cell: Path) -> dict[str, Any]:
    """The inference columns of one cell folder (none without an inference.json)."""
    path = cell / INFERENCE
    if not path.exists():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        row: dict[str, Any] = {
            "infer_timed_images": record["timed_images"],
            "infer_threads": record["threads"],
        }
        for backend, entry in record["backends"].items():
            row.update(_backend_columns(prefix(backend), entry))
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DetbenchError(f"{path}: not a readable inference benchmark ({exc})") from None
    return row


def _backend_columns(name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    latency = entry["latency_ms"]
    row: dict[str, Any] = {f"{name}_device": entry["device"]}
    for kind, short in (("end_to_end", "e2e"), ("forward", "forward")):
        for p in PERCENTILES:
            row[f"{name}_{short}_{p}_ms"] = latency[kind][p]
    for batch, value in entry["throughput_images_per_s"].items():
        row[f"{name}_images_per_s_b{batch}"] = value
    row[f"{name}_peak_rss_mib"] = entry["peak_rss_bytes"] / 2**20
    gpu = entry.get("peak_gpu_bytes")
    row[f"{name}_peak_gpu_mib"] = gpu / 2**20 if gpu is not None else None
    row[f"{name}_model_mb"] = entry["model_bytes"] / 1e6
    row[f"{name}_map50"] = entry["map50"]
    row[f"{name}_map50_diff"] = entry["map50_difference"]
    return row


def describe_columns(rows: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Descriptions of the inference columns present in ``rows``: unit, backend, batch, device."""
    columns: dict[str, str] = {}
    rows = list(rows)
    for backend, title in BACKEND_TITLES.items():
        name = prefix(backend)
        present = [key for row in rows for key in row if key.startswith(f"{name}_")]
        if not present:
            continue
        devices = sorted({str(row[f"{name}_device"]) for row in rows if f"{name}_device" in row})
        where = f"{title} on {'/'.join(devices)}"
        columns.update(_descriptions(name, where, present))
    if any("infer_timed_images" in row for row in rows):
        columns.update(COMMON)
    return columns


def _descriptions(name: str, where: str, present: list[str]) -> dict[str, str]:
    timed = "over infer_timed_images images of eval_split after a warm-up"
    out = {f"{name}_device": f"device the {where.split(' on ')[0]} backend ran on"}
    for p in PERCENTILES:
        out[f"{name}_e2e_{p}_ms"] = (
            f"{where}: end-to-end latency at batch 1 (decode, letterbox, forward, NMS), "
            f"{p[1:]}th percentile {timed} (ms)"
        )
        out[f"{name}_forward_{p}_ms"] = (
            f"{where}: forward latency at batch 1 (network only), {p[1:]}th percentile {timed} "
            "(ms)"
        )
    for key in dict.fromkeys(present):
        if "_images_per_s_b" in key:
            batch = key.rsplit("_b", 1)[1]
            out[key] = f"{where}: forward throughput at batch {batch} (images/s)"
    out[f"{name}_peak_rss_mib"] = (
        f"{where}: peak resident memory of the process serving with it (MiB, host)"
    )
    out[f"{name}_peak_gpu_mib"] = f"{where}: peak GPU memory allocated (MiB; NA on a CPU)"
    out[f"{name}_model_mb"] = f"{where}: size of the model file it loads (MB, 10^6 bytes)"
    out[f"{name}_map50"] = (
        f"{where}: mAP@0.5 on eval_split of its detections (the evaluation's NMS and scoring)"
    )
    out[f"{name}_map50_diff"] = f"{where}: its mAP@0.5 minus PyTorch eager fp32's on eval_split"
    return {key: value for key, value in out.items() if key in present}
