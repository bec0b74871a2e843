"""A resumable train job's log over all its segments.

Snakemake deletes a job's log before it runs the job again, so a cell cancelled and resumed
would keep only its last segment's lines. The log is therefore also kept beside the resume
checkpoints (outside the declared outputs, like them): every line goes there as well while the
job runs, the next segment puts the kept lines back at the head of its log before it logs
anything, and a job that finishes removes the kept copy with its checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

KEPT_LOG = "train.log"


def restore_segments(log_path: str | Path | None, resume_dir: Path) -> bool:
    """Before logging starts: the earlier segments' lines back into the job's log, where there
    is a checkpoint to resume from (else a kept log is stale and goes). True if restored."""
    if log_path is None:
        return False
    kept = resume_dir / KEPT_LOG
    if kept.exists() and any(resume_dir.glob("epoch-*.pt")):
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kept, log_path)
        return True
    kept.unlink(missing_ok=True)
    return False


@contextlib.contextmanager
def keeping_segments(log_path: str | Path | None, resume_dir: Path) -> Iterator[None]:
    """While training: the log's lines also into the kept copy (a job killed hard keeps what
    it logged); on failure the copy is brought level with the log (lines of the ranks'
    processes, which write only the log, included); after success it goes."""
    if log_path is None:
        yield
        return
    resume_dir.mkdir(parents=True, exist_ok=True)
    kept = resume_dir / KEPT_LOG
    if Path(log_path).exists():
        shutil.copyfile(log_path, kept)
    handler = logging.FileHandler(kept, mode="a", encoding="utf-8")
    root = logging.getLogger()
    if root.handlers:
        handler.setFormatter(root.handlers[0].formatter)
    root.addHandler(handler)
    try:
        yield
    except BaseException:
        handler.flush()
        with contextlib.suppress(OSError):
            shutil.copyfile(log_path, kept)
        raise
    else:
        kept.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other files there: the checkpoints' business
            resume_dir.rmdir()
    finally:
        root.removeHandler(handler)
        handler.close()
