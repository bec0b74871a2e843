"""A Slurm run that exits as soon as its last job has ended.

What a run waited for after "N of N steps (100%) done": snakemake-executor-plugin-slurm (2.8)
checks job states in a loop that sleeps between checks (``RemoteExecutor.sleep``) and, at the
end of the run, ``shutdown()`` joins that loop's thread, so the run sits out the rest of the
current sleep: ``slurm-init-seconds-before-status-checks`` (40 s by default) after a check that
saw a job end, 10 s more after each check that saw none (up to 180 s). That sleep also delays
seeing the last job end. Neither the stuck-job watcher (a daemon thread, never joined) nor the
plugin's log clean-up (a scan of .snakemake/slurm_logs) takes more than a moment.

:func:`prompt_status_loop` replaces that sleep with one of at most ``max_interval_s`` seconds,
taken in slices of ``slice_s`` that end early once the run stops waiting for jobs. One squeue
call per ``max_interval_s`` for the whole run is what it costs the controller.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

MAX_INTERVAL_S = 5.0
SLICE_S = 0.5


def prompt_status_loop(
    executor_class: Any, max_interval_s: float = MAX_INTERVAL_S, slice_s: float = SLICE_S
) -> bool:
    """Patch ``executor_class.sleep`` (a RemoteExecutor's); False where its shape is not the
    one this was written for (then nothing is changed)."""
    if not asyncio.iscoroutinefunction(getattr(executor_class, "sleep", None)):
        return False

    async def sleep(self: Any) -> None:
        interval = self.next_seconds_between_status_checks
        deadline = time.monotonic() + min(float(interval or max_interval_s), max_interval_s)
        while getattr(self, "wait", False):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(slice_s, left))

    executor_class.sleep = sleep
    return True
