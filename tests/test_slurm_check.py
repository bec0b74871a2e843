"""detbench.cluster.preflight and detbench.cluster.stuck_jobs offline: sinfo/squeue parsing, the
fit check, stuck jobs.

Against a real Slurm (sbatch, sinfo, squeue, scancel): tests/test_slurm.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from detbench.cluster.preflight import (
    Request,
    check_requests,
    describe_requests,
    parse_gres,
    parse_sinfo,
)
from detbench.cluster.stuck_jobs import cancel_stuck_jobs, stuck_jobs
from detbench.errors import DetbenchError

# Two partitions: gpu (default, a small and a large node) and cpu (down).
SINFO = """\
gpu*|n1|2|22000|gpu:1|up
gpu*|n2|32|192000|gpu:p40:4(S:0-1)|up
cpu|c1|64|256000|(null)|down
"""
TRAIN = Request("train", "gpu", cpus=4, mem_mb=16000, gpus=1)


def test_gres_counts_gpus_by_type_and_in_all() -> None:
    assert parse_gres("gpu:1") == {"": 1}
    assert parse_gres("gpu:p40:4(S:0-1)") == {"": 4, "p40": 4}
    assert parse_gres("gpu:p40:2,gpu:v100:1(S:0),shard:8") == {"": 3, "p40": 2, "v100": 1}
    assert parse_gres("(null)") == {}


def test_sinfo_nodes() -> None:
    small, large, cpu = parse_sinfo(SINFO)
    assert (small.name, small.partition, small.default, small.cpus, small.mem_mb) == (
        "n1",
        "gpu",
        True,
        2,
        22000,
    )
    assert large.gpus == {"": 4, "p40": 4}
    assert (cpu.default, cpu.partition_up, cpu.gpus) == (False, False, {})


def test_the_sbatch_request_as_the_plugin_writes_it() -> None:
    assert TRAIN.sbatch() == "-p gpu --cpus-per-task=4 --mem 16000 --gpus=1"
    pinned = Request("train", None, cpus=1, mem_mb=None, gpus=2, gpu_model="p40")
    assert pinned.sbatch() == "--cpus-per-task=1 --gpus=p40:2"


def test_a_cell_on_several_ranks_asks_for_a_task_and_a_gpu_per_rank() -> None:
    ranks = Request("train", "gpu", cpus=8, mem_mb=64000, gpus=4, tasks=4)
    assert ranks.sbatch() == "-p gpu --cpus-per-task=8 --mem 64000 --gpus=4 --ntasks-per-gpu=1"
    check_requests([ranks], parse_sinfo(SINFO))  # n2: 32 CPUs, 4 GPUs
    on_cpus = Request("train", None, cpus=1, mem_mb=None, tasks=2, nodes=2)
    assert on_cpus.sbatch() == "--nodes=2 --ntasks=2 --cpus-per-task=1"


@pytest.mark.parametrize(
    "request_",
    [
        Request("train", "gpu", cpus=9, mem_mb=1000, gpus=4, tasks=4),  # 36 CPUs: n2 has 32
        Request("train", "gpu", cpus=1, mem_mb=1000, gpus=8, tasks=8),  # 8 GPUs on one node
    ],
)
def test_the_ranks_of_one_node_must_fit_it(request_: Request) -> None:
    with pytest.raises(DetbenchError, match="more than any node"):
        check_requests([request_], parse_sinfo(SINFO))
    spread = Request("train", "gpu", 1, 1000, gpus=8, tasks=8, nodes=2)  # 4 GPUs per node
    check_requests([spread], parse_sinfo(SINFO))


def test_a_request_that_one_node_meets_passes() -> None:
    check_requests([TRAIN, Request("aggregate", None, 1, 16000)], parse_sinfo(SINFO))


def test_a_request_no_node_meets_stops_with_one_line_naming_rule_request_and_node() -> None:
    nodes = parse_sinfo(SINFO)
    small_partition = [node for node in nodes if node.name != "n2"]
    with pytest.raises(DetbenchError) as error:
        check_requests([Request("convert", "gpu", 1, 1000), TRAIN], small_partition)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        "rule train: asks -p gpu --cpus-per-task=4 --mem 16000 --gpus=1, more than any node "
        "of partition gpu has (largest node n1: 2 CPUs, 22000 MB, 1 GPU)"
    )
    assert "set-threads" in message


@pytest.mark.parametrize(
    "request_",
    [
        Request("train", "gpu", cpus=64, mem_mb=1000, gpus=1),  # CPUs: n2 has 32
        Request("train", "gpu", cpus=1, mem_mb=200000, gpus=1),  # memory
        Request("train", "gpu", cpus=1, mem_mb=1000, gpus=1, gpu_model="v100"),  # GPU type
        Request("train", "cpu", cpus=1, mem_mb=1000, gpus=1),  # no GPU in the partition
    ],
)
def test_each_kind_of_excess_is_caught(request_: Request) -> None:
    with pytest.raises(DetbenchError, match="more than any node"):
        check_requests([request_], parse_sinfo(SINFO))


def test_an_unknown_partition_is_named_with_the_known_ones() -> None:
    with pytest.raises(
        DetbenchError, match=r"partition a100 not found by sinfo \(partitions: cpu, gpu\)"
    ):
        check_requests([Request("train", "a100", 1, 1000)], parse_sinfo(SINFO))


def test_without_a_partition_the_default_one_is_checked() -> None:
    describe = describe_requests([Request("train", None, 4, 16000, 1)], parse_sinfo(SINFO))
    assert describe == [
        "  train: --cpus-per-task=4 --mem 16000 --gpus=1  (partition gpu, largest node "
        "n2: 32 CPUs, 192000 MB, 4 GPUs)"
    ]
    assert describe_requests([TRAIN], None) == [f"  train: {TRAIN.sbatch()}"]


SQUEUE = """\
11|rule_train_wildcards_baremetal-p40_yolov3_8_10|PartitionConfig|gpu|/data/study
12|rule_evaluate_wildcards_baremetal-p40_yolov3_8_10|Dependency|gpu|/data/study
13|rule_train_wildcards_x|PartitionConfig|gpu|/data/other-study
14|interactive|PartitionConfig|gpu|/data/study
15|rule_aggregate|ReqNodeNotAvail, UnavailableNodes:c1|cpu|/data/study
16|rule_train_wildcards_y|ReqNodeNotAvail, UnavailableNodes:n1|gpu|/data/study
17|rule_train_wildcards_z|Resources|gpu|/data/study
"""


def test_stuck_jobs_are_this_workflows_jobs_that_cannot_start() -> None:
    stuck = stuck_jobs(SQUEUE, Path("/data/study"), down_partitions={"cpu"})
    # 12 and 17 wait for something that comes; 13 and 14 are not this workflow's; 16 waits
    # for a node of a partition that is up.
    assert [job.job_id for job in stuck] == ["11", "15"]
    assert stuck[0].describe() == (
        "Slurm job 11 (rule_train_wildcards_baremetal-p40_yolov3_8_10) can never start: "
        "pending for PartitionConfig (no node of the partition has that many CPUs, that much "
        "memory or GPUs) in partition gpu; cancelled"
    )
    assert stuck[1].why == "the partition is down"


def test_stuck_jobs_are_cancelled_and_reported(tmp_path: Path) -> None:
    commands: list[list[str]] = []
    outputs = {
        "sinfo": SINFO,
        "squeue": SQUEUE.replace("/data/study", str(tmp_path)),
        "scancel": "",
    }

    def run(command: list[str]) -> str:
        commands.append(command)
        return outputs[command[0]]

    reported: list[str] = []
    stuck = cancel_stuck_jobs(tmp_path, reported.append, run=run)
    assert [job.job_id for job in stuck] == ["11", "15"]
    assert [command for command in commands if command[0] == "scancel"] == [
        ["scancel", "11"],
        ["scancel", "15"],
    ]
    assert reported == [job.describe() for job in stuck]
