"""glibc allocator settings that keep a CPU train job's peak memory near its live memory.

With glibc's defaults, the activations a training step frees stay in the process's heap
(glibc raises its mmap threshold as large blocks are freed, then serves them from the heap),
fragmented, so the peak resident memory lies well above the live memory. Blocks of 4 MiB and
more mmap'd on their own, and returned when freed, bring the peak down to near the live
memory; backing those mappings with transparent huge pages keeps the page faults, and so the
cost in step time, small (figures: benchmarks/RESULTS.md, "Memory of a train job").

glibc reads these settings once, at start-up, so a train job that will run on the CPU restarts
itself with them before it imports anything heavy (``restart_with_lean_allocator``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

LEAN_ALLOCATOR_ENV = {
    "MALLOC_MMAP_THRESHOLD_": "4194304",
    "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1",  # madvise(MADV_HUGEPAGE) on its mmaps
}
# Set to 0 to keep glibc's defaults; set by the restart itself, so that it happens once.
OPT_OUT = "DETBENCH_LEAN_ALLOCATOR"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")
NVIDIA_DEVICE = Path("/dev/nvidiactl")


def glibc_version() -> tuple[int, int] | None:
    try:
        name, version = os.confstr("CS_GNU_LIBC_VERSION").split()  # "glibc 2.36"
    except (AttributeError, ValueError, OSError):
        return None
    major, minor = version.split(".")[:2]
    return (int(major), int(minor)) if name == "glibc" else None


def huge_pages_available(setting: Path = THP_SETTING) -> bool:
    try:
        return "[never]" not in setting.read_text(encoding="ascii")
    except OSError:
        return False


def lean_allocator_env(
    environ: Mapping[str, str],
    *,
    glibc: tuple[int, int] | None,
    huge_pages: bool,
) -> dict[str, str] | None:
    """The environment to restart with, or None: opted out or already restarted, the user's
    own allocator settings present, no glibc >= 2.35 (the huge-page tunable), or transparent
    huge pages off (without them the small mmaps cost a third of the speed)."""
    if environ.get(OPT_OUT) is not None:
        return None
    if any(key in environ for key in LEAN_ALLOCATOR_ENV) or "LD_PRELOAD" in environ:
        return None
    if glibc is None or glibc < (2, 35) or not huge_pages:
        return None
    return {**environ, **LEAN_ALLOCATOR_ENV, OPT_OUT: "1"}


def runs_on_cpu(device_setting: str) -> bool:
    """Whether ``train.device`` will be the CPU, decided without importing torch: 'auto' is
    the CPU where no NVIDIA driver is loaded (a GPU job keeps glibc's defaults, unmeasured)."""
    if device_setting == "cpu":
        return True
    return device_setting == "auto" and not NVIDIA_DEVICE.exists()


def restart_with_lean_allocator(device_setting: str) -> None:
    """Replace this process by itself, same arguments, with LEAN_ALLOCATOR_ENV, when the job
    runs on the CPU and the settings apply (see lean_allocator_env); otherwise return."""
    if not runs_on_cpu(device_setting):
        return
    env = lean_allocator_env(
        os.environ, glibc=glibc_version(), huge_pages=huge_pages_available()
    )
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
