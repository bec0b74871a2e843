"""Process resources of a train job, measured the way ``/usr/bin/time -v`` reports them.

Definitions (written into run.json beside the figures, see :data:`DEFINITIONS`):

- wall, user and system seconds of the job's process; user and system include the process's
  children once reaped (DataLoader workers: the loader's workers are shut down before the last
  reading, see :func:`shutdown_loader_workers`);
- % CPU = (user + system) / wall x 100, as time -v computes "Percent of CPU this job got";
- max RSS (kB), as time -v reports it ("Maximum resident set size": the kernel's ru_maxrss of
  the process, which takes in its reaped children): the peak resident set of the largest single
  process of the tree, the process itself or one DataLoader worker. Read from the process's and
  its reaped children's ``ru_maxrss`` and from the resident set of each live child, sampled every
  ``interval_s`` from /proc/<pid>/statm (the VmRSS of /proc/<pid>/status);
- max tree RSS (kB): the peak of the summed resident sets of the process and its live
  descendants (same samples), at least max RSS. Pages a forked worker shares with its parent
  (torch's libraries, the dataset cache) count once per process, as `ps` counts them, so this is
  an upper bound of the tree's memory. The proportional figure (PSS, /proc/<pid>/smaps_rollup)
  would be exact, but reading it walks every mapping of the process: too slow for a light
  sampler (benchmarks/RESULTS.md, "Figures moved from code comments").

The window normally starts at the process's start, like time -v's: interpreter start-up and
imports count, as they did in the 2020 study. Only the first monitor of a process can claim that
start; a second train() in the same process (a test, a notebook) counts from its own start,
although ``ru_maxrss`` of the process cannot be reset and may then reflect an earlier peak.
"""

from __future__ import annotations

import dataclasses
import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any, Literal

Origin = Literal["auto", "process", "call"]

DEFINITIONS = {
    "wall_time_s": "elapsed seconds of the train job (all segments)",
    "user_time_s": "user CPU seconds of the job's process and its reaped children (all segments)",
    "system_time_s": "system CPU seconds of the process and its reaped children (all segments)",
    "cpu_percent": "(user_time_s + system_time_s) / wall_time_s x 100, as /usr/bin/time -v",
    "max_rss_kb": (
        "peak resident set (kB) of the largest single process of the job (the process or one "
        "DataLoader worker), as /usr/bin/time -v's Maximum resident set size"
    ),
    "max_tree_rss_kb": (
        "peak of the summed resident sets (kB) of the process and its live DataLoader workers, "
        "sampled; shared pages count once per process (an upper bound)"
    ),
}

_PROC = Path("/proc")
_CLAIMED_PROCESS_START = False
_CLAIM_LOCK = threading.Lock()


def _claim_process_start() -> bool:
    """True for the first caller in this process (it may count from the process start)."""
    global _CLAIMED_PROCESS_START
    with _CLAIM_LOCK:
        first = not _CLAIMED_PROCESS_START
        _CLAIMED_PROCESS_START = True
        return first


def _maxrss_kb(usage: resource.struct_rusage) -> int:
    # Linux reports kilobytes, macOS bytes.
    return int(usage.ru_maxrss // 1024 if sys.platform == "darwin" else usage.ru_maxrss)


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), or None where unknown."""
    try:
        stat = (_PROC / "self" / "stat").read_text()
        uptime = float((_PROC / "uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    # Field 22 (starttime, clock ticks after boot); the command name (field 2) may hold spaces.
    fields = stat.rsplit(")", 1)[1].split()
    start_ticks = int(fields[19])
    return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))


def child_pids(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's /proc/<pid>/task/<tid>/children)."""
    children: list[int] = []
    try:
        tasks = list((_PROC / str(pid) / "task").iterdir())
    except OSError:
        return children
    for task in tasks:
        try:
            children.extend(int(c) for c in (task / "children").read_text().split())
        except (OSError, ValueError):
            continue
    return children


def descendant_pids(pid: int) -> list[int]:
    found: list[int] = []
    pending = child_pids(pid)
    while pending:
        child = pending.pop()
        found.append(child)
        pending.extend(child_pids(child))
    return found


