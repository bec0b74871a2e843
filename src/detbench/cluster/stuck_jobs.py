"""The stuck-job watcher: during a run, a job of this workflow pending for a reason that cannot
clear on its own is reported and cancelled instead of waited on."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from pathlib import Path

from detbench.cluster.preflight import SINFO_FORMAT, command_output, parse_sinfo
from detbench.errors import DetbenchError

# squeue reasons a pending job never leaves without someone changing the job or the cluster.
NEVER_CLEARS = {
    "PartitionConfig": "no node of the partition has that many CPUs, that much memory or GPUs",
    "PartitionNodeLimit": "more nodes than the partition allows",
    "PartitionTimeLimit": "a wall time above the partition's MaxTime",
    "BadConstraints": "constraints no node meets",
    "InvalidAccount": "an account that does not exist or is not yours",
    "InvalidQOS": "a QOS that does not exist or is not yours",
}
# Reasons that clear once the partition is up again: final only while it is down.
WHILE_DOWN = ("ReqNodeNotAvail", "PartitionDown", "PartitionInactive", "Nodes_required")



@dataclasses.dataclass(frozen=True)
class StuckJob:
    """A pending job of this workflow that cannot start."""

    job_id: str
    comment: str  # the plugin's rule_<rule>_wildcards_<values>
    partition: str
    reason: str
    why: str

    def describe(self) -> str:
        return (
            f"Slurm job {self.job_id} ({self.comment}) can never start: pending for "
            f"{self.reason} ({self.why}) in partition {self.partition}; cancelled"
        )


# squeue: job id, comment, reason, partition, working directory.
SQUEUE_FORMAT = "%i|%k|%r|%P|%Z"


def stuck_jobs(squeue: str, workdir: Path, down_partitions: set[str]) -> list[StuckJob]:
    """Jobs of the workflow in ``workdir`` in `squeue --states=PENDING --format=SQUEUE_FORMAT`
    output that wait for something that will not come."""
    stuck = []
    for line in squeue.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 5:
            continue
        job_id, comment, reason, partition, job_dir = fields
        if not comment.startswith("rule_") or Path(job_dir) != workdir:
            continue  # another workflow's or someone else's job
        why = _why_never(reason, partition, down_partitions)
        if why:
            stuck.append(StuckJob(job_id, comment, partition, reason, why))
    return stuck


def _why_never(reason: str, partition: str, down_partitions: set[str]) -> str | None:
    if reason in NEVER_CLEARS:
        return NEVER_CLEARS[reason]
    if reason.startswith(WHILE_DOWN) and partition in down_partitions:
        return "the partition is down"
    return None


def cancel_stuck_jobs(
    workdir: Path,
    report: Callable[[str], None],
    run: Callable[[list[str]], str] | None = None,
) -> list[StuckJob]:
    """Report and scancel this workflow's jobs that can never start; Snakemake then sees them
    fail (with --retries, resubmits them and they are cancelled again) instead of waiting."""
    run = run or command_output
    nodes = parse_sinfo(run(["sinfo", "--noheader", "--Node", f"--format={SINFO_FORMAT}"]))
    down = {node.partition for node in nodes if not node.partition_up}
    pending = run(["squeue", "--me", "--noheader", "--states=PENDING", f"--format={SQUEUE_FORMAT}"])
    stuck = stuck_jobs(pending, workdir.resolve(), down)
    for job in stuck:
        run(["scancel", job.job_id])
        report(job.describe())
    return stuck


def watch_stuck_jobs(
    workdir: Path, report: Callable[[str], None], *, interval_s: float = 30
) -> threading.Event:
    """Look for stuck jobs every ``interval_s`` seconds in a background thread, for as long as
    the process lives; set the returned event to stop earlier."""
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(interval_s):
            try:
                cancel_stuck_jobs(workdir, report)
            except DetbenchError as error:
                report(f"cannot look for Slurm jobs that never start: {error}")

    threading.Thread(target=watch, name="detbench-stuck-jobs", daemon=True).start()
    return stop
