"""How much the resource accounting and the NVML sampler add to a train job (issue 4;
target: <= 2%).

The same short training runs with detbench's monitor (rusage accounting, the 0.5 s sampler
thread reading /proc and, on a GPU, NVML; the provenance block with its git calls) and without
it (a stand-in that does nothing), interleaved A B B A so that drift in a shared machine's speed
falls on both arms alike. Reported: the median of the per-pair time ratios (with / without) and,
as figures that do not depend on the noise, the monitor's fixed cost per job (start, one epoch
checkpoint's state, finish, provenance) and the sampler's own cost per tick divided by its
interval (the share of one core it takes); together they give an estimate of the overhead.

    .venv/bin/python benchmarks/accounting_overhead.py            # about 3 minutes on 2 cores
    .venv/bin/python benchmarks/accounting_overhead.py --pairs 8 --epochs 4 --output out.json

torch.profiler is not involved: it runs only in the profile jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402
from common import description  # noqa: E402

import detbench.training.train as train_module  # noqa: E402
from detbench.data.synthetic import generate_synthetic_voc  # noqa: E402
from detbench.data.voc import convert_voc_to_yolo  # noqa: E402
from detbench.study.config import TrainHyperparameters, TrainSettings  # noqa: E402
from detbench.telemetry import monitor as monitor_module  # noqa: E402
from detbench.telemetry.resources import ResourceMeter  # noqa: E402
from detbench.training.train import TrainOutputs, train  # noqa: E402


class NullMonitor:
    """What train() calls on its monitor, doing nothing: the job without accounting."""

    gpu_info: dict[str, Any] = {}  # noqa: RUF012

    @classmethod
    def start(cls, device: torch.device, **_: Any) -> NullMonitor:
        return cls()

    def resume(self, state: dict[str, Any] | None) -> None:
        pass

    def checkpoint_state(self) -> None:
        return None

    def finish(self, loader: Any, samples_path: Path) -> dict[str, Any]:
        return {}


def make_dataset(root: Path, images: int) -> Path:
    generate_synthetic_voc(
        root / "voc",
        num_images={"train": images, "val": 2, "test": 2},
        image_size=(320, 240),
        seed=0,
    )
    convert_voc_to_yolo(
        root / "voc",
        root / "yolo",
        class_names=["RBC", "WBC", "Platelets"],
        splits=["train", "val", "test"],
        dataset_name="overhead",
    )
    return root / "yolo" / "manifest.json"


def run_once(
    settings: TrainSettings, manifest: Path, folder: Path, *, monitored: bool, threads: int
) -> float:
    """Wall seconds of one train() call, with or without the monitor."""
    saved = train_module.TrainMonitor, train_module.cell_provenance
    if not monitored:
        train_module.TrainMonitor = NullMonitor  # type: ignore[assignment,misc]
        train_module.cell_provenance = lambda *args, **kwargs: {}  # type: ignore[assignment]
    outputs = TrainOutputs.in_folder(folder)
    try:
        start = time.perf_counter()
        train(settings, manifest, outputs, threads=threads)
        return time.perf_counter() - start
    finally:
        train_module.TrainMonitor, train_module.cell_provenance = saved


def sampler_tick_cost_s(ticks: int = 2000) -> float:
    """Seconds one sampler tick takes here (the /proc reads of the resource meter)."""
    meter = ResourceMeter("call")
    start = time.perf_counter()
    for _ in range(ticks):
        meter.sample()
    return (time.perf_counter() - start) / ticks


def fixed_cost_s(repeats: int = 5) -> float:
    """Seconds of the monitor's per-job work outside the sampler (median of ``repeats``)."""
    device = torch.device("cpu")
    settings = TrainSettings("yolov3-tiny", batch=8, epochs=1)
    costs = []
    with tempfile.TemporaryDirectory(prefix="detbench-overhead-") as tmp:
        for _ in range(repeats):
            start = time.perf_counter()
            monitor = monitor_module.TrainMonitor.start(device, origin="call")
            monitor.checkpoint_state()
            monitor.finish(None, Path(tmp) / "gpu_samples.csv")
            train_module.cell_provenance(settings, device, {}, None, None, Path(tmp) / "r.json")
            costs.append(time.perf_counter() - start)
    return statistics.median(costs)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--pairs", type=int, default=5, help="A/B pairs (each run twice, ABBA)")
    parser.add_argument("--model", default="yolov3-tiny")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--output", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()

    settings = TrainSettings(
        args.model,
        batch=args.batch,
        epochs=args.epochs,
        img_size=args.img_size,
        hyp=TrainHyperparameters(workers=args.workers),
    )
    with tempfile.TemporaryDirectory(prefix="detbench-overhead-") as tmp:
        root = Path(tmp)
        manifest = make_dataset(root / "data", args.images)
        # One unmeasured run of each arm: caches, allocator, the monitor's first-call origin.
        for monitored in (True, False):
            run_once(settings, manifest, root / "warm", monitored=monitored, threads=args.threads)
        times: dict[bool, list[float]] = {True: [], False: []}
        ratios = []
        for pair in range(args.pairs):
            order = (True, False) if pair % 2 == 0 else (False, True)
            for repeat in range(2):  # A B B A
                arms = order if repeat == 0 else order[::-1]
                seconds = {}
                for monitored in arms:
                    folder = root / f"run-{pair}-{repeat}-{int(monitored)}"
                    seconds[monitored] = run_once(
                        settings, manifest, folder, monitored=monitored, threads=args.threads
                    )
                    times[monitored].append(seconds[monitored])
                ratios.append(seconds[True] / seconds[False])
                print(
                    f"pair {pair + 1}.{repeat + 1}: with {seconds[True]:.2f} s, "
                    f"without {seconds[False]:.2f} s, ratio {ratios[-1]:.4f}",
                    flush=True,
                )
    tick = sampler_tick_cost_s()
    fixed = fixed_cost_s()
    interval = monitor_module.SAMPLE_INTERVAL_S
    without = statistics.median(times[False])
    figures = {
        "setup": {
            "model": args.model,
            "images": args.images,
            "img_size": args.img_size,
            "batch": args.batch,
            "epochs": args.epochs,
            "workers": args.workers,
            "threads": args.threads,
            "cuda": torch.cuda.is_available(),
        },
        "median_seconds_with": statistics.median(times[True]),
        "median_seconds_without": statistics.median(times[False]),
        "median_ratio": statistics.median(ratios),
        "ratios": ratios,
        "sampler_tick_us": tick * 1e6,
        "sampler_share_of_a_core_percent": tick / interval * 100,
        "fixed_cost_s": fixed,
        "estimated_overhead_percent": (fixed + without * tick / interval) / without * 100,
    }
    print(
        f"median time with the monitor {figures['median_seconds_with']:.2f} s, without "
        f"{figures['median_seconds_without']:.2f} s; median ratio {figures['median_ratio']:.4f} "
        f"({(figures['median_ratio'] - 1) * 100:+.2f}%, target <= +2%)"
    )
    print(
        f"sampler tick {figures['sampler_tick_us']:.0f} µs every {interval} s: "
        f"{figures['sampler_share_of_a_core_percent']:.3f}% of one core"
    )
    print(
        f"fixed cost per job {fixed * 1000:.1f} ms: estimated overhead "
        f"{figures['estimated_overhead_percent']:.3f}% of a {without:.1f} s job"
    )
    if args.output:
        args.output.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