_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def rss_kb(pid: int) -> int:
    """Resident set of one process in kB (0 when it is gone)."""
    try:
        return int((_PROC / str(pid) / "statm").read_text().split()[1]) * _PAGE_KB
    except (OSError, ValueError, IndexError):
        return 0


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds a live process has used so far (0, 0 when it is gone)."""
    try:
        fields = (_PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0, 0.0


def shutdown_loader_workers(loader: Any) -> None:
    """Stop and reap a DataLoader's worker processes, so RUSAGE_CHILDREN counts their CPU time.

    Persistent workers otherwise live until the loader is garbage-collected, after the figures
    are read. Uses the iterator's own shutdown (torch keeps it on ``loader._iterator``).
    """
    iterator = getattr(loader, "_iterator", None)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()
    if iterator is not None:
        loader._iterator = None


@dataclasses.dataclass
class ResourceTotals:
    """Accumulated over the segments (job runs) of one resumable train job."""

    wall_s: float = 0.0
    user_s: float = 0.0
    system_s: float = 0.0
    max_rss_kb: int = 0
    max_tree_rss_kb: int = 0
    segments: int = 0

    def plus(self, other: ResourceTotals) -> ResourceTotals:
        return ResourceTotals(
            wall_s=self.wall_s + other.wall_s,
            user_s=self.user_s + other.user_s,
            system_s=self.system_s + other.system_s,
            max_rss_kb=max(self.max_rss_kb, other.max_rss_kb),
            max_tree_rss_kb=max(self.max_tree_rss_kb, other.max_tree_rss_kb),
            segments=self.segments + other.segments,
        )

    @property
    def cpu_percent(self) -> float | None:
        if self.wall_s <= 0:
            return None
        return (self.user_s + self.system_s) / self.wall_s * 100

    def to_record(self) -> dict[str, Any]:
        return {
            "wall_time_s": self.wall_s,
            "user_time_s": self.user_s,
            "system_time_s": self.system_s,
            "cpu_percent": self.cpu_percent,
            "max_rss_kb": self.max_rss_kb,
            "max_tree_rss_kb": self.max_tree_rss_kb,
            "segments_counted": self.segments,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any] | None) -> ResourceTotals:
        if not state:
            return cls()
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls) if f.name in state})


class ResourceMeter:
    """One segment's resources: rusage deltas plus sampled peak resident sets.

    ``sample()`` is called by the sampler thread; ``totals()`` reads the figures so far.
    """

    def __init__(self, origin: Origin = "auto") -> None:
        if origin == "auto":
            origin = "process" if _claim_process_start() else "call"
        age = process_age_s() if origin == "process" else None
        if origin == "process" and age is None:
            origin = "call"  # no /proc: the process's start time is unknown
        self.origin: Literal["process", "call"] = origin
        self.pid = os.getpid()
        self._wall_start = time.perf_counter() - (age or 0.0)
        if origin == "process":
            self._self_start = (0.0, 0.0)
            self._children_start = (0.0, 0.0)
        else:
            self._self_start = _times(resource.RUSAGE_SELF)
            self._children_start = _times(resource.RUSAGE_CHILDREN)
        self._peak_single_kb = 0
        self._peak_tree_kb = 0
        self._lock = threading.Lock()
        self.sample()

    def elapsed_s(self) -> float:
        """Wall seconds of this segment so far (from the process start for origin "process")."""
        return time.perf_counter() - self._wall_start

    def sample(self) -> None:
        """Record the resident sets of the process and its live descendants."""
        sizes = [rss_kb(self.pid)] + [rss_kb(child) for child in descendant_pids(self.pid)]
        with self._lock:
            self._peak_single_kb = max(self._peak_single_kb, *sizes)
            self._peak_tree_kb = max(self._peak_tree_kb, sum(sizes))

    def totals(self, include_live_children: bool = False) -> ResourceTotals:
        """This segment so far. ``include_live_children`` adds the CPU time of children not
        reaped yet (persistent DataLoader workers at an epoch checkpoint), read from /proc."""
        user, system = _times(resource.RUSAGE_SELF)
        child_user, child_system = _times(resource.RUSAGE_CHILDREN)
        user += child_user - self._children_start[0] - self._self_start[0]
        system += child_system - self._children_start[1] - self._self_start[1]
        if include_live_children:
            for child in descendant_pids(self.pid):
                live_user, live_system = cpu_seconds(child)
                user += live_user
                system += live_system
        with self._lock:
            single, tree = self._peak_single_kb, self._peak_tree_kb
        # The kernel's peaks catch what happened between two samples.
        kernel = max(
            _maxrss_kb(resource.getrusage(resource.RUSAGE_SELF)),
            _maxrss_kb(resource.getrusage(resource.RUSAGE_CHILDREN)),
        )
        return ResourceTotals(
            wall_s=self.elapsed_s(),
            user_s=user,
            system_s=system,
            max_rss_kb=max(single, kernel),
            max_tree_rss_kb=max(tree, single, kernel),
            segments=1,
        )


def _times(who: int) -> tuple[float, float]:
    usage = resource.getrusage(who)
    return usage.ru_utime, usage.ru_stime
