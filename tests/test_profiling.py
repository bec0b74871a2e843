"""Profiling a cell (issue 4): process resources as /usr/bin/time -v reports them, GPU telemetry
through an injected NVML stand-in (no GPU here), resumed segments, provenance, the profile
stage's operator table and trace, and the summary's new columns (cost included)."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import yaml
from torch.autograd import DeviceType

import detbench.training.train as train_module
from detbench.errors import DetbenchError
from detbench.models import build_model
from detbench.study.config import (
    ProfileSettings,
    TrainHyperparameters,
    TrainSettings,
    load_config_file,
    validate_config,
)
from detbench.summary.aggregate import COLUMNS, find_cells, write_summary
from detbench.telemetry import TrainMonitor, nvml, provenance
from detbench.telemetry.kernels import (
    CPU_ACTIVITY,
    CUDA_ACTIVITY,
    KERNEL_COLUMNS,
    ProfileOutputs,
    activity_table,
    biggest_activity,
    profile_cell,
)
from detbench.telemetry.resources import ResourceMeter, ResourceTotals, rss_kb
from detbench.training.train import TrainOutputs, train

GPU_SAMPLE_COLUMNS = [
    "time_s",
    "utilization_percent",
    "memory_used_mib",
    "power_w",
    "sm_clock_mhz",
    "temperature_c",
]
NOT_SUPPORTED = 3
LIBRARY_NOT_FOUND = 12


# --------------------------------------------------------------------------- an NVML stand-in


class FakeNVMLError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(f"NVML error {value}")
        self.value = value


class FakeNvml:
    """The pynvml functions detbench calls, with scripted readings.

    ``fail``: query name -> NVML error code raised on every call (e.g. energy not supported).
    ``init_error``: nvmlInit raises it (no driver library).
    """

    NVMLError = FakeNVMLError
    NVML_ERROR_NOT_SUPPORTED = NOT_SUPPORTED
    NVML_CLOCK_SM = 1
    NVML_TEMPERATURE_GPU = 0

    def __init__(self, fail: dict[str, int] | None = None, init_error: int | None = None) -> None:
        self.fail = fail or {}
        self.init_error = init_error
        self.calls: Counter[str] = Counter()
        self.initialised = 0
        self.energy_mj = 5_000_000

    def _call(self, name: str) -> int:
        self.calls[name] += 1
        if name in self.fail:
            raise FakeNVMLError(self.fail[name])
        return self.calls[name]  # 1, 2, 3... per query

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNVMLError(self.init_error)
        self.initialised += 1

    def nvmlShutdown(self) -> None:
        self.initialised -= 1

    def nvmlDeviceGetHandleByUUID(self, uuid: str) -> str:
        raise FakeNVMLError(6)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> str:
        return f"gpu{index}"

    def nvmlDeviceGetName(self, handle: str) -> bytes:
        self._call("name")
        return b"Tesla T4"

    def nvmlSystemGetDriverVersion(self) -> str:
        self._call("driver")
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._call("cuda")
        return 12040

    def nvmlDeviceGetUtilizationRates(self, handle: str) -> SimpleNamespace:
        n = self._call("utilization")
        return SimpleNamespace(gpu=[0, 100, 80][n % 3], memory=10)

    def nvmlDeviceGetMemoryInfo(self, handle: str) -> SimpleNamespace:
        n = self._call("memory")
        return SimpleNamespace(total=15 * 2**30, used=(1000 + 10 * n) * 2**20, free=0)

    def nvmlDeviceGetPowerUsage(self, handle: str) -> int:
        self._call("power")
        return 70_000  # mW

    def nvmlDeviceGetClockInfo(self, handle: str, kind: int) -> int:
        assert kind == self.NVML_CLOCK_SM
        self._call("clock")
        return 1590

    def nvmlDeviceGetTemperature(self, handle: str, kind: int) -> int:
        assert kind == self.NVML_TEMPERATURE_GPU
        self._call("temperature")
        return 64

    def nvmlDeviceGetTotalEnergyConsumption(self, handle: str) -> int:
        self._call("energy")
        self.energy_mj += 2_500  # 2.5 J between two readings
        return self.energy_mj


class Clock:
    """A job clock the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _recorder(fake: FakeNvml) -> tuple[nvml.GpuRecorder, Clock]:
    clock = Clock()
    return nvml.GpuRecorder(nvml.GpuTelemetry.open(fake), clock), clock


