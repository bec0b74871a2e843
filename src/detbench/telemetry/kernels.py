"""The profile stage: torch.profiler over real training steps of one {model, batch}.

The 2020 study ran nvprof and reported the average time of the GPU activity with the largest
total time. nvprof does not support current GPUs; torch.profiler (Kineto, CUPTI underneath)
records the same activities. After ``warmup_steps`` unrecorded training steps (allocator,
cuDNN algorithm choice and clocks settle), ``steps`` steps are recorded and written as:

- ``kernels.csv``: one row per activity (name, calls, total_us, avg_us, share_of_device_time),
  largest total first. On CUDA the activities are the GPU's (kernels, memcpy, memset) timed on
  the device; on a CPU they are the CPU operators timed by self CPU time (time in the operator
  itself, not in the operators it calls, so the rows add up to the whole);
- ``summary.json``: the biggest activity, its average time (the study's figure, in µs), what
  kind of activity and time basis it is, the settings and the provenance;
- ``trace.json.gz``: the recorded steps for chrome://tracing or https://ui.perfetto.dev.

A step is train.py's: forward under autocast, loss, backward through the gradient scaler,
optimizer step, EMA update, with a batch from the training DataLoader. The weights are the
seeded random initialisation whatever the cell starts from: values do not change the kernels.
"""

from __future__ import annotations

import csv
import dataclasses
import gzip
import io
import logging
import math
import platform as platform_module
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch.autograd import DeviceType
from torch.utils.data import DataLoader

from detbench import atomic
from detbench.data.dataset import Batch, DatasetManifest
from detbench.data.loader import make_train_loader
from detbench.errors import DetbenchError
from detbench.study.config import ProfileSettings, TrainSettings
from detbench.telemetry.nvml import GpuTelemetry, cuda_device_uuid, load_nvml
from detbench.telemetry.provenance import run_provenance
from detbench.telemetry.resources import shutdown_loader_workers
from detbench.training.device import select_device, select_precision, synchronize
from detbench.training.engine import (
    TrainingState,
    build_training_model,
    seed_everything,
    train_step,
)
from detbench.training.loss import YoloLoss

log = logging.getLogger("detbench.profile")

KERNEL_COLUMNS = ("name", "calls", "total_us", "avg_us", "share_of_device_time")
CUDA_ACTIVITY = "cuda_kernel"
CPU_ACTIVITY = "cpu_operator"
TIME_BASIS = {
    CUDA_ACTIVITY: (
        "GPU activities (kernels, memcpy, memset) timed on the device (CUPTI), as nvprof's "
        "'GPU activities'; share_of_device_time = total_us / all GPU activity time"
    ),
    CPU_ACTIVITY: (
        "CPU operators timed by self CPU time on the calling thread (profiler annotations "
        "excluded); share_of_device_time = total_us / all operators' self CPU time"
    ),
}


@dataclasses.dataclass(frozen=True)
class ProfileOutputs:
    kernels: Path
    summary: Path
    trace: Path


@dataclasses.dataclass(frozen=True)
class Activity:
    name: str
    calls: int
    total_us: float

    @property
    def avg_us(self) -> float:
        return self.total_us / self.calls if self.calls else math.nan


# --------------------------------------------------------------------------- the table


def activity_table(events: Iterable[Any], kind: str) -> list[Activity]:
    """Activities of one kind from torch.profiler's ``key_averages()``, largest total first.

    ``events``: objects with key, count, device_type, is_user_annotation and the self time
    totals (FunctionEventAvg, or stand-ins in tests).
    """
    rows = []
    for event in events:
        if getattr(event, "is_user_annotation", False):
            # ProfilerStep*, Optimizer.step#...: regions, not operators or kernels. On a GPU
            # they come twice, the second time as a CUDA event spanning a whole step's kernels.
            continue
        if kind == CUDA_ACTIVITY:
            if event.device_type != DeviceType.CUDA:
                continue
            total = event.self_device_time_total
        else:
            if event.device_type != DeviceType.CPU:
                continue
            total = event.self_cpu_time_total
        if event.count > 0:
            rows.append(Activity(str(event.key), int(event.count), float(total)))
    rows.sort(key=lambda a: (-a.total_us, a.name))
    return rows


def kernels_csv(activities: list[Activity]) -> str:
    whole = sum(a.total_us for a in activities)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(KERNEL_COLUMNS)
    for a in activities:
        share = a.total_us / whole if whole > 0 else math.nan
        writer.writerow([a.name, a.calls, f"{a.total_us:.3f}", f"{a.avg_us:.3f}", f"{share:.6f}"])
    return buffer.getvalue()


def biggest_activity(activities: list[Activity], kind: str) -> dict[str, Any]:
    """The study's figure: the activity with the largest total time and its average (µs)."""
    if not activities:
        return {
            "biggest_activity_name": None,
            "biggest_activity_calls": None,
            "biggest_activity_total_us": None,
            "biggest_activity_avg_us": None,
            "biggest_gpu_activity_avg_us": None,
        }
    top = activities[0]
    return {
        "biggest_activity_name": top.name,
        "biggest_activity_calls": top.calls,
        "biggest_activity_total_us": top.total_us,
        "biggest_activity_avg_us": top.avg_us,
        "biggest_gpu_activity_avg_us": top.avg_us if kind == CUDA_ACTIVITY else None,
    }


# --------------------------------------------------------------------------- the step


# Epochs of a loader that feeds a set number of steps (the profiler, the benchmarks): more than
# any such run takes (batches are made lazily), so that one iterator runs throughout, as in
# training, and the prefetch never restarts empty.
ENOUGH_EPOCHS = 1_000_000


def endless_batches(loader: DataLoader) -> Iterator[Batch]:
    """The loader's batches, from the start again should it ever end."""
    while True:
        yield from loader


