"""The job a train job runs in: what it asked for and how long it waited, for run.json.

On Slurm (``SLURM_JOB_ID`` set) the record comes from ``scontrol show job`` inside the job,
which works without Slurm accounting; ``sacct`` is read only where scontrol no longer knows the
job and accounting exists. Queue wait there is StartTime - SubmitTime.

Elsewhere (the local profile, Colab, a workstation) there is no queue: the wait is the time
from the Snakemake run's start (the main Snakemake process sets :data:`RUN_START_ENV` while it
parses the workflow; its jobs inherit it) to the train job's start, and is labelled as such.
The request is then what Snakemake gave the job (threads, mem_mb, gpu, runtime); without a
mem_mb, the machine's memory, which such a job may take whole.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

from detbench.cluster.preflight import command_output
from detbench.errors import DetbenchError

# Seconds since the epoch at which the Snakemake run started (set once, by the main process).
RUN_START_ENV = "DETBENCH_RUN_START"

SLURM_WAIT = "slurm: StartTime - SubmitTime of the Slurm job"
LOCAL_WAIT = "local: from the Snakemake run's start to the train job's start (no scheduler)"


@dataclasses.dataclass(frozen=True)
class JobRecord:
    """What one train job asked for and when it waited and started (times: seconds since the
    epoch; None where unknown)."""

    scheduler: str  # "slurm" or "local"
    source: str  # where the figures come from: scontrol, sacct, snakemake
    job_id: str | None = None
    partition: str | None = None
    nodes: str | None = None
    gpu_type: str | None = None
    requested_cpus: int | None = None
    requested_mem_mb: int | None = None
    requested_gpus: int | None = None
    time_limit_min: float | None = None
    submit_time: float | None = None
    eligible_time: float | None = None
    start_time: float | None = None

    @property
    def queue_wait_s(self) -> float | None:
        if self.submit_time is None or self.start_time is None:
            return None
        return max(0.0, self.start_time - self.submit_time)

    @property
    def queue_wait_kind(self) -> str:
        return SLURM_WAIT if self.scheduler == "slurm" else LOCAL_WAIT

    def to_record(self) -> dict[str, Any]:
        return {
            **dataclasses.asdict(self),
            "queue_wait_s": self.queue_wait_s,
            "queue_wait_kind": self.queue_wait_kind,
        }


# --------------------------------------------------------------------------- Slurm


def parse_scontrol(text: str) -> dict[str, str]:
    """`scontrol --oneliner show job` as Key=Value pairs (a value ends at the next blank)."""
    return dict(re.findall(r"(\w[\w/:]*)=(\S*)", text))


def parse_slurm_time(text: str | None) -> float | None:
    """Slurm's local ISO time (2026-12-04T16:30:00) in seconds since the epoch; None for
    Unknown, None or an empty field."""
    if not text or text in ("Unknown", "None", "N/A"):
        return None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def parse_time_limit(text: str | None) -> float | None:
    """Slurm's [days-]hours:minutes:seconds (or minutes:seconds, or minutes) in minutes; None
    for UNLIMITED or an unknown form."""
    if not text or not re.fullmatch(r"(\d+-)?\d+(:\d+){0,2}", text):
        return None
    days, _, clock = text.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    if len(parts) == 1:
        return float(parts[0]) + int(days or 0) * 1440
    if len(parts) == 2:
        parts.insert(0, 0)
    hours, minutes, seconds = parts
    return int(days or 0) * 1440 + hours * 60 + minutes + seconds / 60


def parse_mem_mb(text: str | None) -> int | None:
    """A Slurm memory figure (1000M, 16G, 1T, 500K) in MB."""
    match = re.fullmatch(r"([\d.]+)([KMGT]?)", text or "")
    if not match:
        return None
    scale = {"K": 1 / 1024, "": 1, "M": 1, "G": 1024, "T": 1024**2}[match.group(2)]
    return int(float(match.group(1)) * scale)


def parse_tres(text: str | None) -> dict[str, str]:
    """A TRES list (cpu=1,mem=1000M,node=1,gres/gpu:p40=1) as name -> value."""
    pairs = (item.partition("=") for item in (text or "").split(",") if "=" in item)
    return {name: value for name, _, value in pairs}


def gpu_request(tres: Mapping[str, str], per_job: str | None) -> tuple[int | None, str | None]:
    """(GPUs, GPU type) of a job from its TRES (gres/gpu=1, gres/gpu:p40=1) and its TresPerJob
    (gres:gpu:p40:1), which names the type where TRES does not."""
    count, kind = None, None
    for name, value in tres.items():
        if name == "gres/gpu":
            count = int(value)
        elif name.startswith("gres/gpu:"):
            kind = name.split(":", 1)[1]
            count = count if count is not None else int(value)
    if per_job and per_job != "N/A":
        fields = per_job.split(",")[0].removeprefix("gres:").removeprefix("gres/").split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            count = count if count is not None else int(fields[-1])
            kind = kind or (fields[1] if len(fields) == 3 else None)
    return count, kind


def slurm_record_from_scontrol(fields: Mapping[str, str]) -> JobRecord:
    """A JobRecord from `scontrol show job`'s fields."""
    tres = parse_tres(fields.get("ReqTRES") or fields.get("TRES"))
    alloc = parse_tres(fields.get("AllocTRES") or fields.get("TRES"))
    gpus, gpu_type = gpu_request({**tres, **alloc}, fields.get("TresPerJob"))
    cpus = fields.get("NumCPUs")
    memory = alloc.get("mem") or tres.get("mem") or fields.get("MinMemoryNode")
    return JobRecord(
        scheduler="slurm",
        source="scontrol",
        job_id=fields.get("JobId"),
        partition=fields.get("Partition"),
        nodes=fields.get("NodeList"),
        gpu_type=gpu_type,
        requested_cpus=int(cpus) if cpus and cpus.isdigit() else None,
        requested_mem_mb=parse_mem_mb(memory),
        requested_gpus=gpus if gpus is not None else 0,
        time_limit_min=parse_time_limit(fields.get("TimeLimit")),
        submit_time=parse_slurm_time(fields.get("SubmitTime")),
        eligible_time=parse_slurm_time(fields.get("EligibleTime")),
        start_time=parse_slurm_time(fields.get("StartTime")),
    )