def _read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


# --------------------------------------------------------------------------- NVML sampling


def test_gpu_samples_read_every_field_in_its_unit() -> None:
    fake = FakeNvml()
    recorder, clock = _recorder(fake)
    for t in (0.0, 0.5, 1.0):
        clock.now = t
        recorder.sample()
    assert recorder.info == {
        "name": "Tesla T4",
        "driver_version": "550.54.15",
        "cuda_driver_version": "12.4",
        "memory_total_mib": 15 * 1024,
    }
    samples = recorder.samples()
    assert [s[0] for s in samples] == [0.0, 0.5, 1.0]
    assert [s[1] for s in samples] == [100.0, 80.0, 0.0]  # utilisation %
    assert [s[2] for s in samples] == [1020.0, 1030.0, 1040.0]  # MiB (info() read the first)
    assert {s[3:] for s in samples} == {(70.0, 1590.0, 64.0)}  # W, MHz, °C


def test_energy_comes_from_the_counter_where_the_gpu_has_one() -> None:
    fake = FakeNvml()
    recorder, _ = _recorder(fake)
    recorder.sample()
    energy, method = recorder.energy()
    assert method == nvml.ENERGY_COUNTER
    assert energy == pytest.approx(2.5)  # (counter now - counter at start) mJ / 1000


def test_energy_falls_back_to_integrated_power_without_a_counter() -> None:
    fake = FakeNvml(fail={"energy": NOT_SUPPORTED})
    recorder, clock = _recorder(fake)
    for t in (0.0, 0.5, 2.0):
        clock.now = t
        recorder.sample()
    energy, method = recorder.energy()
    assert method == nvml.POWER_INTEGRATION
    assert energy == pytest.approx(70.0 * 2.0)  # 70 W for 2 s
    # Not supported is remembered: the counter was asked once, at the start.
    assert fake.calls["energy"] == 1


def test_a_failing_query_reads_na_and_the_others_go_on() -> None:
    fake = FakeNvml(fail={"power": NOT_SUPPORTED, "energy": NOT_SUPPORTED, "clock": 999})
    recorder, clock = _recorder(fake)
    for t in (0.0, 1.0):
        clock.now = t
        recorder.sample()
    samples = recorder.samples()
    assert [s[3] for s in samples] == [None, None]  # power
    assert [s[4] for s in samples] == [None, None]  # clock (another error)
    assert [s[1] for s in samples] == [100.0, 80.0]
    assert fake.calls["power"] == 1, "an unsupported query is not asked again"
    assert fake.calls["clock"] == 2, "other errors may pass: asked again"
    assert recorder.energy() == (None, None)  # no counter, no power to integrate
    text = nvml.samples_csv(samples)
    assert text.splitlines()[0] == ",".join(GPU_SAMPLE_COLUMNS)
    assert text.splitlines()[1].split(",")[3:5] == ["NA", "NA"]


def test_integrate_power_uses_trapezoids_and_skips_missing_readings() -> None:
    samples = [(0.0, None, None, 100.0, None, None), (1.0, None, None, None, None, None)]
    samples.append((2.0, None, None, 200.0, None, None))
    assert nvml.integrate_power(samples) == pytest.approx(300.0)
    assert nvml.integrate_power(samples[:1]) is None