# --------------------------------------------------------------------------- the job


def profile_cell(
    settings: TrainSettings,
    manifest_path: str | Path,
    outputs: ProfileOutputs,
    profile: ProfileSettings,
    *,
    threads: int | None = None,
    platform: str | None = None,
    config: Mapping[str, Any] | None = None,
    image_caches: Mapping[str, Path] | None = None,
) -> dict[str, Any]:
    """Profile ``profile.steps`` training steps of ``settings``' model and batch size; write
    the kernel table, the summary and the trace; return the summary. ``image_caches``: split
    -> disk image cache folder (see detbench.training.train.train)."""
    if threads:
        torch.set_num_threads(threads)
    settings = dataclasses.replace(settings, weights="scratch")
    device = select_device(settings.hyp.device)
    precision = select_precision(device, settings.hyp.amp)
    manifest = DatasetManifest.load(manifest_path, image_caches)
    seed_everything(settings.seed)
    loader = make_train_loader(manifest, settings, device, epochs=ENOUGH_EPOCHS)
    model = build_training_model(settings, len(manifest.class_names)).to(device)
    state = TrainingState.create(model, settings, precision, device)
    model.train()
    loss_fn = YoloLoss(model, settings.hyp)
    kind = CUDA_ACTIVITY if device.type == "cuda" else CPU_ACTIVITY
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    # The profiler's own warm-up step (recorded, then discarded) is the last training warm-up
    # step: tracing starts up there rather than inside the first recorded step.
    warmup = min(profile.warmup_steps, 1)
    schedule = torch.profiler.schedule(
        wait=profile.warmup_steps - warmup, warmup=warmup, active=profile.steps, repeat=1
    )
    log.info(
        "profiling %s b%d on %s (%s): %d warm-up steps, %d recorded steps",
        settings.model,
        settings.batch,
        device,
        precision.name,
        profile.warmup_steps,
        profile.steps,
    )
    batches = endless_batches(loader)
    recorded_seconds = 0.0
    with torch.profiler.profile(activities=activities, schedule=schedule) as profiler:
        for step in range(profile.warmup_steps + profile.steps):
            recording = step >= profile.warmup_steps
            if recording:
                synchronize(device)
                start = time.perf_counter()
            train_step(state, next(batches), loss_fn, precision, device)
            if recording:
                synchronize(device)
                recorded_seconds += time.perf_counter() - start
            profiler.step()
    batches.close()
    shutdown_loader_workers(loader)

    table = activity_table(profiler.key_averages(), kind)
    if not table:
        raise DetbenchError(
            f"{outputs.kernels}: torch.profiler recorded no {kind.replace('_', ' ')}s in "
            f"{profile.steps} steps"
        )
    _write_trace(profiler, outputs.trace)
    atomic.write_text(outputs.kernels, kernels_csv(table))
    gpu = _gpu_info(device)
    summary = {
        "platform": platform,
        "model": settings.model,
        "batch": settings.batch,
        "img_size": settings.img_size,
        "device": str(device),
        "device_name": _device_name(device, gpu),
        "precision": precision.name,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": loader.num_workers,
        "warmup_steps": profile.warmup_steps,
        "steps": profile.steps,
        "activity_kind": kind,
        "time_basis": TIME_BASIS[kind],
        "activities": len(table),
        "total_activity_time_us": sum(a.total_us for a in table),
        **biggest_activity(table, kind),
        "recorded_step_seconds_mean": recorded_seconds / profile.steps,
        "recorded_step_seconds_note": "wall time per recorded step, profiler overhead included",
        "kernels_file": outputs.kernels.name,
        "trace_file": outputs.trace.name,
        "provenance": run_provenance(
            platform=platform,
            device=device,
            seed=settings.seed,
            config=config if config is not None else dataclasses.asdict(settings),
            config_source="profile job config" if config is not None else "train settings",
            gpu=gpu,
        ),
    }
    atomic.write_json(outputs.summary, summary)
    log.info(
        "%s b%d: biggest %s %r, %d calls, average %.1f µs (%.1f%% of the time)",
        settings.model,
        settings.batch,
        kind.replace("_", " "),
        summary["biggest_activity_name"],
        summary["biggest_activity_calls"],
        summary["biggest_activity_avg_us"],
        100 * table[0].total_us / summary["total_activity_time_us"],
    )
    return summary


def _write_trace(profiler: torch.profiler.profile, path: Path) -> None:
    """The Chrome trace, gzipped, written atomically."""
    with tempfile.TemporaryDirectory(prefix="detbench-trace-") as folder:
        plain = Path(folder) / "trace.json"
        profiler.export_chrome_trace(str(plain))
        with (
            atomic.atomic_open(path, "wb") as handle,
            gzip.GzipFile(fileobj=handle, mode="wb", mtime=0) as packed,
            plain.open("rb") as source,
        ):
            shutil.copyfileobj(source, packed)


def _device_name(device: torch.device, gpu: Mapping[str, Any]) -> str:
    if device.type == "cuda":
        return gpu.get("name") or torch.cuda.get_device_name(device)
    return platform_module.processor() or platform_module.machine()  # as train.py records it


def _gpu_info(device: torch.device) -> dict[str, Any]:
    if device.type != "cuda":
        return {}
    nvml, _reason = load_nvml()
    if nvml is None:
        return {}
    try:
        index = device.index if device.index is not None else torch.cuda.current_device()
        telemetry = GpuTelemetry.open(nvml, uuid=cuda_device_uuid(index), index=index)
    except Exception as error:  # no NVML library, no permission
        log.info("NVML unavailable (%s): no driver versions in the provenance", error)
        return {}
    try:
        return telemetry.info()
    finally:
        telemetry.close()
