"""The environment that has one rank of a test's multi-rank cell die (SIGKILL) after an epoch:
tests/rank_kill_hook/sitecustomize.py on PYTHONPATH, and the rank and epoch it reads."""

from __future__ import annotations

import os
from pathlib import Path

HOOK_DIR = Path(__file__).resolve().parent / "rank_kill_hook"
KILL_RANK_ENV = "DETBENCH_TEST_KILL_RANK_AFTER_EPOCH"  # read by the hook


def kill_rank_after_epoch(rank: int, epoch: int) -> dict[str, str]:
    """Variables to add to a Snakemake run's environment: rank ``rank`` dies once its 1-based
    epoch ``epoch`` has ended and any checkpoint due after it is written."""
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {KILL_RANK_ENV: f"{rank}:{epoch}", "PYTHONPATH": os.pathsep.join([str(HOOK_DIR), *rest])}