def _wait_for(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_train_monitor_samples_the_gpu_in_the_background(tmp_path: Path) -> None:
    fake = FakeNvml()
    monitor = TrainMonitor.start(torch.device("cuda:0"), nvml=fake, interval_s=0.01, origin="call")
    _wait_for(lambda: fake.calls["utilization"] >= 4)
    record = monitor.finish(None, tmp_path / "gpu_samples.csv")
    gpu = record["gpu"]
    assert gpu["status"] == "sampled"
    assert (gpu["name"], gpu["driver_version"], gpu["cuda_driver_version"]) == (
        "Tesla T4",
        "550.54.15",
        "12.4",
    )
    assert gpu["samples"] >= 4
    assert gpu["peak_memory_used_mib"] == 1000 + 10 * fake.calls["memory"]
    assert gpu["mean_power_w"] == pytest.approx(70.0)
    assert gpu["max_temperature_c"] == 64.0
    assert gpu["energy_method"] == nvml.ENERGY_COUNTER and gpu["energy_j"] == pytest.approx(2.5)
    header, rows = _read_csv(tmp_path / "gpu_samples.csv")
    assert header == GPU_SAMPLE_COLUMNS
    assert len(rows) == gpu["samples"]
    times = [float(row["time_s"]) for row in rows]
    assert times == sorted(times)
    assert fake.initialised == 0, "NVML was not shut down"
    calls = fake.calls["utilization"]
    time.sleep(0.05)
    assert fake.calls["utilization"] == calls, "the sampler still runs after finish()"


def test_an_abandoned_monitor_stops_its_thread() -> None:
    # A train() that raises never calls finish(): the sampler must not outlive the monitor.
    fake = FakeNvml()
    monitor = TrainMonitor.start(torch.device("cuda:0"), nvml=fake, interval_s=0.01, origin="call")
    thread = monitor._sampler.thread
    del monitor
    thread.join(timeout=10)
    assert not thread.is_alive()
    assert fake.initialised == 0


@pytest.mark.parametrize("how", ["no library", "no driver"])
def test_without_nvml_gpu_fields_are_na_and_nothing_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "no library":
        monkeypatch.setattr(nvml, "load_nvml", lambda: (None, "pynvml is not installed"))
        library = None
    else:
        library = FakeNvml(init_error=LIBRARY_NOT_FOUND)
    monitor = TrainMonitor.start(torch.device("cuda:0"), nvml=library, origin="call")
    record = monitor.finish(None, tmp_path / "gpu_samples.csv")
    gpu = record["gpu"]
    assert gpu["status"].startswith("NVML unavailable")
    for key in ("driver_version", "peak_memory_used_mib", "mean_utilization_percent"):
        assert gpu[key] is None, key
    assert gpu["energy_j"] is None and gpu["energy_method"] is None
    assert (tmp_path / "gpu_samples.csv").read_text() == ",".join(GPU_SAMPLE_COLUMNS) + "\n"


def test_on_a_cpu_nvml_is_not_asked(tmp_path: Path) -> None:
    fake = FakeNvml()
    record = TrainMonitor.start(torch.device("cpu"), nvml=fake, origin="call").finish(
        None, tmp_path / "gpu_samples.csv"
    )
    assert not fake.calls and fake.initialised == 0
    assert record["gpu"]["status"] == "not used (device cpu)"
    assert record["gpu"]["samples"] == 0
    assert (tmp_path / "gpu_samples.csv").read_text() == ",".join(GPU_SAMPLE_COLUMNS) + "\n"


# --------------------------------------------------------------------------- process resources

CHILD = """
import sys, time
import numpy as np
block = np.ones(int(sys.argv[1]) * 2**20 // 8)  # resident: every page written
end = time.process_time() + float(sys.argv[2])
while time.process_time() < end:
    pass
print(time.process_time(), flush=True)
time.sleep(float(sys.argv[3]))
"""


def _child(megabytes: int, cpu_s: float, sleep_s: float) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(megabytes), str(cpu_s), str(sleep_s)],
        stdout=subprocess.PIPE,
        text=True,
    )


