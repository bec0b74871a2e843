"""Test harness: one rank of a multi-rank cell kills itself, as a crashed rank would die.

Python imports this module at start-up in every process whose PYTHONPATH names this folder
(tests/rank_kill.py puts it there for a test's Snakemake run, whose jobs and ranks inherit it).
With KILL_RANK_ENV="RANK:EPOCH" set, it wraps detbench.training.train's ``train_one_epoch`` as
that module is imported: rank RANK sends itself SIGKILL once the 1-based epoch EPOCH has ended
and any checkpoint due after it is written, that is when the next epoch would start. Without
the variable it does nothing, so every other process started under it runs as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import signal
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

KILL_RANK_ENV = "DETBENCH_TEST_KILL_RANK_AFTER_EPOCH"
TARGET = "detbench.training.train"


class _WrapAfterImport(importlib.abc.MetaPathFinder):
    """Finds TARGET as the path finder would, and wraps its function once it has run."""

    def __init__(self, kill_rank: int, kill_epoch: int) -> None:
        self.at = (kill_rank, kill_epoch)

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != TARGET:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        execute = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            execute(module)
            module.train_one_epoch = self.wrap(module.train_one_epoch)

        loader.exec_module = exec_module
        return spec

    def wrap(self, train_one_epoch: Any) -> Any:
        from detbench.training import distributed

        def killing_train_one_epoch(state: Any, batches: Any, plan: Any, epoch: int) -> Any:
            # ``epoch`` is 0-based: the epoch about to start follows the 1-based kill_epoch.
            if distributed.active() and (distributed.rank(), epoch) == self.at:
                os.kill(os.getpid(), signal.SIGKILL)
            return train_one_epoch(state, batches, plan, epoch)

        return killing_train_one_epoch


def _install() -> None:
    target = os.environ.get(KILL_RANK_ENV)
    if target:
        kill_rank, kill_epoch = (int(part) for part in target.split(":"))
        sys.meta_path.insert(0, _WrapAfterImport(kill_rank, kill_epoch))


_install()
