"""A train job's Slurm request for its ranks (``train.ranks``, ``train.nodes``;
``rules/train.smk``'s resources): one task and one GPU per rank, the job's threads split over
the tasks. Standard library only: the workflow imports it at parse time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def rank_tasks(config: Mapping[str, Any], wildcards: Any = None) -> int:
    """Slurm tasks of a train job (sbatch --ntasks): one per rank."""
    return int(config["train"]["ranks"])


def rank_gpus(config: Mapping[str, Any], wildcards: Any = None) -> int:
    """GPUs of a train job (sbatch --gpus, with --ntasks-per-gpu=1): one per rank."""
    return int(config["train"]["ranks"])


def rank_nodes(config: Mapping[str, Any], wildcards: Any = None) -> int:
    """Nodes of a train job (sbatch --nodes): train.nodes."""
    return int(config["train"]["nodes"])


def rank_cpus_per_task(config: Mapping[str, Any], wildcards: Any = None, threads: int = 1) -> int:
    """CPUs per task (sbatch --cpus-per-task): the job's threads over its ranks, at least 1."""
    return max(1, int(threads) // int(config["train"]["ranks"]))