def test_reaped_children_count_in_user_time() -> None:
    meter = ResourceMeter("call")
    child = _child(1, 0.3, 0)
    child_cpu = float(child.stdout.readline())  # type: ignore[union-attr]
    assert child.wait(timeout=60) == 0
    totals = meter.totals()
    assert totals.user_s + totals.system_s >= child_cpu
    assert totals.cpu_percent is not None and totals.cpu_percent > 0


def test_live_children_count_in_tree_rss_and_in_checkpointed_cpu_time() -> None:
    meter = ResourceMeter("call")
    child = _child(300, 0.2, 60)
    try:
        float(child.stdout.readline())  # type: ignore[union-attr]  # allocated, burnt, asleep
        meter.sample()
        totals = meter.totals()
        own = rss_kb(meter.pid)
        assert totals.max_tree_rss_kb >= own + 250 * 1024
        assert totals.max_rss_kb >= own
        with_live = meter.totals(include_live_children=True)
        assert with_live.user_s + with_live.system_s >= totals.user_s + totals.system_s + 0.1
    finally:
        child.kill()
        child.wait(timeout=60)


def test_resource_totals_add_up_over_segments() -> None:
    first = ResourceTotals(10.0, 8.0, 1.0, 500, 900, 1)
    second = ResourceTotals(5.0, 4.0, 0.5, 700, 800, 1)
    both = first.plus(second)
    assert both == ResourceTotals(15.0, 12.0, 1.5, 700, 900, 2)
    assert both.cpu_percent == pytest.approx(90.0)
    assert ResourceTotals.from_state(vars(both)) == both


def test_monitor_resumes_previous_segments(tmp_path: Path) -> None:
    fake = FakeNvml()
    previous = {
        "version": 1,
        "resources": vars(ResourceTotals(100.0, 60.0, 4.0, 10**8, 2 * 10**8, 1)),
        "gpu": {
            "samples": [
                [1.0, 50.0, 900.0, 60.0, 1500.0, 60.0],
                [99.0, 50.0, 5000.0, 60.0, 1500.0, 90.0],
            ],
            "energy_j": 1000.0,
            "energy_methods": [nvml.ENERGY_COUNTER],
            "torch_peak_reserved_mib": None,
        },
    }
    monitor = TrainMonitor.start(torch.device("cuda:0"), nvml=fake, interval_s=0.01, origin="call")
    monitor.resume(previous)
    record = monitor.finish(None, tmp_path / "gpu_samples.csv")
    resources, gpu = record["resources"], record["gpu"]
    assert resources["segments_counted"] == 2
    assert resources["wall_time_s"] > 100.0 and resources["user_time_s"] >= 60.0
    assert resources["max_rss_kb"] == 10**8 and resources["max_tree_rss_kb"] == 2 * 10**8
    assert gpu["peak_memory_used_mib"] == 5000.0 and gpu["max_temperature_c"] == 90.0
    assert gpu["energy_j"] == pytest.approx(1002.5)
    _, rows = _read_csv(tmp_path / "gpu_samples.csv")
    times = [float(row["time_s"]) for row in rows]
    assert times[:2] == [1.0, 99.0] and min(times[2:]) >= 100.0, "segments share one time axis"


# --------------------------------------------------------------------------- a real train job


def _model_kb(model: str) -> float:
    network = build_model(model, num_classes=3)
    return sum(p.numel() * p.element_size() for p in network.parameters()) / 1024


