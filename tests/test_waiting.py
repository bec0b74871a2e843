"""Waiting and allocation: the job record of a train job (Slurm's scontrol or sacct, or the
local run's start), its efficiency, the platform totals and the summary's columns."""

from __future__ import annotations

import csv
import datetime
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from detbench.cluster import efficiency
from detbench.cluster.job_record import (
    LOCAL_WAIT,
    RUN_START_ENV,
    SLURM_WAIT,
    current_job_record,
    parse_scontrol,
    parse_time_limit,
    slurm_record_from_sacct,
)
from detbench.errors import DetbenchError
from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
from detbench.training import target
from detbench.training.train import InterimEvaluation, TrainOutputs, train

# `scontrol --oneliner show job` of a running group job on Slurm 22.05 (one line, shortened).
SCONTROL = (
    "JobId=42 JobName=1b2c UserId=root(0) GroupId=root(0) MCS_label=N/A Priority=1 Nice=0 "
    "Account=(null) QOS=(null) JobState=RUNNING Reason=None Dependency=(null) Requeue=1 "
    "Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:03 TimeLimit=00:26:00 "
    "TimeMin=N/A SubmitTime=2026-12-04T16:30:00 EligibleTime=2026-12-04T16:30:00 "
    "AccrueTime=2026-12-04T16:30:00 StartTime=2026-12-04T16:30:07 EndTime=2026-12-04T16:56:07 "
    "Deadline=N/A SuspendTime=None SecsPreSuspend=0 LastSchedEval=2026-12-04T16:30:07 "
    "Scheduler=Backfill Partition=detbench AllocNode:Sid=host:1 ReqNodeList=(null) "
    "ExcNodeList=(null) NodeList=node1 BatchHost=node1 NumNodes=1 NumCPUs=2 NumTasks=1 "
    "CPUs/Task=2 ReqB:S:C:T=0:0:*:* TRES=cpu=2,mem=1000M,node=1,billing=2,gres/gpu=1 "
    "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=* MinCPUsNode=2 MinMemoryNode=1000M "
    "MinTmpDiskNode=0 Features=(null) DelayBoot=00:00:00 OverSubscribe=OK Contiguous=0 "
    "Licenses=(null) Network=(null) Command=(null) WorkDir=/tmp/w Comment=rule_cell_x "
    "StdErr=/tmp/w/log StdIn=/dev/null StdOut=/tmp/w/log Power= TresPerJob=gres:gpu:p40:1"
)


def local_seconds(text: str) -> float:
    return datetime.datetime.fromisoformat(text).timestamp()


def test_slurm_job_record_from_scontrol_inside_the_job() -> None:
    asked: list[list[str]] = []

    def run(command: list[str]) -> str:
        asked.append(command)
        return SCONTROL

    record = current_job_record({"cpus": 9}, 0.0, environ={"SLURM_JOB_ID": "42"}, run=run)
    assert asked == [["scontrol", "--oneliner", "show", "job", "42"]]
    assert record["scheduler"] == "slurm" and record["source"] == "scontrol"
    assert (record["job_id"], record["partition"], record["nodes"]) == ("42", "detbench", "node1")
    assert (record["requested_cpus"], record["requested_mem_mb"]) == (2, 1000)
    assert (record["requested_gpus"], record["gpu_type"]) == (1, "p40")
    assert record["time_limit_min"] == 26
    assert record["submit_time"] == local_seconds("2026-12-04T16:30:00")
    assert record["queue_wait_s"] == 7
    assert record["queue_wait_kind"] == SLURM_WAIT


def test_sacct_is_asked_only_where_scontrol_fails() -> None:
    line = (
        "42|gpu|node1|billing=4,cpu=4,gres/gpu:p40=2,gres/gpu=2,mem=16G,node=1|"
        "cpu=4,mem=16G|1-00:00:00|2026-12-04T10:00:00|2026-12-04T10:00:05|2026-12-04T10:02:00\n"
    )

    def run(command: list[str]) -> str:
        if command[0] == "scontrol":
            raise DetbenchError("scontrol: failed (Invalid job id specified)")
        return line

    record = current_job_record({}, 0.0, environ={"SLURM_JOB_ID": "42"}, run=run)
    assert record["source"] == "sacct"
    assert (record["requested_cpus"], record["requested_mem_mb"]) == (4, 16384)
    assert (record["requested_gpus"], record["gpu_type"]) == (2, "p40")
    assert record["time_limit_min"] == 1440 and record["queue_wait_s"] == 120
    assert slurm_record_from_sacct("") is None


