"""profiles/slurm against a real single-node Slurm on 127.0.0.1 (tests/slurm_cluster.py).

A small study (tests/configs/slurm.yaml: yolov3-tiny, cells b4_e1 and b4_e20) runs through
`snakemake --profile profiles/slurm --profile tests/profiles/slurm-test results/summary.csv`,
the second profile naming the test cluster's partition and making status checks fast. The first
run has the b4_e20 train job cancelled (scancel) once it has written an epoch checkpoint: the
run reports that job failed and still finishes the other cell. The second run resumes the
cancelled cell from its checkpoint, finishes it and builds the summary. Along the way Slurm's
own records show what was submitted: one Slurm job per cell (its train and evaluate jobs, the
group "cell"), one for the profile, one per other rule job, and what each asked for: one GPU
for the cells and the profile, none for the rest. A third run retrains the b4_e1 cell
(--forcerun) and has its job cancelled without retries; the README's recovery command (the same
command again) gives a complete cell and a rebuilt summary.

What stops before anything is submitted: a request larger than the node, and a --config that
drops the profile's platform label. A job pending for a reason that never clears is cancelled.

Needs root and Debian's munge, slurmctld, slurmd and slurm-client; skipped without them.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from rank_kill import kill_rank_after_epoch
from slurm_cluster import SlurmBusy, SlurmCluster, running_slurm, skip_reason

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]

PLATFORM = "baremetal-p40"  # profiles/slurm's platform label
# A cell's Slurm job: the group "cell", its rules sorted.
CELL_JOB = ("benchmark_inference", "evaluate", "export_onnx", "train")
GPU_JOBS = (CELL_JOB, ("profile",))
# Every file of a complete cell (the outputs of train and evaluate).
CELL_FILES = ("weights.pt", "history.csv", "run.json", "gpu_samples.csv", "metrics.json")
CELL_FILES += ("detections.json",)
RUN_TIMEOUT = 480  # seconds per Snakemake run; a few minutes on 2 busy cores is usual


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory):
    reason = skip_reason()
    if reason:
        pytest.skip(f"no real Slurm here: {reason}")
    with contextlib.ExitStack() as stack:
        try:
            cluster = stack.enter_context(running_slurm(tmp_path_factory.mktemp("slurm")))
        except SlurmBusy as busy:
            pytest.skip(f"no Slurm of our own here: {busy}")
        yield cluster


def snakemake(workdir: Path, log: Path, *extra: str) -> subprocess.Popen:
    """The user's command with the test cluster's profile layered on, and ``extra`` options;
    output to `log`."""
    command = [
        # The plugin submits jobs that run this same interpreter's Snakemake (.venv's).
        sys.executable,
        "-m",
        "snakemake",
        # The summary and what it needs; the report's figures are other tests' business.
        "results/summary.csv",
        *extra,
        "--profile",
        str(REPO / "profiles" / "slurm"),
        "--profile",
        str(REPO / "tests" / "profiles" / "slurm-test"),
        "--configfile",
        str(REPO / "tests" / "configs" / "slurm.yaml"),
    ]
    with log.open("w") as out:
        return subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> tuple[int, str]:
    try:
        returncode = process.wait(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.terminate()  # Snakemake cancels its Slurm jobs on SIGTERM
        process.wait(timeout=60)
        pytest.fail(f"snakemake still running after {RUN_TIMEOUT} s:\n{tail(log)}")
    return returncode, log.read_text()


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_for(condition: Callable[[], bool], process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + RUN_TIMEOUT
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"snakemake ended (status {process.returncode}) first:\n{tail(log)}")
        if time.monotonic() > deadline:
            process.terminate()
            pytest.fail(f"waited {RUN_TIMEOUT} s in vain:\n{tail(log)}")
        time.sleep(0.2)


def rules_of(job: dict[str, str]) -> tuple[str, ...]:
    """The rules a Slurm job runs. The plugin's comment: rule_<rule>, or
    rule_<rule>_wildcards_<values joined by _>, or for a group job rule_<group>_<its rules
    joined by _> (sorted; read back by the cell's rule names, some of which hold a _)."""
    name = job["comment"].removeprefix("rule_").split("_wildcards_")[0]
    group, _, rules = name.partition("_")
    if group != "cell":
        return (name,)
    found = []
    while rules:
        rule = next((r for r in CELL_JOB if rules == r or rules.startswith(f"{r}_")), rules)
        found.append(rule)
        rules = rules[len(rule) + 1 :]
    return tuple(found)


def targets_cell(slurm: SlurmCluster, job: dict[str, str], epochs: int) -> bool:
    """Whether a cell's Slurm job is the cell with ``epochs`` epochs (a group job's comment
    names no wildcards; its script names the jobs it targets)."""
    return f"epochs={epochs}," in slurm.batch_script(job["id"])


def minutes(time_limit: str) -> int:
    """squeue's TimeLimit ([days-]hours:minutes:seconds or minutes:seconds) in minutes."""
    days, _, clock = time_limit.rpartition("-")
    parts = [int(part) for part in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    hours, mins, _seconds = parts
    return (int(days or 0) * 24 + hours) * 60 + mins


def runs(cluster: SlurmCluster) -> list[list[dict[str, str]]]:
    """The cluster's jobs grouped by Snakemake run (the job name), oldest run first."""
    by_run: dict[str, list[dict[str, str]]] = {}
    for job in sorted(cluster.jobs(), key=lambda job: int(job["id"])):
        by_run.setdefault(job["name"], []).append(job)
    return list(by_run.values())


def test_slurm_profile_runs_a_study_and_resumes_a_cancelled_train_job(
    slurm: SlurmCluster, tmp_path: Path, workflow_copier: Callable[[Path], Path]
) -> None:
    # Slurm jobs run in the copy as they would in a checkout on a cluster's shared file system.
    workdir = workflow_copier(tmp_path / "workflow")
    cells = workdir / "results" / PLATFORM / "yolov3-tiny"
    long_cell, short_cell = cells / "b4_e20", cells / "b4_e1"
    summary = workdir / "results" / "summary.csv"

    # --- Run 1: cancel the long train job after its first complete checkpoint.
    log1 = tmp_path / "run1.log"
    first = snakemake(workdir, log1)
    wait_for(lambda: any((long_cell / "checkpoints").glob("epoch-*.sha256")), first, log1)
    (train_job,) = [
        job
        for job in slurm.jobs()
        if rules_of(job) == CELL_JOB and job["state"] == "RUNNING"
        if targets_cell(slurm, job, 20)
    ]
    details = slurm.show_job(train_job["id"])
    subprocess.run(["scancel", train_job["id"]], check=True)
    returncode, output = finish(first, log1)

    assert returncode != 0, output
    # A group job's failure names the group, not the Slurm job (Snakemake's GroupJob.log_error).
    assert "Error in group cell" in output, tail(log1)
    assert "CANCELLED" in output, tail(log1)
    assert "Error in rule train" in output and "epochs=20" in output, tail(log1)
    assert not summary.exists()
    assert not (long_cell / "run.json").exists()
    assert list((long_cell / "checkpoints").glob("epoch-*.pt")), "the checkpoint must survive"
    # keep-going: the other cell went on to its metrics.
    assert (short_cell / "metrics.json").exists(), tail(log1)
    assert details["Requeue"] == "1"  # slurm-requeue: true

    # --- Run 2: the cancelled cell resumes from its checkpoint; the summary is built.
    short_weights_mtime = (short_cell / "weights.pt").stat().st_mtime_ns
    log2 = tmp_path / "run2.log"
    returncode, output = finish(snakemake(workdir, log2), log2)
    assert returncode == 0, tail(log2)
    assert summary.exists()
    assert len(summary.read_text().strip().splitlines()) == 1 + 2  # header + 2 cells

    record = json.loads((long_cell / "run.json").read_text())
    assert record["segments"] == 2, record
    assert record["epochs"] == 20
    train_log = (long_cell / "logs" / "train.log").read_text()
    assert "resuming" in train_log, train_log[-2000:]
    # Every segment's lines, in order: the cancelled one's first epoch, then the resumed rest.
    first_epoch, resumed_at = train_log.find("epoch 1/20 "), train_log.find("resuming")
    assert 0 <= first_epoch < resumed_at < train_log.find("epoch 20/20 "), train_log[-3000:]
    # The resume state goes once the weights are written.
    assert not list((long_cell / "checkpoints").glob("epoch-*")), "checkpoints left behind"
    assert json.loads((short_cell / "run.json").read_text())["segments"] == 1
    assert (short_cell / "weights.pt").stat().st_mtime_ns == short_weights_mtime

    # --- What Slurm was asked for, from its own records (no accounting needed).
    first_run, second_run = runs(slurm)
    # One Slurm job per cell, one for the profile, one for the conversion; downloads are local
    # rules (compute nodes often have no internet, the login node does); no summary yet.
    assert sorted(rules_of(job) for job in first_run) == sorted(
        [CELL_JOB, CELL_JOB, ("profile",), ("convert",)]
    ), first_run
    # The second run submitted only the cancelled cell, as one job, and the summary.
    assert sorted(rules_of(job) for job in second_run) == [("aggregate",), CELL_JOB], second_run
    (resumed,) = [job for job in second_run if rules_of(job) == CELL_JOB]
    assert targets_cell(slurm, resumed, 20)
    for job in first_run + second_run:
        # set-resources: one GPU for a cell's job (the group's maximum) and the profile's.
        assert job["gpus"] == ("gres:gpu:1" if rules_of(job) in GPU_JOBS else "N/A"), job
        # A cell asks for train_runtime's wall time plus its evaluation's (the group's sum).
        if rules_of(job) == CELL_JOB:
            assert minutes(job["time_limit"]) > 10 + 15, job
    cancelled = [job["id"] for job in first_run + second_run if job["state"] == "CANCELLED"]
    assert cancelled == [train_job["id"]]
    assert all(job["state"] == "COMPLETED" for job in second_run), second_run
    # The evaluate jobs copied their train job's evaluation (detbench.evaluation.final_evaluation).
    for cell in (long_cell, short_cell):
        assert "copied" in (cell / "logs" / "evaluate.log").read_text(), cell

    # --- Run 3: a forced retrain of b4_e1 cancelled without retries (the test profile's
    # --retries 0): the run fails and the cell is left without its training outputs.
    log3 = tmp_path / "run3.log"
    seen = {job["id"] for job in slurm.jobs()}
    relative = short_cell.relative_to(workdir)
    third = snakemake(workdir, log3, "--forcerun", f"{relative}/run.json")

    def retrain_started() -> list[dict[str, str]]:
        return [
            job
            for job in slurm.jobs()
            if job["id"] not in seen and rules_of(job) == CELL_JOB
            if job["state"] == "RUNNING" and targets_cell(slurm, job, 1)
        ]

    wait_for(lambda: bool(retrain_started()), third, log3)
    (retrain,) = retrain_started()
    subprocess.run(["scancel", retrain["id"]], check=True)
    returncode, output = finish(third, log3)
    assert returncode != 0 and "CANCELLED" in output, tail(log3)
    assert not (short_cell / "run.json").exists(), tail(log3)
    # Evaluate never ran in this job: the failure shows no evaluate.log (the earlier run's
    # said "copied") as if it had.
    assert f"Logfile {relative}/logs/evaluate.log:" not in output, tail(log3)

    # --- Run 4: the README's recovery command after a cancel without retries, the same
    # command again: the cell is complete and the summary is rebuilt from it.
    log4 = tmp_path / "run4.log"
    returncode, output = finish(snakemake(workdir, log4), log4)
    assert returncode == 0, tail(log4)
    for name in CELL_FILES:
        assert (short_cell / name).exists(), name
    assert len(summary.read_text().strip().splitlines()) == 1 + 2
    assert summary.stat().st_mtime >= (short_cell / "metrics.json").stat().st_mtime
    metrics, record = short_cell / "metrics.json", short_cell / "run.json"
    assert metrics.stat().st_mtime >= record.stat().st_mtime  # evaluated after retraining


def test_slurm_profile_stops_before_submitting_what_cannot_run(
    slurm: SlurmCluster, tmp_path: Path, workflow_copier: Callable[[Path], Path]
) -> None:
    workdir = workflow_copier(tmp_path / "workflow")
    seen = {job["id"] for job in slurm.jobs()}

    # Train and evaluate ask for 4 CPUs (their threads) once the test profile's max-threads
    # no longer caps them: the node has 2. Slurm would leave such a job PENDING forever.
    log = tmp_path / "too-large.log"
    started = time.monotonic()
    returncode, output = finish(snakemake(workdir, log, "--max-threads", "4"), log)
    assert returncode != 0
    assert (
        "detbench error: rule train: asks -p detbench --cpus-per-task=4 --mem 1000 --gpus=1, "
        f"more than any node of partition detbench has (largest node {slurm.node}: 2 CPUs"
    ) in output, tail(log)
    # One refusal names every rule that does not fit, and settings that fit them all.
    (refusal,) = [line for line in output.splitlines() if "detbench error: rule" in line]
    for rule in ("train", "evaluate", "profile"):
        assert f"rule {rule}: asks -p detbench --cpus-per-task=4" in refusal, refusal
    threads = refusal.split("set-threads: {", 1)[1].split("}", 1)[0]
    assert sorted(threads.split(", ")) == ["evaluate: 2", "profile: 2", "train: 2"], refusal
    # With those settings (docs/waiting-and-allocation.md) the same run passes the check.
    log = tmp_path / "fitted.log"
    fitted = ("--max-threads", "4", "--set-threads", "train=2", "evaluate=2", "profile=2")
    returncode, output = finish(snakemake(workdir, log, *fitted, "--dry-run"), log)
    assert returncode == 0, tail(log)
    assert "  train: -p detbench --cpus-per-task=2" in output, tail(log)
    assert time.monotonic() - started < 60  # fails fast: nothing was submitted

    # --config on the command line replaces the profile's config: block, and with it the
    # platform label; the run is refused with the fix, which keeps the label.
    log = tmp_path / "config.log"
    returncode, output = finish(snakemake(workdir, log, "--config", "seed=1"), log)
    assert returncode != 0
    assert (
        "sets platform: baremetal-p40 under config:, but --config seed=1 on the command line "
        "replaces that whole block (platform would be test-slurm); add platform=baremetal-p40"
    ) in output, tail(log)
    log = tmp_path / "config-fixed.log"
    fixed = ("--config", "seed=1", f"platform={PLATFORM}", "--dry-run")
    returncode, output = finish(snakemake(workdir, log, *fixed), log)
    assert returncode == 0, tail(log)
    assert f"results/{PLATFORM}/yolov3-tiny/b4_e1/run.json" in output
    assert "results/test-slurm/" not in output
    # The plan says what each job asks for, as the cluster will see it.
    assert (
        "  train: -p detbench --cpus-per-task=1 --mem 1000 --gpus=1  (partition detbench" in output
    )

    assert {job["id"] for job in slurm.jobs()} == seen, "nothing may have been submitted"
    assert not (workdir / "results").exists()


def test_a_job_that_can_never_start_is_reported_and_cancelled(
    slurm: SlurmCluster, tmp_path: Path
) -> None:
    from detbench.cluster.stuck_jobs import cancel_stuck_jobs

    # As the plugin submits (a rule_ comment, the workflow's folder), more CPUs than the node
    # has: Slurm accepts it and leaves it PENDING (PartitionConfig).
    request = ["--partition", slurm.partition, "--cpus-per-task=8"]
    plugin_like = ["--comment", "rule_train_wildcards_x", "-D", str(tmp_path)]
    submitted = subprocess.run(
        ["sbatch", "--parsable", *request, *plugin_like, "--wrap", "true"],
        capture_output=True,
        text=True,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]
    deadline = time.monotonic() + 60
    while slurm.show_job(job_id).get("Reason") != "PartitionConfig":
        assert time.monotonic() < deadline, slurm.show_job(job_id)
        time.sleep(0.5)
    reported: list[str] = []
    (stuck,) = cancel_stuck_jobs(tmp_path, reported.append)
    assert stuck.job_id == job_id
    assert reported == [
        f"Slurm job {job_id} (rule_train_wildcards_x) can never start: pending for "
        "PartitionConfig (no node of the partition has that many CPUs, that much memory or "
        f"GPUs) in partition {slurm.partition}; cancelled"
    ]
    deadline = time.monotonic() + 30
    while slurm.show_job(job_id).get("JobState") != "CANCELLED":
        assert time.monotonic() < deadline, slurm.show_job(job_id)
        time.sleep(0.5)


def _run_two_ranks(
    workdir: Path, cell: str, log: Path, env: dict[str, str] | None = None
) -> tuple[int, str]:
    """`snakemake <cell>/metrics.json` through the Slurm profile with train.ranks: 2."""
    ranks = workdir / "ranks.yaml"
    ranks.write_text("train:\n  ranks: 2\n", encoding="utf-8")
    command = [sys.executable, "-m", "snakemake", f"{cell}/metrics.json"]
    command += ["--profile", str(REPO / "profiles" / "slurm")]
    command += ["--profile", str(REPO / "tests" / "profiles" / "slurm-test")]
    command += ["--configfile", str(REPO / "tests" / "configs" / "slurm.yaml"), str(ranks)]
    with log.open("w") as out:
        environment = {**os.environ, **(env or {})}
        process = subprocess.Popen(
            command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, env=environment
        )
    return finish(process, log)


def test_a_cell_on_two_ranks_runs_as_one_job_of_two_tasks(
    slurm: SlurmCluster, tmp_path: Path, workflow_copier: Callable[[Path], Path]
) -> None:
    """train.ranks: 2 through the profile: one Slurm job of 2 tasks and 2 GPUs for the cell,
    in which the train job starts its ranks with srun (one task each)."""
    workdir = workflow_copier(tmp_path / "workflow")
    cell = f"results/{PLATFORM}/yolov3-tiny/b4_e1"
    seen = {job["id"] for job in slurm.jobs()}
    log = tmp_path / "ranks.log"
    returncode, _ = _run_two_ranks(workdir, cell, log)
    assert returncode == 0, tail(log)

    # Only metrics.json was asked for: the cell's job holds its train and evaluate rules.
    cell_jobs = [
        job
        for job in slurm.jobs()
        if job["id"] not in seen and rules_of(job) == ("evaluate", "train")
    ]
    assert len(cell_jobs) == 1, cell_jobs
    details = slurm.show_job(cell_jobs[0]["id"])
    assert details["NumTasks"] == "2", details
    assert cell_jobs[0]["gpus"] == "gres:gpu:2", cell_jobs[0]
    record = json.loads((workdir / cell / "run.json").read_text(encoding="utf-8"))
    assert record["world_size"] == 2
    assert [entry["rank"] for entry in record["ranks"]] == [0, 1]
    assert len({entry["pid"] for entry in record["ranks"]}) == 2
    train_log = (workdir / cell / "logs" / "train.log").read_text(encoding="utf-8")
    assert "starting 2 ranks: srun --overlap --ntasks=2" in train_log, train_log[-3000:]
    assert (workdir / cell / "metrics.json").exists()


def test_a_rank_killed_under_srun_fails_the_job_in_one_line_and_the_rerun_resumes(
    slurm: SlurmCluster, tmp_path: Path, workflow_copier: Callable[[Path], Path]
) -> None:
    """Rank 1 of a 2-task cell dies (SIGKILL) after epoch 2: srun ends the step, the job fails
    with one line naming the rank, and the same command again resumes from the checkpoint."""
    workdir = workflow_copier(tmp_path / "workflow")
    cell = f"results/{PLATFORM}/yolov3-tiny/b4_e20"
    log = tmp_path / "killed.log"
    returncode, _ = _run_two_ranks(workdir, cell, log, env=kill_rank_after_epoch(1, 2))
    assert returncode != 0, tail(log)
    train_log = (workdir / cell / "logs" / "train.log").read_text(encoding="utf-8")
    lines = [line for line in train_log.splitlines() if "training on 2 ranks (srun) failed" in line]
    assert lines, train_log[-3000:]
    assert "rank 1 " in lines[0] and "rerun to resume" in lines[0], lines
    assert list((workdir / cell / "checkpoints").glob("epoch-00002.pt"))

    returncode, _ = _run_two_ranks(workdir, cell, tmp_path / "rerun.log")
    assert returncode == 0, tail(tmp_path / "rerun.log")
    record = json.loads((workdir / cell / "run.json").read_text(encoding="utf-8"))
    assert record["segments"] == 2 and record["world_size"] == 2
    assert (workdir / cell / "metrics.json").exists()


def slurm_seconds(text: str) -> float:
    """A time of `scontrol show job` (the cluster's local time) in seconds since the epoch."""
    import datetime

    return datetime.datetime.fromisoformat(text).timestamp()


def test_a_held_cell_records_its_queue_wait_and_the_run_exits_with_its_last_job(
    slurm: SlurmCluster, tmp_path: Path, workflow_copier: Callable[[Path], Path]
) -> None:
    """One cell through the profile, its Slurm job held while pending (another job holds the
    node's CPUs meanwhile) and released after 5 s: run.json and the summary show that wait and
    the request the profile made; the run exits within 10 s of its last Slurm job's end."""
    workdir = workflow_copier(tmp_path / "workflow")
    cell = workdir / "results" / PLATFORM / "yolov3-tiny" / "b4_e1"
    seen = {job["id"] for job in slurm.jobs()}
    log = tmp_path / "held.log"
    one_cell = tmp_path / "one-cell.yaml"
    one_cell.write_text("epochs: [1]\n", encoding="utf-8")
    command = [sys.executable, "-m", "snakemake", "results/summary.csv"]
    command += ["--profile", str(REPO / "profiles" / "slurm")]
    command += ["--profile", str(REPO / "tests" / "profiles" / "slurm-test")]
    command += ["--configfile", str(REPO / "tests" / "configs" / "slurm.yaml"), str(one_cell)]
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)

    def new_jobs(rules: tuple[str, ...]) -> list[dict[str, str]]:
        return [j for j in slurm.jobs() if j["id"] not in seen and rules_of(j) == rules]

    # While the conversion runs, a job asking for every CPU of the node queues first: the
    # cell's job, submitted after the conversion, waits behind it.
    wait_for(lambda: bool(new_jobs(("convert",))), process, log)
    blocker = (
        subprocess.run(
            [
                "sbatch",
                "--parsable",
                "--partition",
                slurm.partition,
                "--cpus-per-task=2",
                "--mem=100",
                f"--output={tmp_path / 'blocker.out'}",
                "--wrap",
                "sleep 600",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .split(";")[0]
    )
    try:
        wait_for(lambda: bool(new_jobs(CELL_JOB)), process, log)
        (cell_job,) = new_jobs(CELL_JOB)
        assert cell_job["state"] == "PENDING", cell_job
        subprocess.run(["scontrol", "hold", cell_job["id"]], check=True)
    finally:
        subprocess.run(["scancel", blocker], check=True)
    time.sleep(5)
    subprocess.run(["scontrol", "release", cell_job["id"]], check=True)
    returncode, _ = finish(process, log)
    exited = time.time()
    assert returncode == 0, tail(log)

    details = slurm.show_job(cell_job["id"])
    record = json.loads((cell / "run.json").read_text(encoding="utf-8"))["job"]
    assert record["scheduler"] == "slurm" and record["source"] == "scontrol", record
    assert record["job_id"] == cell_job["id"] and record["partition"] == slurm.partition
    assert record["queue_wait_s"] >= 5, record
    assert record["queue_wait_s"] == (
        slurm_seconds(details["StartTime"]) - slurm_seconds(details["SubmitTime"])
    )
    # What the profiles asked for: 1 CPU (max-threads 1) and 1000 MB (the test profile).
    assert (record["requested_cpus"], record["requested_mem_mb"]) == (1, 1000), record
    assert record["requested_gpus"] == 1 and record["nodes"] == slurm.node
    (row,) = list(csv.DictReader((workdir / "results" / "summary.csv").open(encoding="utf-8")))
    assert float(row["queue_wait_s"]) >= 5 and row["queue_wait_kind"].startswith("slurm")
    assert (row["requested_cpus"], row["requested_mem_mb"]) == ("1", "1000"), row
    assert row["slurm_job_id"] == cell_job["id"]

    # The run ended within 10 s of the end of its last Slurm job (the summary's).
    ended = [
        slurm_seconds(slurm.show_job(job["id"])["EndTime"])
        for job in slurm.jobs()
        if job["id"] not in seen and job["id"] != blocker
    ]
    assert exited - max(ended) <= 10, (exited - max(ended), tail(log))
