"""One backend's inference measured in a process of its own: ``python -m detbench.deploy.measure
REQUEST.json RESULT.json``. Its own process, so the peak resident memory is what serving with
that backend costs (an ONNX Runtime process never imports torch) and no backend warms another's
caches.

Latency at batch 1 cycles the split's images after a warm-up: end to end (decode the encoded
file from memory, letterbox, forward, NMS, boxes back to the image) and its forward part alone.
Each image's detections from its first pass are returned for scoring. Throughput: forward only,
batches of letterboxed images, images per second.
"""

from __future__ import annotations

import dataclasses
import json
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from detbench import atomic
from detbench.deploy.preprocess import decode, letterboxed
from detbench.errors import DetbenchError
from detbench.evaluation.detections import to_original_pixels

TORCH_BACKENDS = ("torch", "torch-amp")


@dataclasses.dataclass(frozen=True)
class Request:
    backend: str
    model: str  # weights.pt for the torch backends, model.onnx for ONNX Runtime's
    images: list[str]  # the split's image files, in order
    image_ids: list[str]
    warmup: int
    timed: int
    throughput_batches: list[int]
    throughput_images: int
    conf_threshold: float
    iou_threshold: float
    max_detections: int
    threads: int
    device: str = "auto"


def load_backend(request: Request) -> Any:
    if request.backend in TORCH_BACKENDS:
        import torch

        from detbench.deploy.torch_backend import TorchModel

        torch.set_num_threads(request.threads)
        return TorchModel(request.model, request.backend, device=request.device)
    from detbench.deploy.onnx_backend import OnnxRuntimeModel

    return OnnxRuntimeModel(request.model, request.backend, threads=request.threads)


def measure(request: Request) -> dict[str, Any]:
    started = time.perf_counter()
    backend = load_backend(request)
    load_seconds = time.perf_counter() - started
    files = [Path(p).read_bytes() for p in request.images]
    nms = {
        "conf_threshold": request.conf_threshold,
        "iou_threshold": request.iou_threshold,
        "max_detections": request.max_detections,
    }
    detections: dict[str, Any] = {}
    end_to_end, forward = [], []
    # Enough passes for every image's detections, and warm-up + timed images in all.
    total = max(request.warmup + request.timed, len(files))
    for i in range(total):
        index = i % len(files)
        t0 = time.perf_counter()
        image = decode(files[index], request.images[index])
        canvas, placement = letterboxed(image, backend.img_size)
        t1 = time.perf_counter()
        decoded, _ = backend.run(canvas[None])
        t2 = time.perf_counter()
        found = backend.suppress(decoded, **nms)[0]
        height, width = image.shape[:2]
        found = to_original_pixels(found, placement, width, height)
        t3 = time.perf_counter()
        if request.warmup <= i < request.warmup + request.timed:
            end_to_end.append((t3 - t0) * 1000)
            forward.append((t2 - t1) * 1000)
        image_id = request.image_ids[index]
        if image_id not in detections:
            detections[image_id] = {
                "boxes": found.boxes.tolist(),
                "scores": found.scores.tolist(),
                "classes": found.classes.tolist(),
            }
    canvases = [letterboxed(decode(f, "image"), backend.img_size)[0] for f in files]
    throughput = {
        str(batch): images_per_second(backend, canvases, batch, request.throughput_images)
        for batch in request.throughput_batches
    }
    return {
        "backend": request.backend,
        "device": backend.device,
        "img_size": backend.img_size,
        "threads": request.threads,
        "load_seconds": load_seconds,
        "latency_ms": {"end_to_end": end_to_end, "forward": forward},
        "throughput_images_per_s": throughput,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "peak_gpu_bytes": backend.peak_gpu_bytes(),
        "model_bytes": Path(request.model).stat().st_size,
        "detections": detections,
    }


def images_per_second(backend: Any, canvases: list[np.ndarray], batch: int, images: int) -> float:
    """Forward passes of ``batch`` letterboxed images (the split cycled): one untimed, then
    at least two and at least ``images`` images timed."""
    stacked = np.stack([canvases[i % len(canvases)] for i in range(batch)])
    backend.run(stacked)
    passes = max(2, -(-images // batch))
    start = time.perf_counter()
    for _ in range(passes):
        backend.run(stacked)
    return passes * batch / (time.perf_counter() - start)


def main(argv: list[str]) -> int:
    request_path, result_path = argv
    request = Request(**json.loads(Path(request_path).read_text(encoding="utf-8")))
    try:
        atomic.write_json(result_path, measure(request))
    except DetbenchError as error:
        print(error, file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