def test_without_scontrol_or_accounting_the_job_is_recorded_locally_with_the_failure() -> None:
    def run(command: list[str]) -> str:
        raise DetbenchError(f"{command[0]}: failed (accounting storage is disabled)")

    record = current_job_record(
        {"cpus": 2}, 100.0, environ={"SLURM_JOB_ID": "7", RUN_START_ENV: "90"}, run=run
    )
    assert record["job_id"] == "7" and "scontrol: failed" in record["slurm_error"]
    assert record["queue_wait_s"] == 10 and record["queue_wait_kind"] == LOCAL_WAIT


def test_local_job_waits_from_the_snakemake_run_start() -> None:
    requested = {"cpus": 2, "mem_mb": 1000, "gpus": 1, "runtime": 11}
    record = current_job_record(requested, 130.5, environ={RUN_START_ENV: "100"})
    assert record["scheduler"] == "local" and record["queue_wait_s"] == 30.5
    assert record["queue_wait_kind"] == LOCAL_WAIT
    assert (record["requested_cpus"], record["requested_mem_mb"]) == (2, 1000)
    assert (record["requested_gpus"], record["time_limit_min"]) == (1, 11)
    # Outside a Snakemake run there is nothing to wait from.
    assert current_job_record(requested, 130.5, environ={})["queue_wait_s"] is None


@pytest.mark.parametrize(
    ("text", "minutes"),
    [("00:26:00", 26), ("1-02:00:00", 1560), ("30", 30), ("05:30", 5.5), ("UNLIMITED", None)],
)
def test_time_limits(text: str, minutes: float | None) -> None:
    assert parse_time_limit(text) == minutes


def test_scontrol_pairs() -> None:
    fields = parse_scontrol(SCONTROL)
    assert fields["CPUs/Task"] == "2" and fields["AllocNode:Sid"] == "host:1"


def run_record(**job: Any) -> dict[str, Any]:
    base = {
        "scheduler": "slurm",
        "job_id": "42",
        "requested_cpus": 2,
        "requested_mem_mb": 1000,
        "requested_gpus": 1,
        "time_limit_min": 10,
        "submit_time": 1000.0,
        "start_time": 1010.0,
        "end_time": 1310.0,
        "queue_wait_s": 10.0,
        "queue_wait_kind": SLURM_WAIT,
    }
    return {
        "job": {**base, **job},
        "resources": {
            "wall_time_s": 300.0,
            "user_time_s": 200.0,
            "system_time_s": 100.0,
            "max_tree_rss_kb": 512 * 1024,
        },
        "gpu": {
            "peak_memory_used_mib": 6000,
            "memory_total_mib": 24000,
            "mean_utilization_percent": 40.0,
        },
    }


def test_cell_efficiency() -> None:
    columns = efficiency.summary_columns(run_record())
    assert columns["cpu_efficiency"] == pytest.approx(300 / (2 * 300))
    assert columns["mem_efficiency"] == pytest.approx(0.512)
    assert columns["gpu_memory_fraction"] == pytest.approx(0.25)
    assert columns["time_limit_used"] == pytest.approx(300 / 600)
    assert columns["submit_time"].endswith("Z") and columns["slurm_job_id"] == "42"
    assert efficiency.parse_iso(columns["end_time"]) == 1310.0
    assert set(columns) == set(efficiency.COLUMNS)
    # The rules ask for a GPU per rank; a local job that trained on a CPU was given none.
    local_cpu = {"device": "cpu", "job": {"scheduler": "local", "requested_gpus": 1}}
    assert efficiency.summary_columns(local_cpu)["requested_gpus"] == 0
    # A record written before jobs were recorded: every column NA.
    assert all(value is None for value in efficiency.summary_columns({}).values())