def test_cpu_train_record_has_measured_resources_and_na_gpu(
    tiny_trained_cell: tuple[TrainOutputs, dict[str, Any]],
) -> None:
    outputs, record = tiny_trained_cell
    resources = record["resources"]
    assert resources["user_time_s"] > 0
    assert resources["system_time_s"] >= 0
    assert resources["wall_time_s"] >= record["train_seconds"]
    assert resources["cpu_percent"] > 0
    assert resources["max_rss_kb"] > _model_kb("yolov3-tiny")
    assert resources["max_tree_rss_kb"] >= resources["max_rss_kb"]
    assert resources["segments_counted"] == 1
    gpu = record["gpu"]
    assert gpu["status"] == "not used (device cpu)"
    assert all(gpu[k] is None for k in ("name", "peak_memory_used_mib", "energy_j"))
    samples = outputs.record.with_name("gpu_samples.csv")
    assert samples.read_text() == ",".join(GPU_SAMPLE_COLUMNS) + "\n"
    on_disk = json.loads(outputs.record.read_text(encoding="utf-8"))
    assert on_disk["resources"]["user_time_s"] == resources["user_time_s"]
    prov = on_disk["provenance"]
    assert prov["seed"] == 0 and prov["device"] == "cpu"
    assert prov["torch_version"] == torch.__version__
    assert prov["python_version"].count(".") == 2
    assert prov["git_commit"] == "unknown" or len(prov["git_commit"]) == 40
    assert len(prov["config_hash"]) == 16 and prov["config_hashed"] == "train settings"
    assert prov["host"]


def test_resumed_train_job_counts_every_segment(
    synthetic_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    settings = TrainSettings(
        "yolov3-tiny",
        batch=4,
        epochs=3,
        img_size=64,
        hyp=TrainHyperparameters(workers=0, checkpoint_interval_s=0),
    )
    first = tmp_path / "results" / "p1" / "yolov3-tiny" / "b4_e3"
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "remove_checkpoints", lambda resume_dir: None)
        train(settings, synthetic_manifest, TrainOutputs.in_folder(first), threads=1)
    checkpoint = torch.load(
        first / "checkpoints" / "epoch-00002.pt", map_location="cpu", weights_only=False
    )
    before = checkpoint["accounting"]["resources"]
    assert before["segments"] == 1 and before["user_s"] > 0
    # A job killed after epoch 2: only its checkpoints remain (none follows the last epoch).
    resumed = tmp_path / "results" / "p2" / "yolov3-tiny" / "b4_e3"
    resumed.mkdir(parents=True)
    shutil.copytree(first / "checkpoints", resumed / "checkpoints")
    record = train(settings, synthetic_manifest, TrainOutputs.in_folder(resumed), threads=1)
    assert record["segments"] == 2
    resources = record["resources"]
    assert resources["segments_counted"] == 2
    assert resources["user_time_s"] > before["user_s"]
    assert resources["wall_time_s"] > before["wall_s"]
    assert resources["max_rss_kb"] >= before["max_rss_kb"]
    assert record["provenance"]["platform"] == "p2"  # read from the cell's path


# --------------------------------------------------------------------------- provenance


def test_platform_comes_from_the_cell_path_when_not_given() -> None:
    path = Path("results/cloud-t4/yolov3/b8_e5/run.json")
    assert provenance.platform_from_cell_path(path) == "cloud-t4"
    assert provenance.platform_from_cell_path(Path("/tmp/x/run.json")) is None


def test_git_state_outside_a_checkout_is_unknown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(provenance, "PACKAGE_DIR", tmp_path)
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert provenance.git_state() == ("unknown", None)


def test_provenance_hashes_the_given_config_and_names_the_platform() -> None:
    config = {"seed": 3, "train": {"lr0": 0.01}}
    settings = TrainSettings("yolov3", batch=8, epochs=5, seed=3)
    block = provenance.cell_provenance(
        settings, torch.device("cpu"), None, "baremetal-p40", config, Path("x/run.json")
    )
    assert block["platform"] == "baremetal-p40" and block["seed"] == 3
    assert block["config_hashed"] == "cell config"
    changed = provenance.cell_provenance(
        settings, torch.device("cpu"), None, None, {**config, "seed": 4}, Path("x/run.json")
    )
    assert changed["config_hash"] != block["config_hash"]


