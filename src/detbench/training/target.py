"""Time to a target accuracy (MLPerf's measure): the first epoch whose evaluation during
training reached ``target_map50`` (mAP@0.5 on the eval split), with the time, GPU energy and
cost it took; or that the target was not reached.

The train job evaluates every ``train.eval_interval_epochs`` (every epoch where a target is set
and the interval is 0), so the epoch found is the first history.csv row at or above the target.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# History rows carry this key (not a history.csv column) on evaluated epochs while a target is
# set: the GPU energy from the job's start to that epoch's end, all segments.
ENERGY_SO_FAR = "gpu_energy_so_far_j"

# Summary column -> what it holds.
COLUMNS: dict[str, str] = {
    "target_map50": "target mAP@0.5 on eval_split (config target_map50); NA: none set",
    "target_reached": "whether an evaluation during training reached target_map50 (yes/no)",
    "target_epoch": (
        "first epoch whose evaluation reached target_map50 (the first history.csv row at or "
        "above it); NA: not reached"
    ),
    "time_to_target_s": (
        "training and interim evaluation seconds up to the end of target_epoch, all segments "
        "(start-up excluded); NA: not reached"
    ),
    "energy_to_target_j": "GPU energy from the train job's start to target_epoch's end (J)",
    "cost_to_target": "time_to_target_s / 3600 x gpu_hour_price of the platform (currency)",
}


def time_to_target(history: Sequence[Mapping[str, Any]], target: float) -> dict[str, Any]:
    """run.json's "target" entry from the epochs' history rows (1-based "epoch")."""
    seconds = 0.0
    best = None
    for row in history:
        seconds += float(row.get("epoch_seconds") or 0.0) + float(row.get("eval_seconds") or 0.0)
        map50 = row.get("eval_map50")
        if map50 is None or map50 == "":
            continue
        # As history.csv writes it (6 significant digits): the row a reader finds is this one.
        map50 = float(f"{float(map50):.6g}")
        best = map50 if best is None else max(best, map50)
        if map50 >= target:
            return {
                "map50_target": target,
                "reached": True,
                "epoch": int(row["epoch"]),
                "map50": map50,
                "seconds": seconds,
                "gpu_energy_j": row.get(ENERGY_SO_FAR),
            }
    return {
        "map50_target": target,
        "reached": False,
        "epoch": None,
        "best_map50": best,
        "seconds": None,
        "gpu_energy_j": None,
        "status": "not reached",
    }


def summary_columns(run: Mapping[str, Any], price_per_hour: float | None) -> dict[str, Any]:
    """The summary's time-to-target columns of one run record (NA without a target)."""
    target = run.get("target") or {}
    seconds = target.get("seconds")
    cost = seconds / 3600 * price_per_hour if seconds is not None and price_per_hour else None
    reached = target.get("reached")
    return {
        "target_map50": target.get("map50_target"),
        "target_reached": None if reached is None else ("yes" if reached else "no"),
        "target_epoch": target.get("epoch"),
        "time_to_target_s": seconds,
        "energy_to_target_j": target.get("gpu_energy_j"),
        "cost_to_target": cost,
    }