def test_platform_totals() -> None:
    rows = []
    for submit, start, end, util in ((0.0, 10.0, 3610.0, 50.0), (0.0, 3610.0, 7210.0, 100.0)):
        record = run_record(
            submit_time=submit, start_time=start, end_time=end, queue_wait_s=start - submit
        )
        record["gpu"]["mean_utilization_percent"] = util
        row = efficiency.summary_columns(record)
        rows.append({"platform": "p", **row, "gpu_mean_utilization_percent": str(util)})
    (totals,) = efficiency.platform_totals(rows)
    assert totals.cells == 2 and totals.makespan_s == 7210
    assert totals.total_queue_wait_s == 3620 and totals.median_queue_wait_s == 1810
    assert totals.gpu_hours_allocated == pytest.approx(2.0)
    assert totals.gpu_hours_busy == pytest.approx(1.5)
    assert totals.busy_share == pytest.approx(0.75)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


LOCAL_PROFILE = Path(__file__).resolve().parents[1] / "profiles" / "local"
WAITING_STUDY = """
platform: local-cpu
seed: 0
dataset:
  name: synthetic-waiting
  source: synthetic
  classes: [RBC, WBC, Platelets]
  train_split: train
  eval_split: test
  synthetic: {train: 8, val: 4, test: 4, width: 128, height: 96}
models:
  yolov3-tiny: {weights: scratch}
batch_sizes: [4]
epochs: [1, 2]
img_size: 64
target_map50: 0.0
gpu_hour_price: {local-cpu: 3.6}
train: {workers: 0}
evaluate: {batch_size: 4}
profile: {warmup_steps: 1, steps: 1}
"""