# --------------------------------------------------------------------------- the profile stage


@pytest.fixture(scope="module")
def cpu_profile(
    synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ProfileOutputs, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("profile") / "profile_b4"
    outputs = ProfileOutputs(
        folder / "kernels.csv", folder / "summary.json", folder / "trace.json.gz"
    )
    settings = TrainSettings(
        "yolov3-tiny", batch=4, epochs=1, img_size=64, hyp=TrainHyperparameters(workers=0)
    )
    threads = torch.get_num_threads()
    try:
        summary = profile_cell(
            settings,
            synthetic_manifest,
            outputs,
            ProfileSettings(warmup_steps=1, steps=2),
            threads=1,
            platform="test-cpu",
        )
    finally:
        torch.set_num_threads(threads)
    return outputs, summary


def test_cpu_profile_writes_a_non_empty_operator_table(
    cpu_profile: tuple[ProfileOutputs, dict[str, Any]],
) -> None:
    outputs, summary = cpu_profile
    header, rows = _read_csv(outputs.kernels)
    assert header == list(KERNEL_COLUMNS)
    assert rows, "no operators recorded"
    totals = [float(row["total_us"]) for row in rows]
    assert totals == sorted(totals, reverse=True)
    assert sum(float(row["share_of_device_time"]) for row in rows) == pytest.approx(1, abs=1e-3)
    assert any(row["name"].startswith("aten::") for row in rows)
    assert not any(row["name"].startswith("ProfilerStep") for row in rows)
    top = rows[0]
    assert summary["activity_kind"] == CPU_ACTIVITY
    assert summary["biggest_activity_name"] == top["name"]
    assert summary["biggest_activity_avg_us"] == pytest.approx(float(top["avg_us"]), rel=1e-4)
    assert summary["biggest_gpu_activity_avg_us"] is None
    assert summary["steps"] == 2 and summary["warmup_steps"] == 1
    assert summary["provenance"]["platform"] == "test-cpu"
    assert json.loads(outputs.summary.read_text(encoding="utf-8")) == summary


def test_profile_trace_opens_as_a_chrome_trace(
    cpu_profile: tuple[ProfileOutputs, dict[str, Any]],
) -> None:
    outputs, _ = cpu_profile
    with gzip.open(outputs.trace, "rt", encoding="utf-8") as handle:
        trace = json.load(handle)
    assert trace["traceEvents"], "empty trace"


def _event(key: str, device_type: DeviceType, count: int, cpu: float, device: float, **kw: Any):
    return SimpleNamespace(
        key=key,
        count=count,
        device_type=device_type,
        self_cpu_time_total=cpu,
        self_device_time_total=device,
        is_user_annotation=kw.get("annotation", False),
    )


def test_cuda_table_is_made_of_gpu_activities_timed_on_the_device() -> None:
    events = [
        _event("aten::conv2d", DeviceType.CPU, 10, 900.0, 500.0),
        _event("cudaLaunchKernel", DeviceType.CPU, 40, 400.0, 0.0),
        _event("ProfilerStep*", DeviceType.CPU, 2, 50.0, 0.0, annotation=True),
        _event("sm80_xmma_fprop_implicit_gemm", DeviceType.CUDA, 10, 0.0, 300.0),
        _event("Memcpy HtoD (Pageable -> Device)", DeviceType.CUDA, 2, 0.0, 40.0),
        _event("void at::native::elementwise_kernel", DeviceType.CUDA, 100, 0.0, 160.0),
        # The step's region again, as a GPU annotation spanning its kernels (seen on an H100
        # with torch 2.11, where it was reported as the "biggest kernel").
        _event("ProfilerStep*", DeviceType.CUDA, 2, 0.0, 5000.0, annotation=True),
    ]
    table = activity_table(events, CUDA_ACTIVITY)
    assert [a.name for a in table] == [
        "sm80_xmma_fprop_implicit_gemm",
        "void at::native::elementwise_kernel",
        "Memcpy HtoD (Pageable -> Device)",
    ]
    figure = biggest_activity(table, CUDA_ACTIVITY)
    assert figure["biggest_gpu_activity_avg_us"] == pytest.approx(30.0)
    assert figure["biggest_activity_avg_us"] == pytest.approx(30.0)
    cpu = activity_table(events, CPU_ACTIVITY)
    assert [a.name for a in cpu] == ["aten::conv2d", "cudaLaunchKernel"]
    assert biggest_activity(cpu, CPU_ACTIVITY)["biggest_gpu_activity_avg_us"] is None


# --------------------------------------------------------------------------- the summary


def _cell(root: Path, platform: str, batch: int, *, run_extra: dict[str, Any]) -> Path:
    cell = root / platform / "yolov3" / f"b{batch}_e5"
    cell.mkdir(parents=True)
    run = {"model": "yolov3", "batch": batch, "epochs": 5, "dataset": "bccd", "img_size": 416}
    run |= {"train_seconds": 3000.0, **run_extra}
    (cell / "run.json").write_text(json.dumps(run), encoding="utf-8")
    metrics = {
        "split": "test",
        "num_images": 72,
        "metrics": {"map50": 0.5, "per_class": []},
        "val_loss": {"box": 0.05, "obj": 0.4, "cls": 0.01},
    }
    (cell / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    return cell


GPU_RUN = {
    "resources": {
        "wall_time_s": 7200.0,
        "user_time_s": 6100.5,
        "system_time_s": 300.0,
        "cpu_percent": 88.9,
        "max_rss_kb": 4_446_340,
        "max_tree_rss_kb": 9_000_000,
    },
    "gpu": {
        "name": "Tesla T4",
        "peak_memory_used_mib": 9000.0,
        "mean_utilization_percent": 91.5,
        "mean_power_w": 65.0,
        "energy_j": 468000.0,
        "energy_method": "nvml_energy_counter",
    },
    "provenance": {"git_commit": "a" * 40, "config_hash": "0123456789abcdef"},
}


def test_summary_gains_resource_gpu_profile_and_cost_columns(tmp_path: Path) -> None:
    root = tmp_path / "results"
    gpu_cell = _cell(root, "cloud-t4", 8, run_extra=GPU_RUN)
    profile = gpu_cell.parent / "profile_b8"
    profile.mkdir()
    (profile / "summary.json").write_text(
        json.dumps(
            {
                "activity_kind": CUDA_ACTIVITY,
                "biggest_activity_name": "turing_fp16_s1688cudnn",
                "biggest_activity_avg_us": 404.16,
                "biggest_gpu_activity_avg_us": 404.16,
            }
        ),
        encoding="utf-8",
    )
    _cell(root, "old-platform", 4, run_extra={})  # a run.json from before issue 4
    write_summary(find_cells(root), root / "summary.csv", prices={"cloud-t4": 0.35}, currency="EUR")
    header, rows = _read_csv(root / "summary.csv")
    for column in (
        "wall_time_s",
        "user_time_s",
        "system_time_s",
        "cpu_percent",
        "max_rss_kb",
        "gpu_name",
        "gpu_peak_memory_mib",
        "gpu_mean_utilization_percent",
        "gpu_energy_j",
        "gpu_mean_power_w",
        "biggest_activity_avg_us",
        "biggest_activity_name",
        "activity_kind",
        "biggest_gpu_activity_avg_us",
        "cost",
        "currency",
    ):
        assert column in header and column in COLUMNS, column
    gpu, old = (next(r for r in rows if r["platform"] == p) for p in ("cloud-t4", "old-platform"))
    assert gpu["user_time_s"] == "6100.5" and gpu["max_rss_kb"] == "4446340"
    assert gpu["gpu_name"] == "Tesla T4" and gpu["gpu_energy_method"] == "nvml_energy_counter"
    assert gpu["biggest_gpu_activity_avg_us"] == "404.16"
    assert float(gpu["cost"]) == pytest.approx(7200 / 3600 * 0.35) and gpu["currency"] == "EUR"
    assert gpu["git_commit"] == "a" * 40
    for column in ("user_time_s", "gpu_name", "biggest_gpu_activity_avg_us", "cost", "currency"):
        assert old[column] == "NA", column
    described = json.loads((root / "summary.columns.json").read_text(encoding="utf-8"))
    assert "µs" in described["biggest_gpu_activity_avg_us"]


def test_broken_profile_summary_is_a_one_line_error(tmp_path: Path) -> None:
    root = tmp_path / "results"
    cell = _cell(root, "cloud-t4", 8, run_extra=GPU_RUN)
    broken = cell.parent / "profile_b8" / "summary.json"
    broken.parent.mkdir()
    broken.write_text("{", encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        write_summary(find_cells(root), root / "summary.csv")
    assert str(info.value).startswith(f"{broken}: ") and "\n" not in str(info.value)


# --------------------------------------------------------------------------- config


def test_profile_and_price_keys_have_defaults(repo_root: Path) -> None:
    config = yaml.safe_load((repo_root / "config" / "config.yaml").read_text(encoding="utf-8"))
    assert "profile" not in config and "gpu_hour_price" not in config
    validate_config(config)
    assert config["profile"] == {"warmup_steps": 3, "steps": 5}
    assert config["gpu_hour_price"] == {} and config["currency"] == "USD"
    assert ProfileSettings.from_dict(config["profile"]) == ProfileSettings()


def test_bad_price_is_a_one_line_error_naming_the_key(tmp_path: Path, repo_root: Path) -> None:
    text = (repo_root / "config" / "demo.yaml").read_text(encoding="utf-8")
    path = tmp_path / "bad.yaml"
    path.write_text(text + "gpu_hour_price:\n  cloud-t4: -1\n", encoding="utf-8")
    with pytest.raises(DetbenchError, match=r"key gpu_hour_price\.cloud-t4: "):
        load_config_file(path)


# --------------------------------------------------------------------------- the workflow


def test_study_plans_one_profile_job_per_model_and_batch(
    snakemake: Callable[..., Any], workflow_copy: Path
) -> None:
    run = snakemake(workflow_copy, "-n", "--configfile", "config/config.yaml")
    assert run.returncode == 0, run.describe()
    assert run.job_stats()["profile"] == 8, run.describe()
    for model in ("yolov3", "yolov3-tiny"):
        for batch in (4, 8, 16, 32):
            assert f"/{model}/profile_b{batch}/kernels.csv" in run.output


@pytest.mark.slow
def test_profile_rule_runs_on_the_tiny_study(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path
) -> None:
    config = workflow_copy / "tiny-profile.yaml"
    text = tiny_config.read_text(encoding="utf-8")
    config.write_text(text + "\nprofile: {warmup_steps: 1, steps: 2}\n", encoding="utf-8")
    folder = workflow_copy / "results" / "test-cpu" / "yolov3-tiny" / "profile_b4"
    target = folder.relative_to(workflow_copy) / "summary.json"
    run = snakemake(workflow_copy, "-c2", target, "--configfile", config)
    assert run.returncode == 0, run.describe()
    summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert summary["activity_kind"] == CPU_ACTIVITY and summary["steps"] == 2
    assert summary["provenance"]["platform"] == "test-cpu"
    assert summary["provenance"]["config_hashed"] == "profile job config"
    _, rows = _read_csv(folder / "kernels.csv")
    assert rows
    assert (folder / "trace.json.gz").stat().st_size > 0
    assert (folder / "logs" / "profile.benchmark.tsv").exists()
