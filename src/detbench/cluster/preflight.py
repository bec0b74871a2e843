"""The pre-flight check: Slurm requests that fit the partition.

Before anything is submitted, each rule's request (what snakemake-executor-plugin-slurm will
pass to sbatch: partition, CPUs, memory, GPUs) is checked against the partition's nodes
(`sinfo`): a request no node can meet would sit PENDING (PartitionConfig) forever while
Snakemake prints nothing.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from detbench.errors import DetbenchError


@dataclasses.dataclass(frozen=True)
class Request:
    """What one rule's Slurm job asks for; None where the plugin passes nothing."""

    rule: str
    partition: str | None
    cpus: int | None
    mem_mb: int | None
    gpus: int = 0
    gpu_model: str | None = None
    tasks: int = 1  # a cell on several ranks: one task per rank (cpus per task)
    nodes: int = 1
    runtime_min: int | None = None  # None: per job (train's comes from its cell)

    def sbatch(self) -> str:
        """The request as the plugin writes it on the sbatch command line."""
        parts = [f"-p {self.partition}"] if self.partition else []
        if self.nodes > 1:
            parts.append(f"--nodes={self.nodes}")
        if self.tasks > 1 and not self.gpus:
            parts.append(f"--ntasks={self.tasks}")
        if self.cpus is not None:
            parts.append(f"--cpus-per-task={self.cpus}")
        if self.mem_mb is not None:
            parts.append(f"--mem {self.mem_mb}")
        if self.gpus:
            model = f"{self.gpu_model}:" if self.gpu_model else ""
            parts.append(f"--gpus={model}{self.gpus}")
            if self.tasks > 1:  # one task per GPU (rules/train.smk: a rank per GPU)
                parts.append("--ntasks-per-gpu=1")
        return " ".join(parts)


