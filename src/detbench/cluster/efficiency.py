"""What a train job used of what it was given, and what a platform's jobs waited and held.

Per cell (from run.json's "job", "resources" and "gpu" entries):

- CPU efficiency = (user + system CPU seconds) / (allocated CPUs x wall seconds), all segments;
- memory efficiency = peak summed resident set of the job's processes / requested memory;
- GPU utilisation = NVML's mean utilisation; GPU memory = peak memory used / the GPU's memory;
- time limit used = the train job's elapsed time in its (last) job / that job's time limit.

Per platform (from the summary rows): makespan (first submission to the last train job's end),
total queue wait, GPU-hours allocated (GPUs x the train job's elapsed time) against GPU-hours
busy (allocated x mean utilisation).

Also the summary's columns for these, :func:`summary_columns` and :data:`COLUMNS`.
Standard library only.
"""

from __future__ import annotations

import dataclasses
import datetime
import statistics
from collections.abc import Iterable, Mapping
from typing import Any

# Summary column -> what it holds.
COLUMNS: dict[str, str] = {
    "job_scheduler": "slurm, or local (no scheduler: the local profile, Colab, a workstation)",
    "slurm_job_id": "Slurm job id of the cell's train job (its last segment); NA locally",
    "partition": "Slurm partition the train job ran in; NA locally",
    "node_list": "node(s) the train job ran on, as Slurm names them; NA locally",
    "gpu_type": "GPU type the job asked Slurm for (--gpus=<type>:N); NA where it named none",
    "requested_cpus": "CPUs allocated to the train job (Slurm NumCPUs; locally its threads)",
    "requested_mem_mb": (
        "memory requested (MB): Slurm's allocation; locally Snakemake's mem_mb, or without one "
        "the machine's memory"
    ),
    "requested_gpus": "GPUs requested by the train job (Slurm TRES; locally the gpu resource)",
    "time_limit_min": (
        "wall-time limit of the train job's Slurm job (min); locally the runtime a scheduler "
        "would be asked for (nothing enforces it)"
    ),
    "submit_time": "when the train job was submitted (UTC; locally: the Snakemake run's start)",
    "start_time": "when the train job (its last segment) started (UTC)",
    "end_time": "when the train job finished training and wrote run.json (UTC)",
    "queue_wait_s": "seconds from submit_time to start_time; how, in queue_wait_kind",
    "queue_wait_kind": (
        "slurm: StartTime - SubmitTime; local: from the Snakemake run's start to the train "
        "job's start (waiting for other jobs of the run, not for a scheduler)"
    ),
    "cpu_efficiency": (
        "(user + system CPU s) / (requested_cpus x wall_time_s), all segments (0-1)"
    ),
    "mem_efficiency": "max_tree_rss_kb / requested_mem_mb (0-1; > 1: used more than asked)",
    "gpu_memory_fraction": "gpu_peak_memory_mib / the GPU's total memory (0-1); NA on a CPU",
    "time_limit_used": (
        "the train job's elapsed time in its job (end_time - start_time) / time_limit_min"
    ),
}


