"""The train job's monitor: process resources and GPU telemetry, kept across resumed segments.

Use in a training loop::

    monitor = TrainMonitor.start(device)            # starts the sampler thread
    monitor.resume(checkpoint.get("accounting"))    # previous segments, if resuming
    ... per epoch: checkpoint["accounting"] = monitor.checkpoint_state()
    record.update(monitor.finish(loader, cell / "gpu_samples.csv"))

A resumed job's record covers every segment: wall, user and system seconds add up, max RSS and
peak GPU memory are the maxima, GPU samples continue on one time axis. What a segment did after
its last epoch checkpoint (the partial epoch of a job killed by SIGKILL, say) is lost with the
process and is not counted. No torch.profiler here: that runs only in the profile jobs.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from detbench import atomic
from detbench.telemetry import nvml as nvml_module
from detbench.telemetry.resources import (
    DEFINITIONS,
    Origin,
    ResourceMeter,
    ResourceTotals,
    shutdown_loader_workers,
)

log = logging.getLogger("detbench.telemetry")

SAMPLE_INTERVAL_S = 0.5
STATE_VERSION = 1

GPU_DEFINITIONS = {
    "peak_memory_used_mib": "peak of NVML's memory used on the whole GPU (MiB, every process)",
    "mean_utilization_percent": "mean of NVML's GPU utilisation samples (% of time a kernel ran)",
    "mean_power_w": "mean of the sampled board power (W)",
    "energy_j": (
        "GPU energy of the job (J): the NVML energy counter's difference where the GPU has one "
        "(energy_method nvml_energy_counter), else sampled power integrated over time"
    ),
    "torch_peak_reserved_mib": "peak memory torch's caching allocator reserved (MiB, this job)",
}


class _Sampler:
    """Calls each probe at once and then every ``interval_s`` on a daemon thread."""

    def __init__(self, probes: list[Callable[[], None]], interval_s: float) -> None:
        self.probes = probes
        self.interval_s = interval_s
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self._run, name="detbench-monitor", daemon=True)

    def _run(self) -> None:
        while True:
            for probe in self.probes:
                try:
                    probe()
                except Exception:  # a failed reading must never stop the training
                    log.debug("monitor probe failed", exc_info=True)
            if self.stop_event.wait(self.interval_s):
                return

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread.is_alive() and self.thread is not threading.current_thread():
            self.thread.join(timeout=10)


class TrainMonitor:
    """Resource accounting and NVML sampling for one segment of a train job."""

    def __init__(
        self,
        device: torch.device,
        meter: ResourceMeter,
        gpu: nvml_module.GpuRecorder | None,
        gpu_status: str,
        interval_s: float,
    ) -> None:
        self.device = device
        self.meter = meter
        self.gpu = gpu
        self.gpu_status = gpu_status
        self.interval_s = interval_s
        self.previous = ResourceTotals()
        self.previous_gpu = nvml_module.GpuState()
        self.gpu_info: dict[str, Any] = dict(gpu.info) if gpu else {}
        probes: list[Callable[[], None]] = [meter.sample]
        if gpu is not None:
            probes.append(gpu.sample)
        self._sampler = _Sampler(probes, interval_s)
        # A train() that raises never reaches finish(): once the monitor is garbage, the
        # thread (which holds no reference to the monitor) stops and NVML is shut down.
        self._finalizer = weakref.finalize(
            self, _release, self._sampler, gpu.telemetry if gpu else None
        )
        self._sampler.start()

    @classmethod
    def start(
        cls,
        device: torch.device,
        *,
        nvml: Any = None,
        interval_s: float = SAMPLE_INTERVAL_S,
        origin: Origin = "auto",
    ) -> TrainMonitor:
        """Start accounting (see resources.py for the window) and, on a CUDA device, NVML
        sampling. ``nvml``: the NVML library (default: pynvml; tests pass a stand-in)."""
        meter = ResourceMeter(origin)
        gpu, status = None, f"not used (device {device})"
        if device.type == "cuda":
            gpu, status = _open_gpu(device, nvml, meter.elapsed_s)
        return cls(device, meter, gpu, status, interval_s)

    def resume(self, state: dict[str, Any] | None) -> None:
        """Take over the previous segments' figures from a checkpoint's "accounting" entry."""
        if not state:
            if state is None:
                log.info("checkpoint has no resource accounting: only this segment is counted")
            return
        self.previous = ResourceTotals.from_state(state.get("resources"))
        self.previous_gpu = nvml_module.GpuState.from_state(state.get("gpu"))

    def _segment_gpu(self) -> nvml_module.GpuState:
        energy, method = self.gpu.energy() if self.gpu is not None else (None, None)
        reserved = _torch_reserved_mib(self.device)
        # This segment's sample times continue the previous segments' time axis.
        offset = self.previous.wall_s
        samples = self.gpu.samples() if self.gpu is not None else []
        return nvml_module.GpuState(
            samples=[(s[0] + offset, *s[1:]) for s in samples],  # type: ignore[operator]
            energy_j=energy,
            energy_methods=[method] if method else [],
            torch_peak_reserved_mib=reserved,
        )

    def energy_so_far_j(self) -> float | None:
        """GPU energy of every segment so far (J), None without GPU telemetry."""
        if self.gpu is None:
            return None
        return nvml_module.combine(self.previous_gpu, self._segment_gpu()).energy_j

    def checkpoint_state(self) -> dict[str, Any]:
        """Every segment so far, for the epoch checkpoint (live DataLoader workers' CPU time
        included: they are reaped only at the end)."""
        resources = self.previous.plus(self.meter.totals(include_live_children=True))
        gpu = nvml_module.combine(self.previous_gpu, self._segment_gpu())
        return {"version": STATE_VERSION, "resources": vars(resources), "gpu": gpu.to_state()}

    def finish(self, loader: Any, samples_path: str | Path) -> dict[str, Any]:
        """Reap the loader's workers, stop sampling, write gpu_samples.csv (a header alone
        without GPU samples) and return the run record's "resources" and "gpu" entries."""
        shutdown_loader_workers(loader)
        self.meter.sample()
        if self.gpu is not None:
            self.gpu.sample()
        self._sampler.stop()
        resources = self.previous.plus(self.meter.totals())
        gpu_state = nvml_module.combine(self.previous_gpu, self._segment_gpu())
        self._finalizer()  # NVML shut down; the thread has stopped
        atomic.write_text(samples_path, nvml_module.samples_csv(gpu_state.samples))
        gpu_record: dict[str, Any] = {
            "status": self.gpu_status,
            "name": self.gpu_info.get("name"),
            "driver_version": self.gpu_info.get("driver_version"),
            "cuda_driver_version": self.gpu_info.get("cuda_driver_version"),
            "memory_total_mib": self.gpu_info.get("memory_total_mib"),
            "sample_interval_s": self.interval_s if self.gpu is not None else None,
            **nvml_module.summarise(gpu_state),
            "samples_file": Path(samples_path).name,
            "definitions": GPU_DEFINITIONS,
        }
        if self.device.type == "cuda" and gpu_record["name"] is None:
            gpu_record["name"] = _torch_device_name(self.device)
        return {
            "resources": {
                **resources.to_record(),
                "accounting_origin": (
                    "process start (as /usr/bin/time -v)"
                    if self.meter.origin == "process"
                    else "train() call"
                ),
                "rss_sample_interval_s": self.interval_s,
                "definitions": DEFINITIONS,
            },
            "gpu": gpu_record,
        }


