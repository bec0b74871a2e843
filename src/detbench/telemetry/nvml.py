"""GPU telemetry through NVML (the ``pynvml`` module of nvidia-ml-py), sampled in the background.

The NVML library is passed in (``nvml=``): the real ``pynvml`` module by default, a stand-in
object with the same function names in tests. Every query may fail on its own (an
``NVMLError``: a GPU without a power sensor, or without an energy counter before Volta); the
field then reads None ("NA" in files) and a query the GPU does not support is not asked again.

Units: utilisation % (nvmlDeviceGetUtilizationRates ``.gpu``: share of the last sample period,
1/6 s to 1 s depending on the GPU, during which a kernel ran), memory used MiB (whole device,
every process), power W (nvmlDeviceGetPowerUsage, mW), SM clock MHz, temperature °C.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("detbench.telemetry")

SAMPLE_COLUMNS = (
    "time_s",
    "utilization_percent",
    "memory_used_mib",
    "power_w",
    "sm_clock_mhz",
    "temperature_c",
)
NVML_ERROR_NOT_SUPPORTED = 3  # pynvml.NVML_ERROR_NOT_SUPPORTED
ENERGY_COUNTER = "nvml_energy_counter"
POWER_INTEGRATION = "power_integration"

Sample = tuple[float | None, ...]  # in SAMPLE_COLUMNS order


def load_nvml() -> tuple[Any | None, str]:
    """(the pynvml module, "") or (None, why it cannot be used)."""
    try:
        import pynvml
    except ImportError:
        return None, "nvidia-ml-py (pynvml) is not installed"
    return pynvml, ""


def cuda_device_uuid(index: int) -> str | None:
    """NVML's UUID ("GPU-...") of torch's CUDA device ``index``, or None where unknown."""
    import torch

    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (AttributeError, RuntimeError, AssertionError):
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


class GpuTelemetry:
    """One GPU as NVML sees it; close() when done."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle
        self.unsupported: set[str] = set()

    @classmethod
    def open(cls, nvml: Any, uuid: str | None = None, index: int = 0) -> GpuTelemetry:
        """Initialise NVML and find the GPU by UUID (CUDA and NVML may number GPUs differently
        under CUDA_VISIBLE_DEVICES), else by index. Raises the library's NVMLError."""
        nvml.nvmlInit()
        try:
            handle = None
            if uuid:
                try:
                    handle = nvml.nvmlDeviceGetHandleByUUID(uuid)
                except nvml.NVMLError as error:
                    log.info("NVML: no GPU with UUID %s (%s); using index %d", uuid, error, index)
            if handle is None:
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except BaseException:
            nvml.nvmlShutdown()
            raise
        return cls(nvml, handle)

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError as error:
            log.info("NVML shutdown: %s", error)

    def _query(self, name: str, read: Callable[[], Any]) -> Any:
        if name in self.unsupported:
            return None
        try:
            return read()
        except self.nvml.NVMLError as error:
            if getattr(error, "value", None) == getattr(
                self.nvml, "NVML_ERROR_NOT_SUPPORTED", NVML_ERROR_NOT_SUPPORTED
            ):
                self.unsupported.add(name)
                log.info("NVML: %s not supported on this GPU", name)
            else:
                log.debug("NVML: %s failed: %s", name, error)
            return None

    def info(self) -> dict[str, Any]:
        nvml, handle = self.nvml, self.handle
        cuda = self._query("cuda_driver_version", nvml.nvmlSystemGetCudaDriverVersion)
        return {
            "name": _text(self._query("name", lambda: nvml.nvmlDeviceGetName(handle))),
            "driver_version": _text(self._query("driver_version", nvml.nvmlSystemGetDriverVersion)),
            # NVML's integer is 1000 x major + 10 x minor.
            "cuda_driver_version": None if cuda is None else f"{cuda // 1000}.{cuda % 1000 // 10}",
            "memory_total_mib": _mib(
                self._query("memory_total", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).total)
            ),
        }

    def sample(self, time_s: float) -> Sample:
        nvml, handle = self.nvml, self.handle
        utilization = self._query(
            "utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle).gpu
        )
        used = self._query("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle).used)
        power_mw = self._query("power", lambda: nvml.nvmlDeviceGetPowerUsage(handle))
        clock = self._query(
            "sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(handle, _const(nvml, "NVML_CLOCK_SM"))
        )
        temperature = self._query(
            "temperature",
            lambda: nvml.nvmlDeviceGetTemperature(handle, _const(nvml, "NVML_TEMPERATURE_GPU")),
        )
        return (
            time_s,
            _float(utilization),
            _mib(used),
            None if power_mw is None else power_mw / 1000,
            _float(clock),
            _float(temperature),
        )

    def energy_mj(self) -> int | None:
        """The GPU's energy counter (mJ since the driver loaded; Volta and later), or None."""
        return self._query(
            "energy", lambda: self.nvml.nvmlDeviceGetTotalEnergyConsumption(self.handle)
        )


def _const(nvml: Any, name: str) -> int:
    return getattr(nvml, name, {"NVML_CLOCK_SM": 1, "NVML_TEMPERATURE_GPU": 0}[name])


def _text(value: Any) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _mib(value: Any) -> float | None:
    return None if value is None else value / 2**20


@dataclasses.dataclass
class GpuState:
    """Telemetry accumulated over the segments of one resumable train job (checkpointed)."""

    samples: list[Sample] = dataclasses.field(default_factory=list)
    energy_j: float | None = 0.0
    energy_methods: list[str] = dataclasses.field(default_factory=list)
    torch_peak_reserved_mib: float | None = None

    def to_state(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> GpuState:
        if not state:
            return cls()
        return cls(
            samples=[tuple(s) for s in state.get("samples", [])],
            energy_j=state.get("energy_j"),
            energy_methods=list(state.get("energy_methods", [])),
            torch_peak_reserved_mib=state.get("torch_peak_reserved_mib"),
        )


class GpuRecorder:
    """One segment's GPU samples and energy; ``sample`` runs on the sampler thread."""

    def __init__(self, telemetry: GpuTelemetry, clock: Callable[[], float]) -> None:
        self.telemetry = telemetry
        self.clock = clock  # seconds on the job's time axis
        self.info = telemetry.info()
        self._samples: list[Sample] = []
        self._lock = threading.Lock()
        self._energy_start = telemetry.energy_mj()

    def sample(self) -> None:
        row = self.telemetry.sample(self.clock())
        with self._lock:
            self._samples.append(row)

    def samples(self) -> list[Sample]:
        with self._lock:
            return list(self._samples)

    def energy(self) -> tuple[float | None, str | None]:
        """Joules of this segment so far: the counter's difference where the GPU has one,
        else the time integral of the sampled power (trapezoids between samples)."""
        if self._energy_start is not None:
            now = self.telemetry.energy_mj()
            if now is not None and now >= self._energy_start:
                return (now - self._energy_start) / 1000, ENERGY_COUNTER
        joules = integrate_power(self.samples())
        return (joules, POWER_INTEGRATION) if joules is not None else (None, None)


def integrate_power(samples: Sequence[Sample]) -> float | None:
    """∫ power dt (J) over the samples with a power reading; None with fewer than two."""
    points = [(s[0], s[3]) for s in samples if s[0] is not None and s[3] is not None]
    if len(points) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in itertools.pairwise(points))


def combine(previous: GpuState, segment: GpuState) -> GpuState:
    """Previous segments plus this one (energy is unknown if any segment's is)."""
    energy = (
        None
        if previous.energy_j is None or segment.energy_j is None
        else previous.energy_j + segment.energy_j
    )
    peaks = [p for p in (previous.torch_peak_reserved_mib, segment.torch_peak_reserved_mib) if p]
    return GpuState(
        samples=previous.samples + segment.samples,
        energy_j=energy,
        energy_methods=previous.energy_methods + segment.energy_methods,
        torch_peak_reserved_mib=max(peaks) if peaks else None,
    )


def summarise(state: GpuState) -> dict[str, Any]:
    """Run-record figures from every segment's samples."""

    def column(index: int) -> list[float]:
        return [s[index] for s in state.samples if s[index] is not None]  # type: ignore[misc]

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    methods = sorted(set(state.energy_methods))
    return {
        "samples": len(state.samples),
        "mean_utilization_percent": mean(column(1)),
        "peak_memory_used_mib": max(column(2), default=None),
        "mean_power_w": mean(column(3)),
        "max_power_w": max(column(3), default=None),
        "energy_j": state.energy_j if state.energy_methods else None,
        "energy_method": (methods[0] if len(methods) == 1 else "mixed: " + ", ".join(methods))
        if methods and state.energy_j is not None
        else None,
        "mean_sm_clock_mhz": mean(column(4)),
        "max_temperature_c": max(column(5), default=None),
        "torch_peak_reserved_mib": state.torch_peak_reserved_mib,
    }


def samples_csv(samples: Sequence[Sample]) -> str:
    """gpu_samples.csv: a header, then one row per sample ("NA" where NVML gave nothing)."""
    lines = [",".join(SAMPLE_COLUMNS)]
    for sample in samples:
        lines.append(",".join("NA" if v is None else f"{v:.6g}" for v in sample))
    return "\n".join(lines) + "\n"