def _iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_iso(text: Any) -> float | None:
    """A summary time column back in seconds since the epoch (None for NA)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _ratio(numerator: Any, denominator: Any) -> float | None:
    if not isinstance(numerator, int | float) or not isinstance(denominator, int | float):
        return None
    return numerator / denominator if denominator > 0 else None


def cell_efficiency(run: Mapping[str, Any]) -> dict[str, float | None]:
    """The four efficiencies of one run record (None where a figure is missing)."""
    job = run.get("job") or {}
    resources = run.get("resources") or {}
    gpu = run.get("gpu") or {}
    wall = resources.get("wall_time_s")
    cpu_seconds = None
    if resources.get("user_time_s") is not None and resources.get("system_time_s") is not None:
        cpu_seconds = resources["user_time_s"] + resources["system_time_s"]
    cpus = job.get("requested_cpus")
    allocated = cpus * wall if isinstance(cpus, int | float) and wall is not None else None
    tree_kb = resources.get("max_tree_rss_kb")
    elapsed = None
    if job.get("end_time") is not None and job.get("start_time") is not None:
        elapsed = job["end_time"] - job["start_time"]
    limit = job.get("time_limit_min")
    return {
        "cpu_efficiency": _ratio(cpu_seconds, allocated),
        "mem_efficiency": _ratio(
            tree_kb / 1024 if tree_kb is not None else None, job.get("requested_mem_mb")
        ),
        "gpu_memory_fraction": _ratio(gpu.get("peak_memory_used_mib"), gpu.get("memory_total_mib")),
        "time_limit_used": _ratio(elapsed, limit * 60 if limit is not None else None),
    }


def summary_columns(run: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's job, waiting and efficiency columns of one run record (NA for a record
    without a "job" entry, written before there was one)."""
    job = run.get("job") or {}
    return {
        "job_scheduler": job.get("scheduler"),
        "slurm_job_id": job.get("job_id") if job.get("scheduler") == "slurm" else None,
        "partition": job.get("partition"),
        "node_list": job.get("nodes"),
        "gpu_type": job.get("gpu_type"),
        "requested_cpus": job.get("requested_cpus"),
        "requested_mem_mb": job.get("requested_mem_mb"),
        "requested_gpus": _gpus(run, job),
        "time_limit_min": job.get("time_limit_min"),
        "submit_time": _iso(job.get("submit_time")),
        "start_time": _iso(job.get("start_time")),
        "end_time": _iso(job.get("end_time")),
        "queue_wait_s": job.get("queue_wait_s"),
        "queue_wait_kind": job.get("queue_wait_kind"),
        **cell_efficiency(run),
    }


def _gpus(run: Mapping[str, Any], job: Mapping[str, Any]) -> Any:
    """GPUs of the job: none for a local job that trained on a CPU (the rules' gpu resource
    counts a GPU per rank, which a machine without one never gave)."""
    if job.get("scheduler") == "local" and str(run.get("device", "")).startswith("cpu"):
        return 0
    return job.get("requested_gpus")


@dataclasses.dataclass(frozen=True)
class PlatformTotals:
    """One platform's jobs together (cells with a job record only)."""

    platform: str
    cells: int
    makespan_s: float | None
    total_queue_wait_s: float | None
    median_queue_wait_s: float | None
    queue_wait_kind: str | None
    gpu_hours_allocated: float | None
    gpu_hours_busy: float | None

    @property
    def busy_share(self) -> float | None:
        return _ratio(self.gpu_hours_busy, self.gpu_hours_allocated)


def _number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number  # NaN: NA


def platform_totals(rows: Iterable[Mapping[str, Any]]) -> list[PlatformTotals]:
    """Per platform, in first-seen order, from summary rows (dicts or a CSV's strings)."""
    by_platform: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("job_scheduler") in (None, ""):
            continue
        by_platform.setdefault(str(row["platform"]), []).append(row)
    return [_totals(platform, members) for platform, members in by_platform.items()]


def _totals(platform: str, rows: list[Mapping[str, Any]]) -> PlatformTotals:
    submits = [t for t in (parse_iso(row.get("submit_time")) for row in rows) if t is not None]
    ends = [t for t in (parse_iso(row.get("end_time")) for row in rows) if t is not None]
    waits = [w for w in (_number(row.get("queue_wait_s")) for row in rows) if w is not None]
    allocated, busy = 0.0, 0.0
    any_gpu, all_busy = False, True
    for row in rows:
        start, end = parse_iso(row.get("start_time")), parse_iso(row.get("end_time"))
        gpus = _number(row.get("requested_gpus")) or 0.0
        if start is None or end is None or not gpus:
            continue
        any_gpu = True
        hours = gpus * (end - start) / 3600
        allocated += hours
        utilisation = _number(row.get("gpu_mean_utilization_percent"))
        if utilisation is None:
            all_busy = False
        else:
            busy += hours * utilisation / 100
    kinds = {str(row.get("queue_wait_kind")) for row in rows if row.get("queue_wait_kind")}
    return PlatformTotals(
        platform=platform,
        cells=len(rows),
        makespan_s=max(ends) - min(submits) if submits and ends else None,
        total_queue_wait_s=sum(waits) if waits else None,
        median_queue_wait_s=statistics.median(waits) if waits else None,
        queue_wait_kind="; ".join(sorted(kinds)) or None,
        gpu_hours_allocated=allocated if any_gpu else 0.0,
        gpu_hours_busy=busy if any_gpu and all_busy else (0.0 if not any_gpu else None),
    )