def _torch_reserved_mib(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    try:
        return torch.cuda.max_memory_reserved(device) / 2**20
    except (RuntimeError, AssertionError):  # CUDA not initialised (an NVML test double)
        return None


def _torch_device_name(device: torch.device) -> str | None:
    try:
        return torch.cuda.get_device_name(device)
    except (RuntimeError, AssertionError):
        return None


def _release(sampler: _Sampler, telemetry: nvml_module.GpuTelemetry | None) -> None:
    sampler.stop()
    if telemetry is not None:
        telemetry.close()


def _open_gpu(
    device: torch.device, nvml: Any, clock: Callable[[], float]
) -> tuple[nvml_module.GpuRecorder | None, str]:
    if nvml is None:
        nvml, reason = nvml_module.load_nvml()
        if nvml is None:
            return None, f"NVML unavailable: {reason}"
    index = device.index if device.index is not None else torch.cuda.current_device()
    uuid = nvml_module.cuda_device_uuid(index)
    try:
        telemetry = nvml_module.GpuTelemetry.open(nvml, uuid=uuid, index=index)
    except Exception as error:  # NVMLError (no driver library, no permission), OSError...
        log.warning("NVML unavailable (%s): GPU telemetry reads NA", error)
        return None, f"NVML unavailable: {error}"
    try:
        return nvml_module.GpuRecorder(telemetry, clock), "sampled"
    except Exception as error:
        telemetry.close()
        log.warning("NVML failed (%s): GPU telemetry reads NA", error)
        return None, f"NVML failed: {error}"
