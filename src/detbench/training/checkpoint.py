"""Resume state of a train job: written atomically with its sha256 at the end of an epoch (at
most once per ``train.checkpoint_interval_s``), the last two kept, and the newest intact one
written under the same settings loaded by a restarted job.

Checkpoints live in the cell's ``checkpoints/`` folder, outside the rule's declared outputs
(Snakemake deletes those before rerunning a job), and are removed once the final outputs are
written.
"""

from __future__ import annotations

import contextlib
import logging
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from detbench import atomic

log = logging.getLogger("detbench.training.checkpoint")

CHECKPOINTS_KEPT = 2


def _checkpoint_path(resume_dir: Path, epoch: int) -> Path:
    return resume_dir / f"epoch-{epoch:05d}.pt"


class CheckpointClock:
    """When to write a resume checkpoint: once ``interval_s`` seconds have passed since the
    last one (or the job's start); every epoch when 0. Also adds up what writing them cost."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.written = 0
        self.seconds = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.last = time.monotonic()
        self.written += 1
        self.seconds += self.last - start


def save_checkpoint(resume_dir: Path, state: dict[str, Any]) -> None:
    """Write the state atomically, with its sha256 beside it, and keep the last two."""
    path = _checkpoint_path(resume_dir, state["epoch"])
    atomic.torch_save(state, path)
    atomic.write_text(path.with_suffix(".sha256"), atomic.sha256_file(path) + "\n")
    checkpoints = sorted(resume_dir.glob("epoch-*.pt"))
    for old in checkpoints[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)


def load_latest_checkpoint(resume_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest intact checkpoint written under the same settings, if any.

    A checkpoint whose bytes do not match its recorded sha256, or that does not load, is
    reported and skipped in favour of the one before it.
    """
    for path in sorted(resume_dir.glob("epoch-*.pt"), reverse=True):
        recorded = path.with_suffix(".sha256")
        try:
            if not recorded.exists():
                log.warning("checkpoint %s has no sha256 recorded; trying an older one", path)
                continue
            if recorded.read_text().strip() != atomic.sha256_file(path):
                log.warning("checkpoint %s is damaged (sha256 mismatch); trying an older one", path)
                continue
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a damaged file may fail in many ways
            log.warning("checkpoint %s does not load (%s); trying an older one", path, exc)
            continue
        if state.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s was written under other settings; starting afresh", path)
            return None
        return state
    return None


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def remove_checkpoints(resume_dir: Path) -> None:
    """Delete the resume state: after the final outputs are written, or when what is there
    cannot be resumed. A job killed hard while writing may have left a temporary file
    (.epoch-N.pt.XXXX.tmp) too."""
    for path in [*resume_dir.glob("epoch-*"), *resume_dir.glob(".epoch-*.tmp")]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something else lives there
        resume_dir.rmdir()


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM (Slurm's scancel and wall-time limit, a notebook's stop) into SystemExit
    while training, so a checkpoint being written is abandoned cleanly (its temporary file
    removed) and the previous complete one remains to resume from."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