@dataclasses.dataclass(frozen=True)
class Node:
    """One node of one partition as sinfo shows it."""

    name: str
    partition: str
    default: bool  # the partition jobs go to without -p
    cpus: int
    mem_mb: int
    gpus: Mapping[str, int]  # GPU type -> count; "" counts every GPU of the node
    partition_up: bool

    def fits(self, request: Request) -> bool:
        """Whether this node holds its share of ``request`` (tasks and GPUs split evenly over
        the request's nodes; memory is per node)."""
        tasks = -(-request.tasks // request.nodes)
        return (
            (request.cpus is None or request.cpus * tasks <= self.cpus)
            and (request.mem_mb is None or request.mem_mb <= self.mem_mb)
            and -(-request.gpus // request.nodes) <= self.gpus.get(request.gpu_model or "", 0)
        )

    def describe(self) -> str:
        gpus = self.gpus.get("", 0)
        return f"{self.name}: {self.cpus} CPUs, {self.mem_mb} MB, {gpus} GPU{'s' * (gpus != 1)}"


# sinfo, one line per node and partition: partition (default marked *), node, CPUs, memory
# (MB), generic resources, partition availability.
SINFO_FORMAT = "%P|%N|%c|%m|%G|%a"


def parse_gres(text: str) -> dict[str, int]:
    """GPU counts of a node from sinfo's %G ("gpu:2", "gpu:p40:2(S:0-1)", "(null)")."""
    counts: dict[str, int] = {}
    for item in re.split(r",(?![^(]*\))", text):
        fields = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if fields[0] != "gpu" or len(fields) < 2:
            continue
        kind, count = (fields[1], fields[2]) if len(fields) > 2 else ("", fields[1])
        number = int(re.match(r"\d+", count).group()) if re.match(r"\d+", count) else 0
        counts[""] = counts.get("", 0) + number
        if kind:
            counts[kind] = counts.get(kind, 0) + number
    return counts


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from `sinfo --noheader --Node --format=SINFO_FORMAT`."""
    nodes = []
    for line in text.splitlines():
        fields = line.strip().split("|")
        if len(fields) != 6:
            continue
        partition, name, cpus, mem, gres, available = fields
        nodes.append(
            Node(
                name=name,
                partition=partition.rstrip("*"),
                default=partition.endswith("*"),
                cpus=int(cpus.rstrip("+")),
                mem_mb=int(mem.rstrip("+")),
                gpus=parse_gres(gres),
                partition_up=available.strip() == "up",
            )
        )
    return nodes


def read_nodes(run: Callable[[list[str]], str] | None = None) -> list[Node] | None:
    """The cluster's nodes per partition, or None where there is no sinfo (a laptop)."""
    if run is None:
        if shutil.which("sinfo") is None:
            return None
        run = command_output
    return parse_sinfo(run(["sinfo", "--noheader", "--Node", f"--format={SINFO_FORMAT}"]))


def partition_nodes(nodes: Sequence[Node], partition: str | None) -> tuple[str, list[Node]]:
    """The partition a request goes to (the default one where it names none) and its nodes."""
    if partition is None:
        defaults = {node.partition for node in nodes if node.default}
        if not defaults:
            return "(default)", []
        partition = sorted(defaults)[0]
    return partition, [node for node in nodes if node.partition == partition]


def largest(nodes: Sequence[Node]) -> Node:
    return max(nodes, key=lambda node: (node.gpus.get("", 0), node.cpus, node.mem_mb))


def check_requests(requests: Iterable[Request], nodes: Sequence[Node]) -> None:
    """Raise one one-line DetbenchError naming every request no node of its partition meets,
    with profile settings that bring them all within the largest node."""
    oversized: list[tuple[Request, str, Node]] = []
    for request in requests:
        partition, members = partition_nodes(nodes, request.partition)
        if not members:
            known = ", ".join(sorted({node.partition for node in nodes})) or "none"
            raise DetbenchError(
                f"rule {request.rule}: partition {partition} not found by sinfo "
                f"(partitions: {known}); set slurm_partition in profiles/slurm/config.yaml"
            )
        if not any(node.fits(request) for node in members):
            oversized.append((request, partition, largest(members)))
    if not oversized:
        return
    what = "; ".join(
        f"rule {request.rule}: asks {request.sbatch()}, more than any node of partition "
        f"{partition} has (largest node {node.describe()})"
        for request, partition, node in oversized
    )
    raise DetbenchError(
        f"{what}. Lower {'them' if len(oversized) > 1 else 'it'} in the profile"
        f"{fitting_settings(oversized)}, or choose another partition"
    )


def fitting_settings(oversized: Sequence[tuple[Request, str, Node]]) -> str:
    """Profile settings that fit each oversized request into its partition's largest node:
    set-threads for CPUs, set-resources for memory (GPUs: named, the fix is the user's)."""
    threads, memory, gpus = {}, {}, []
    for request, _, node in oversized:
        tasks = -(-request.tasks // request.nodes)
        if request.cpus is not None and request.cpus * tasks > node.cpus:
            threads[request.rule] = max(1, node.cpus // tasks) * request.tasks
        if request.mem_mb is not None and request.mem_mb > node.mem_mb:
            memory[request.rule] = node.mem_mb
        if -(-request.gpus // request.nodes) > node.gpus.get(request.gpu_model or "", 0):
            gpus.append(request.rule)
    parts = []
    if threads:
        parts.append("set-threads: {" + ", ".join(f"{r}: {n}" for r, n in threads.items()) + "}")
    if memory:
        parts.append(
            "set-resources: {" + ", ".join(f"{r}: {{mem_mb: {m}}}" for r, m in memory.items()) + "}"
        )
    if gpus:
        parts.append(f"fewer GPUs or another gpu_model for {', '.join(gpus)} (set-resources)")
    return ": " + " and ".join(parts) if parts else ""


def describe_requests(requests: Iterable[Request], nodes: Sequence[Node] | None) -> list[str]:
    """One line per rule for the plan: what each job will ask sbatch for."""
    lines = []
    for request in requests:
        line = f"  {request.rule}: {request.sbatch()}"
        if nodes:
            partition, members = partition_nodes(nodes, request.partition)
            if members:
                line += f"  (partition {partition}, largest node {largest(members).describe()})"
        lines.append(line)
    return lines


# --------------------------------------------------------------------------- from Snakemake


def rule_requests(
    rules: Iterable[Any], *, local_rules: set[str], max_threads: int | None
) -> list[Request]:
    """The request of each rule submitted to Slurm, as snakemake-executor-plugin-slurm forms
    it (threads, or cpus_per_task where given; mem_mb or mem_mb_per_cpu; gpu, gpu_model; tasks
    and nodes, for a cell on several ranks).

    Rules are evaluated without a job: threads are the rule's, capped by --max-threads only (a
    dry run caps them at its one core, which is not what Slurm is asked for), and a resource
    that needs a job's wildcards or input is left out.
    """
    requests = []
    for rule in rules:
        if rule.name in local_rules or rule.norun:
            continue
        threads = _value(rule, "_cores", threads=1) or 1
        if max_threads is not None:
            threads = min(threads, max_threads)
        requests.append(_request(rule, threads))
    return requests


def _request(rule: Any, threads: int) -> Request:
    def value(name: str) -> Any:
        return _value(rule, name, threads=threads)

    cpus = value("cpus_per_task")
    cpus = threads if cpus is None else max(1, cpus)
    per_cpu = value("mem_mb_per_cpu")
    gpus = value("gpu")
    return Request(
        rule=rule.name,
        partition=value("slurm_partition"),
        cpus=cpus,
        mem_mb=per_cpu * cpus if per_cpu else value("mem_mb"),
        gpus=int(gpus or _gres_gpus(value("gres")) or 0),
        gpu_model=value("gpu_model"),
        tasks=int(value("tasks") or 1),
        nodes=int(value("nodes") or 1),
        runtime_min=_minutes(value("runtime")),
    )


def _minutes(runtime: Any) -> int | None:
    """A runtime resource in minutes (Snakemake's number, or a "1h" / "90m" string)."""
    if isinstance(runtime, int | float) and not isinstance(runtime, bool):
        return int(runtime)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(m|min|h|d)?\s*", str(runtime or ""))
    if not match:
        return None
    scale = {None: 1, "m": 1, "min": 1, "h": 60, "d": 1440}[match.group(2)]
    return int(float(match.group(1)) * scale)


def group_wall_times(train_minutes: Sequence[int], evaluate: Request | None) -> str | None:
    """The dry run's line on a cell's Slurm job (the group "cell": its train and evaluate jobs
    in one sbatch, whose --time is the sum of theirs), or None without train jobs."""
    if not train_minutes:
        return None
    low, high = min(train_minutes), max(train_minutes)
    extra = evaluate.runtime_min if evaluate is not None and evaluate.runtime_min else 0
    train = f"{low}" if low == high else f"{low}-{high}"
    total = f"{low + extra}" if low == high else f"{low + extra}-{high + extra}"
    return (
        f"  cell (group: train + evaluate, one sbatch per cell): --time {total} min = train "
        f"{train} min (the wall-time model, per cell) + evaluate {extra} min; with "
        "group-components cell: N, a job of N cells asks for the sum of theirs"
    )


def _gres_gpus(gres: Any) -> int:
    return parse_gres(str(gres)).get("", 0) if gres else 0


def _value(rule: Any, name: str, *, threads: int) -> Any:
    resource = rule.resources.get(name)
    if resource is None:
        return None
    if resource.is_evaluable():
        try:
            resource = resource.evaluate(
                wildcards=None,
                input=None,
                attempt=1,
                threads=threads,
                rulename=rule.name,
                async_run=None,
            )
        except Exception:  # it needs a job (wildcards, input): not checkable before one
            return None
    value = resource.value
    return None if value is None or value == "" else value


def command_output(command: list[str]) -> str:
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=True)
    except subprocess.CalledProcessError as error:
        said = (error.stderr or "").strip().splitlines()
        raise DetbenchError(f"{command[0]}: failed ({said[0] if said else error})") from None
    except (OSError, subprocess.SubprocessError) as error:
        raise DetbenchError(f"{command[0]}: failed ({error})") from None
    return result.stdout