@pytest.fixture(scope="module")
def waiting_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two tiny cells run one after the other (one core), through the summary and the report's
    section "Waiting and allocation"; tests only read it."""
    from conftest import copy_workflow, run_snakemake

    workdir = copy_workflow(tmp_path_factory.mktemp("waiting") / "workflow")
    (workdir / "waiting.yaml").write_text(WAITING_STUDY, encoding="utf-8")
    targets = ("results/summary.csv", "results/report/waiting.html")
    run = run_snakemake(
        workdir, *targets, "--cores", "1", "--configfile", "waiting.yaml", timeout=1800
    )
    if run.returncode != 0:
        pytest.fail(f"the study failed:\n{run.describe()}")
    return workdir


@pytest.mark.slow
def test_every_cell_of_a_local_study_has_the_waiting_and_efficiency_columns(
    waiting_study: Path,
) -> None:
    rows = read_csv(waiting_study / "results" / "summary.csv")
    assert len(rows) == 2
    for row in rows:
        assert row["job_scheduler"] == "local"
        assert row["queue_wait_kind"] == LOCAL_WAIT
        assert float(row["queue_wait_s"]) >= 0
        assert int(row["requested_cpus"]) >= 1
        assert float(row["cpu_efficiency"]) > 0 and float(row["mem_efficiency"]) > 0
        assert float(row["time_limit_used"]) > 0
        assert row["gpu_memory_fraction"] == "NA"  # trained on a CPU
    # One core: the second cell waited for the first (and the data preparation before both).
    assert max(float(row["queue_wait_s"]) for row in rows) > 1
    folder = waiting_study / "results" / "local-cpu" / "yolov3-tiny" / "b4_e2"
    job = json.loads((folder / "run.json").read_text(encoding="utf-8"))["job"]
    assert job["end_time"] > job["start_time"] >= job["submit_time"]


@pytest.mark.slow
def test_the_summary_has_time_and_cost_to_the_target(waiting_study: Path) -> None:
    for row in read_csv(waiting_study / "results" / "summary.csv"):
        folder = waiting_study / "results" / "local-cpu" / "yolov3-tiny" / f"b4_e{row['epochs']}"
        # target_map50 0 with no eval_interval_epochs: every epoch evaluated, the first reaches it
        assert row["target_reached"] == "yes"
        assert int(row["target_epoch"]) == first_row_at_or_above(folder / "history.csv", 0.0) == 1
        seconds = float(row["time_to_target_s"])
        # (the summary's figures have 6 significant digits)
        assert 0 < seconds <= (float(row["train_time_s"]) + float(row["interim_eval_s"])) * 1.0001
        assert float(row["cost_to_target"]) == pytest.approx(seconds / 1000, rel=1e-3)


@pytest.mark.slow
def test_the_waiting_section_renders_with_findings_that_carry_n(waiting_study: Path) -> None:
    page = (waiting_study / "results" / "report" / "waiting.html").read_text(encoding="utf-8")
    assert "<h1>Waiting and allocation</h1>" in page
    assert page.count("<table>") == 4
    assert "Local runs have no queue" in page and "local-cpu: median" in page
    assert "(n = 2)" in page
    assert "No cell here ran under Slurm" in page


@pytest.mark.slow
def test_detbench_resources_prints_a_profile_snakemake_accepts(
    waiting_study: Path, tmp_path: Path
) -> None:
    import subprocess
    import sys

    import yaml
    from conftest import run_snakemake

    printed = subprocess.run(
        [
            sys.executable,
            "-m",
            "detbench.cli",
            "resources",
            "--results",
            "results",
            "--profile",
            str(LOCAL_PROFILE),
        ],
        cwd=waiting_study,
        capture_output=True,
        text=True,
        check=False,
    )
    assert printed.returncode == 0, printed.stderr
    profile = yaml.safe_load(printed.stdout)
    assert set(profile["set-threads"]) == {"train", "evaluate", "profile"}
    assert profile["set-resources"]["train"]["mem_mb"] >= 100
    assert profile["set-resources"]["evaluate"]["gpu"] == 1  # the local profile's kept
    assert profile["config"]["platform"] == "cloud-t4"  # the profile's label kept
    assert profile["config"]["walltime"]["seconds_per_image"]["yolov3-tiny"] >= 0
    folder = tmp_path / "right-sized"
    folder.mkdir()
    (folder / "config.yaml").write_text(printed.stdout, encoding="utf-8")
    run = run_snakemake(
        waiting_study,
        "-n",
        "--profile",
        str(LOCAL_PROFILE),
        "--profile",
        str(folder),
        "--configfile",
        "waiting.yaml",
    )
    assert run.returncode == 0, run.describe()
    assert run.job_stats()["train"] == 2  # the profile's platform: cells of its own


# --------------------------------------------------------------------------- time to target


def test_time_to_target_is_the_first_row_at_or_above_it() -> None:
    history = [
        {"epoch": 1, "epoch_seconds": 10.0},
        {"epoch": 2, "epoch_seconds": 10.0, "eval_map50": 0.2, "eval_seconds": 1.0},
        {"epoch": 3, "epoch_seconds": 10.0},
        {
            "epoch": 4,
            "epoch_seconds": 10.0,
            "eval_map50": 0.5,
            "eval_seconds": 1.0,
            target.ENERGY_SO_FAR: 400.0,
        },
        {"epoch": 5, "epoch_seconds": 10.0, "eval_map50": 0.6, "eval_seconds": 1.0},
    ]
    reached = target.time_to_target(history, 0.5)
    assert (reached["reached"], reached["epoch"], reached["seconds"]) == (True, 4, 42.0)
    assert reached["gpu_energy_j"] == 400.0
    missed = target.time_to_target(history, 0.7)
    assert missed["reached"] is False and missed["status"] == "not reached"
    assert missed["best_map50"] == 0.6 and missed["epoch"] is None
    columns = target.summary_columns({"target": reached}, price_per_hour=3.6)
    assert columns["cost_to_target"] == pytest.approx(0.042)
    assert target.summary_columns({"target": missed}, 3.6)["target_reached"] == "no"


def first_row_at_or_above(history: Path, goal: float) -> int | None:
    for row in read_csv(history):
        if row["eval_map50"] != "" and float(row["eval_map50"]) >= goal:
            return int(row["epoch"])
    return None


@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize("goal", [0.0, 1.0])
def test_a_tiny_cell_records_when_it_reached_its_target(
    synthetic_manifest: Path, tmp_path: Path, goal: float
) -> None:
    settings = TrainSettings(
        "yolov3-tiny",
        batch=4,
        epochs=2,
        img_size=64,
        seed=0,
        hyp=TrainHyperparameters(workers=0, eval_interval_epochs=1),
    )
    interim = InterimEvaluation(split="val", settings=EvalSettings(), target_map50=goal)
    outputs = TrainOutputs.in_folder(tmp_path / "yolov3-tiny" / "b4_e2")
    train(settings, synthetic_manifest, outputs, threads=1, interim_evaluation=interim)

    record = json.loads(outputs.record.read_text(encoding="utf-8"))["target"]
    expected = first_row_at_or_above(outputs.history, goal)
    assert record["epoch"] == expected
    if goal == 0.0:  # any evaluation reaches it: the first epoch's
        assert record["reached"] is True and expected == 1 and record["seconds"] > 0
    else:  # mAP@0.5 of 1 after two epochs on random boxes: out of reach
        assert record["reached"] is False and record["status"] == "not reached"


# --------------------------------------------------------------------------- report section


def summary_row(platform: str, wait: float, scheduler: str = "slurm", **extra: Any) -> dict:
    record = run_record(
        scheduler=scheduler,
        queue_wait_s=wait,
        queue_wait_kind=SLURM_WAIT if scheduler == "slurm" else LOCAL_WAIT,
        submit_time=1000.0,
        start_time=1000.0 + wait,
        end_time=1300.0 + wait,
    )
    row = {"platform": platform, "model": "yolov3", "batch": 8, "epochs": 5}
    row |= efficiency.summary_columns(record) | {"gpu_mean_utilization_percent": 40.0}
    row |= {"max_tree_rss_kb": 512 * 1024, "wall_time_s": 300.0}
    return {key: "" if value is None else str(value) for key, value in {**row, **extra}.items()}


def test_the_waiting_section_states_the_2020_claims_with_n(tmp_path: Path) -> None:
    from detbench.report.waiting import write_waiting

    goal = {"target_map50": "0.5", "target_reached": "yes", "target_epoch": "3"}
    rows = [
        summary_row("baremetal-p40", w, time_to_target_s=str(t), **goal)
        for w, t in ((60, 10), (120, 12), (600, 11))
    ]
    rows += [summary_row("cloud-t4", w) for w in (5, 15)]
    rows += [
        summary_row("demo-cpu", 30, scheduler="local", target_map50="0.9", target_reached="no")
    ]
    summary = tmp_path / "summary.csv"
    with summary.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    document = write_waiting(summary, tmp_path, tmp_path / "w.md", tmp_path / "w.html")
    text = (tmp_path / "w.md").read_text(encoding="utf-8")
    assert (
        "on baremetal-p40 train jobs waited a median of 2.00 min in the Slurm queue (n = 3)" in text
    )
    assert "on cloud-t4 train jobs waited a median of 0.17 min in the Slurm queue (n = 2)" in text
    assert "shortest median queue wait was on cloud-t4 (0.17 min, n = 2)" in text
    assert "demo-cpu: median 0.50 min (n = 1)" in text and "Local runs have no queue" in text
    assert "used a median 0.50 of the CPU time allocated (n = 3)" in text
    assert "busy for 40% of the 0.250 GPU-hours" in text
    # Time to target: the mean and interval over the three repeats; the local cell missed.
    assert "| 3 of 3 | 3 | 11.0 [" in text and "(n = 3)" in text
    assert "| 0 of 1 | not reached | not reached |" in text
    html = (tmp_path / "w.html").read_text(encoding="utf-8")
    assert "<h1>Waiting and allocation</h1>" in html and "<table>" in html
    assert document.title == "Waiting and allocation"


# --------------------------------------------------------------------------- the study's setup


def test_the_study_starts_from_coco_as_the_2020_runs_did(
    snakemake: Callable[..., Any], workflow_copy: Path
) -> None:
    run = snakemake(workflow_copy, "-n", "--configfile", "config/config.yaml")
    assert run.returncode == 0, run.describe()
    stats = run.job_stats()
    assert stats["download_weights"] == 2 and stats["train"] == 32, run.describe()
    blocks = run.output.split("rule ")
    trains = [block for block in blocks if block.startswith("train:")]
    assert len(trains) == 32
    for name in ("yolov3.weights", "yolov3-tiny.weights"):
        using = [block for block in trains if f"results/weights/{name}" in block]
        assert len(using) == 16, name
    # The documented from-scratch variant downloads nothing.
    scratch = ("config/config.yaml", "config/scratch.yaml")
    run = snakemake(workflow_copy, "-n", "--configfile", *scratch)
    assert run.returncode == 0, run.describe()
    assert "download_weights" not in run.job_stats() and run.job_stats()["train"] == 32


def test_each_comparison_says_whether_the_setups_match() -> None:
    import pandas as pd

    from detbench.report.setups import setup_sentence

    frame = pd.DataFrame(
        [
            {"platform": "ours-coco", "dataset": "bccd", "img_size": 416, "weights": "coco"},
            {"platform": "ours-scratch", "dataset": "bccd", "img_size": 416, "weights": "scratch"},
            {
                "platform": "p40 (published 2020)",
                "dataset": "bccd",
                "img_size": 416,
                "weights": "pretrained yolov3.pt",
            },
        ]
    )
    assert setup_sentence(frame, "ours-coco", "p40 (published 2020)") == (
        "Setups match: both trained on bccd at 416 px from COCO-pretrained weights (like-for-like)."
    )
    differ = setup_sentence(frame, "ours-scratch", "p40 (published 2020)")
    assert differ.startswith("Setups differ: ours-scratch trained on bccd at 416 px from random")


# --------------------------------------------------------------------------- the cluster run


def test_one_refusal_names_every_rule_too_large_and_the_settings_that_fit_them_all() -> None:
    from detbench.cluster.preflight import Request, check_requests, parse_sinfo

    nodes = parse_sinfo("gpu*|n1|2|22000|gpu:1|up\n")
    requests = [
        Request("train", "gpu", 4, 1000, 1),
        Request("evaluate", "gpu", 2, 1000, 1),  # fits
        Request("profile", "gpu", 4, 30000, 1),
        Request("convert", "gpu", 1, 1000),
    ]
    with pytest.raises(DetbenchError) as error:
        check_requests(requests, nodes)
    message = str(error.value)
    assert "\n" not in message
    assert message.count("more than any node") == 2
    assert "rule train: asks" in message and "rule profile: asks" in message
    assert "rule evaluate" not in message
    assert "set-threads: {train: 2, profile: 2}" in message
    assert "set-resources: {profile: {mem_mb: 22000}}" in message


def test_a_dry_run_line_gives_a_cells_whole_wall_time() -> None:
    from detbench.cluster.preflight import Request, group_wall_times

    evaluate = Request("evaluate", "gpu", 4, 1000, 1, runtime_min=15)
    line = group_wall_times([11, 30, 12], evaluate)
    assert line is not None and "--time 26-45 min = train 11-30 min" in line
    assert "+ evaluate 15 min" in line
    assert group_wall_times([], evaluate) is None


def test_the_status_loop_sleeps_at_most_its_cap_and_ends_when_the_run_stops_waiting() -> None:
    import asyncio
    import threading
    import time

    from detbench.cluster.status_loop import prompt_status_loop

    class Loop:
        next_seconds_between_status_checks = 40
        wait = True

        async def sleep(self) -> None:
            await asyncio.sleep(self.next_seconds_between_status_checks)

    assert prompt_status_loop(Loop, max_interval_s=0.5, slice_s=0.05)
    started = time.monotonic()
    asyncio.run(Loop().sleep())
    assert time.monotonic() - started < 5  # capped at 0.5 s, not 40

    loop = Loop()
    loop.next_seconds_between_status_checks = 30
    stopper = threading.Timer(0.2, lambda: setattr(loop, "wait", False))
    stopper.start()
    started = time.monotonic()
    asyncio.run(prompt_and_sleep(loop, 60.0))
    assert time.monotonic() - started < 5  # a 30 s sleep left as soon as waiting ended


async def prompt_and_sleep(loop: Any, cap: float) -> None:
    from detbench.cluster.status_loop import prompt_status_loop

    prompt_status_loop(type(loop), max_interval_s=cap, slice_s=0.05)
    await loop.sleep()


def test_a_resumed_segment_restores_the_earlier_segments_log(tmp_path: Path) -> None:
    import logging

    from detbench.training.segment_log import keeping_segments, restore_segments
    from detbench.workflow.runner import configure_logging

    log, resume = tmp_path / "logs" / "train.log", tmp_path / "checkpoints"
    logger = logging.getLogger("detbench.test.segments")
    # Segment 1: logs epoch 1, then dies after its checkpoint.
    assert not restore_segments(log, resume)
    configure_logging(log, mode="a")
    with pytest.raises(SystemExit), keeping_segments(log, resume):
        logger.info("epoch 1 of segment 1")
        (resume / "epoch-00001.pt").write_bytes(b"x")
        raise SystemExit(143)
    log.unlink()  # Snakemake deletes a job's log before running it again
    # Segment 2 resumes: its log starts with segment 1's lines.
    assert restore_segments(log, resume)
    configure_logging(log, mode="a")
    with keeping_segments(log, resume):
        logger.info("epoch 2 of segment 2")
        (resume / "epoch-00001.pt").unlink()  # training removes its checkpoints when done
    text = log.read_text(encoding="utf-8")
    assert text.index("epoch 1 of segment 1") < text.index("epoch 2 of segment 2")
    assert not resume.exists()  # the kept copy goes with the checkpoints
    configure_logging(None)


def test_the_wall_time_model_takes_the_configs_constants() -> None:
    from types import SimpleNamespace

    from detbench.cluster.walltime import WALL_TIME, WallTimeModel, train_minutes

    fitted = WallTimeModel.from_config({"seconds_per_image": {"yolov3": 1.0}, "margin": 1.5})
    assert fitted.seconds_per_image == {"yolov3": 1.0, "yolov3-tiny": 0.015}
    assert fitted.seconds_per_step == WALL_TIME.seconds_per_step and fitted.margin == 1.5
    config = {
        "dataset": {
            "name": "x",
            "source": "synthetic",
            "train_split": "train",
            "synthetic": {"train": 100},
        },
        "img_size": 416,
        "walltime": {"seconds_per_image": {"yolov3": 6.0}, "startup_minutes": 1},
    }
    cell = SimpleNamespace(model="yolov3", batch=10, epochs=1)
    # 1 + 2 x (100 x 6 + 10 x 0.05) / 60 = 21.02 -> 22 minutes
    assert train_minutes(config, "nowhere", cell, 1) == 22


def test_right_sizing_fits_the_wall_time_model_and_adds_headroom() -> None:
    from detbench.cluster.rightsizing import CellTiming, JobUse, fit_wall_time, rule_requests

    # yolov3 at 416 px, 100 images: epoch = 100 x 0.2 + steps x 0.5 s, batches 10 and 25.
    timings = [
        CellTiming("yolov3", batch, 100, 416, 20 + 100 / batch * 0.5, outside_epochs_s=120)
        for batch in (10, 25)
    ]
    model = fit_wall_time(timings, headroom=0.5)
    assert model.seconds_per_step == pytest.approx(0.5)
    assert model.seconds_per_image["yolov3"] == pytest.approx(0.2)
    assert model.startup_minutes == pytest.approx(3.0)  # 120 s x 1.5
    assert model.margin == 1.5
    uses = {
        "train": [JobUse("train", 100, 150, 1000), JobUse("train", 200, 100, 1500)],
        "evaluate": [JobUse("evaluate", 30, 30, 333)],
    }
    train, evaluate = rule_requests(uses, headroom=0.5)
    assert (train.threads, train.mem_mb, train.runtime_min) == (3, 2300, 5)
    assert (evaluate.threads, evaluate.mem_mb, evaluate.runtime_min) == (2, 500, 1)
