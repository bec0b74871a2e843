"""Where a train job's time went: start-up, the first epoch's extra, steady epochs, interim
evaluation and checkpoints.

A platform comparison on modern GPUs is otherwise a comparison of import times: a short BCCD
cell can spend as long starting as training. The first epoch carries what only it pays (the
loader's workers starting, cuDNN autotuning, the allocator growing); its extra is its time less
a steady epoch's, the median of the later epochs.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

# Keys of run.json's "time_breakdown" (and the summary's columns of the same names) -> meaning.
BREAKDOWN_COLUMNS: dict[str, str] = {
    "startup_s": (
        "train job start-up (s): process start to the first training step (interpreter, "
        "imports, the allocator restart, dataset cache, model build); the last segment's"
    ),
    "first_epoch_s": "wall time of the first epoch (s)",
    "first_epoch_extra_s": (
        "first epoch less a steady epoch (s): loader start, autotuning; NA with one epoch"
    ),
    "steady_epoch_median_s": "median wall time of epochs 2..n (s); NA with one epoch",
    "steady_epochs_s": "sum of the wall times of epochs 2..n (s); 0 with one epoch",
    "interim_eval_s": "evaluation during training, all of it (s; train.eval_interval_epochs)",
    "checkpoint_s": "writing resume checkpoints (s), the last segment's",
}


def time_breakdown(
    history: Sequence[Mapping[str, Any]], *, startup_s: float | None, checkpoint_s: float
) -> dict[str, float | None]:
    """The breakdown of a job whose per-epoch rows are ``history`` (epoch_seconds, and
    eval_seconds after the evaluated epochs)."""
    epochs = [float(row["epoch_seconds"]) for row in history]
    first = epochs[0] if epochs else None
    steady = epochs[1:]
    median = statistics.median(steady) if steady else None
    evaluation = sum(float(row.get("eval_seconds") or 0.0) for row in history)
    return {
        "startup_s": startup_s,
        "first_epoch_s": first,
        "first_epoch_extra_s": first - median if first is not None and median is not None else None,
        "steady_epoch_median_s": median,
        "steady_epochs_s": sum(steady),
        "interim_eval_s": evaluation,
        "checkpoint_s": checkpoint_s,
    }
