"""The CPU train job's restart with lean glibc allocator settings: when it happens, that it
happens once, with the settings, and that a user's own settings or opt-out win."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from detbench.training import allocator
from detbench.training.allocator import LEAN_ALLOCATOR_ENV, OPT_OUT, lean_allocator_env, runs_on_cpu

SRC = str(Path(allocator.__file__).parents[2])


def test_settings_apply_only_where_they_pay() -> None:
    env = lean_allocator_env({"HOME": "/root"}, glibc=(2, 36), huge_pages=True)
    assert env == {"HOME": "/root", **LEAN_ALLOCATOR_ENV, OPT_OUT: "1"}
    assert lean_allocator_env({}, glibc=(2, 34), huge_pages=True) is None  # no hugetlb tunable
    assert lean_allocator_env({}, glibc=None, huge_pages=True) is None  # musl, or unknown
    assert lean_allocator_env({}, glibc=(2, 36), huge_pages=False) is None  # THP "never"
    assert lean_allocator_env({OPT_OUT: "0"}, glibc=(2, 36), huge_pages=True) is None
    for own in ({"MALLOC_MMAP_THRESHOLD_": "1"}, {"GLIBC_TUNABLES": "x=1"}, {"LD_PRELOAD": "t"}):
        assert lean_allocator_env(own, glibc=(2, 36), huge_pages=True) is None, own


def test_only_a_cpu_job_restarts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "NVIDIA_DEVICE", tmp_path / "nvidiactl")
    assert runs_on_cpu("cpu") and runs_on_cpu("auto")
    assert not runs_on_cpu("cuda") and not runs_on_cpu("cuda:1")
    (tmp_path / "nvidiactl").touch()
    assert not runs_on_cpu("auto")


SCRIPT = """
import os, sys
sys.path.insert(0, sys.argv[1])
print("started", os.environ.get("MALLOC_MMAP_THRESHOLD_"), os.environ.get("GLIBC_TUNABLES"),
      sys.argv[2:], flush=True)
from detbench.training.allocator import restart_with_lean_allocator
restart_with_lean_allocator("cpu")
print("training", flush=True)
"""


def _run(env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, SRC, "--an-argument"],
        env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return done.stdout.splitlines()


def test_a_cpu_job_restarts_once_with_the_settings() -> None:
    base = {k: v for k, v in os.environ.items() if k not in (*LEAN_ALLOCATOR_ENV, OPT_OUT)}
    if lean_allocator_env(
        base, glibc=allocator.glibc_version(), huge_pages=allocator.huge_pages_available()
    ) is None:
        pytest.skip("the settings do not apply here (glibc < 2.35 or transparent huge pages off)")
    assert _run(base) == [
        "started None None ['--an-argument']",
        "started 4194304 glibc.malloc.hugetlb=1 ['--an-argument']",
        "training",
    ]
    assert _run({**base, OPT_OUT: "0"}) == ["started None None ['--an-argument']", "training"]
