"""Where and with what a cell ran: host, platform label, GPU, driver, CUDA, torch, Python, the
project's git commit, the hash of the effective config and the seed."""

from __future__ import annotations

import dataclasses
import os
import platform as platform_module
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

import detbench
from detbench.study.cells import Cell
from detbench.study.config import config_hash

PACKAGE_DIR = Path(detbench.__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        result = subprocess.run(
            ["git", "--no-optional-locks", "-C", str(PACKAGE_DIR), *args],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def git_state() -> tuple[str, bool | None]:
    """(commit of the checkout detbench runs from, or "unknown"; uncommitted changes to tracked
    files, or None where unknown). Reads only: no index refresh (--no-optional-locks)."""
    commit = _git("rev-parse", "HEAD")
    if commit is None:
        return "unknown", None
    status = _git("status", "--porcelain", "--untracked-files=no")
    return commit.strip(), None if status is None else bool(status.strip())


def cpu_model_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """The CPU's model name ("AMD EPYC 7B13", "Intel(R) Xeon(R) ..."), from /proc/cpuinfo on
    Linux; the architecture where the file has none (platform.processor() is often empty)."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("model name", "Model", "Processor") and value.strip():
            return " ".join(value.split())
    return platform_module.processor() or platform_module.machine()


def usable_cpu_count() -> int | None:
    """The CPUs this process may run on (a Slurm job's allocation, a container's cpuset)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count()


def run_provenance(
    *,
    platform: str | None,
    device: torch.device,
    seed: int,
    config: Mapping[str, Any],
    config_source: str,
    gpu: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance block of a run record.

    ``config``: the effective configuration the job ran under, hashed with
    :func:`detbench.study.config.config_hash`; ``config_source`` says what it is. ``gpu``: NVML's
    name / driver / CUDA driver version where known.
    """
    gpu = gpu or {}
    commit, dirty = git_state()
    gpu_name = gpu.get("name")
    if gpu_name is None and device.type == "cuda":
        gpu_name = torch.cuda.get_device_name(device)
    return {
        "host": socket.gethostname(),
        "platform": platform,
        "device": str(device),
        "gpu_name": gpu_name,
        "gpu_driver_version": gpu.get("driver_version"),
        "cuda_driver_version": gpu.get("cuda_driver_version"),
        "cuda_runtime_version": torch.version.cuda,
        "cudnn_version": torch.backends.cudnn.version()
        if torch.backends.cudnn.is_available()
        else None,
        "torch_version": torch.__version__,
        "python_version": platform_module.python_version(),
        "os": platform_module.platform(),
        "cpu": platform_module.processor() or platform_module.machine(),
        "cpu_model": cpu_model_name(),
        "cpu_count": os.cpu_count(),
        "cpu_cores_usable": usable_cpu_count(),
        "detbench_version": getattr(detbench, "__version__", None),
        "git_commit": commit,
        "git_dirty": dirty,
        "config_hash": config_hash(config),
        "config_hashed": config_source,
        "seed": seed,
    }


def cell_provenance(
    settings: Any,
    device: torch.device,
    gpu: Mapping[str, Any] | None,
    platform: str | None,
    config: Mapping[str, Any] | None,
    record_path: str | Path,
) -> dict[str, Any]:
    """Provenance of a train job (``settings``: its TrainSettings).

    Without ``platform`` the label is read from the cell's path (detbench.study.cells), where it has
    that shape. Without ``config`` (the cell's config
    dict as the train rule's params pass it) the hash covers the train settings instead, every
    value that determines the cell's training; ``config_hashed`` says which.
    """
    if platform is None:
        platform = platform_from_cell_path(record_path)
    if config is not None:
        hashed, source = config, "cell config"
    else:
        hashed, source = dataclasses.asdict(settings), "train settings"
    return run_provenance(
        platform=platform,
        device=device,
        seed=settings.seed,
        config=hashed,
        config_source=source,
        gpu=gpu,
    )


def platform_from_cell_path(path: str | Path) -> str | None:
    """The platform of the cell a file belongs to, or None outside a cell folder."""
    cell = Cell.from_file(path)
    return cell.platform if cell is not None else None