# sacct's fields, in this order (-P: "|"-separated, -X: the allocation only, no steps).
SACCT_FIELDS = ("JobID", "Partition", "NodeList", "AllocTRES", "ReqTRES", "Timelimit")
SACCT_FIELDS += ("Submit", "Eligible", "Start")


def slurm_record_from_sacct(text: str) -> JobRecord | None:
    """A JobRecord from `sacct -X -n -P -o SACCT_FIELDS` (the first line), or None."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        return None
    values = dict(zip(SACCT_FIELDS, lines[0].split("|"), strict=False))
    alloc, requested = parse_tres(values.get("AllocTRES")), parse_tres(values.get("ReqTRES"))
    gpus, gpu_type = gpu_request({**requested, **alloc}, None)
    cpus = alloc.get("cpu") or requested.get("cpu")
    return JobRecord(
        scheduler="slurm",
        source="sacct",
        job_id=values.get("JobID"),
        partition=values.get("Partition"),
        nodes=values.get("NodeList"),
        gpu_type=gpu_type,
        requested_cpus=int(cpus) if cpus and cpus.isdigit() else None,
        requested_mem_mb=parse_mem_mb(alloc.get("mem") or requested.get("mem")),
        requested_gpus=gpus if gpus is not None else 0,
        time_limit_min=parse_time_limit(values.get("Timelimit")),
        submit_time=parse_slurm_time(values.get("Submit")),
        eligible_time=parse_slurm_time(values.get("Eligible")),
        start_time=parse_slurm_time(values.get("Start")),
    )


def slurm_job_record(job_id: str, run: Callable[[list[str]], str] = command_output) -> JobRecord:
    """The Slurm job ``job_id``'s record: scontrol first (no accounting needed), sacct where
    scontrol fails and accounting answers."""
    try:
        return slurm_record_from_scontrol(
            parse_scontrol(run(["scontrol", "--oneliner", "show", "job", job_id]))
        )
    except DetbenchError as scontrol_error:
        try:
            text = run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(SACCT_FIELDS)])
        except DetbenchError:
            raise scontrol_error from None
        record = slurm_record_from_sacct(text)
        if record is None:
            raise scontrol_error from None
        return record


# --------------------------------------------------------------------------- local


def local_job_record(
    requested: Mapping[str, Any], start_time: float, run_start: float | None
) -> JobRecord:
    """A job without a scheduler: ``requested`` is what Snakemake gave it (cpus, mem_mb, gpus,
    runtime in minutes), ``run_start`` the Snakemake run's start (its submission, as it were)."""

    def number(name: str) -> Any:
        value = requested.get(name)
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None

    return JobRecord(
        scheduler="local",
        source="snakemake",
        requested_cpus=number("cpus"),
        requested_mem_mb=number("mem_mb"),
        requested_gpus=number("gpus"),
        time_limit_min=number("runtime"),
        submit_time=run_start,
        eligible_time=run_start,
        start_time=start_time,
    )


def machine_memory_mb() -> int | None:
    """The machine's physical memory (MB): a job without a scheduler may use all of it."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20)
    except (ValueError, OSError, AttributeError):
        return None


def run_start_from_env(environ: Mapping[str, str] | None = None) -> float | None:
    """The Snakemake run's start (RUN_START_ENV), or None outside a Snakemake run."""
    text = (os.environ if environ is None else environ).get(RUN_START_ENV)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def current_job_record(
    requested: Mapping[str, Any],
    process_start: float,
    environ: Mapping[str, str] | None = None,
    run: Callable[[list[str]], str] = command_output,
) -> dict[str, Any]:
    """The record of the job this process runs in, for run.json's "job" entry. A Slurm job whose
    scontrol and sacct both fail is recorded as local with the failure named."""
    environ = os.environ if environ is None else environ
    job_id = environ.get("SLURM_JOB_ID")
    if job_id:
        try:
            return slurm_job_record(job_id, run).to_record()
        except DetbenchError as error:
            record = local_job_record(requested, process_start, run_start_from_env(environ))
            return {**record.to_record(), "job_id": job_id, "slurm_error": str(error)}
    return local_job_record(requested, process_start, run_start_from_env(environ)).to_record()
