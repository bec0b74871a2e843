"""Platforms side by side, as numbers: for every cell present on two platforms, the time ratio,
the differences and the statistics over the cell's repeats, and their summary per model and
batch size. ``detbench.report.comparison`` turns these tables into words.

The input is the report's cell frame (``detbench.report.frame``): one row per platform and cell
(platform, model, batch, epochs) with the means over its repeats, every run's value in
``<column>_runs`` and their count ``n``; ``source`` is MEASURED for detbench's own cells, and
``status`` "ok" for a finished one.

Like with like: two cells are compared only when both trained on the same dataset at the same
image size (a demo on synthetic images is not set against the 2020 study's BCCD runs). Two
measured platforms are compared on the train wall time; a pair with a published 2020 platform
only on the process user CPU time (``user_time_s``, the study's ``/usr/bin/time -v`` figure),
never on the train wall time. Where that column is missing the pair's times are not compared.

The verdict columns (``time_verdict``, ``spread_verdict``, ``map50_verdict``,
``cells_verdict``) hold ``stats.Verdict`` values about the pair's platforms A and B.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import pandas as pd

from detbench.summary import stats

# The cell frame's ``source`` of detbench's own cells (the others are published figures).
MEASURED = "measured"


@dataclasses.dataclass(frozen=True)
class TimeBasis:
    column: str
    text: str


WALL = TimeBasis("train_time_s", "train wall time")
USER = TimeBasis("user_time_s", "process user CPU time")

# Cell-frame column -> short name in the comparison (differences are platform A minus B).
METRICS = {
    "precision_at_conf": "precision",
    "recall_at_conf": "recall",
    "map50": "map50",
    "map50_95": "map50_95",
    "train_obj_loss": "obj_loss",
    "train_cls_loss": "cls_loss",
}
CELL_COLUMNS = [
    "platform_a",
    "platform_b",
    "model",
    "batch",
    "epochs",
    "time_basis",
    "time_a_s",
    "time_b_s",
    "time_ratio_a_over_b",
    "faster",
    "times_faster",
    *(f"d_{name}" for name in METRICS.values()),
    # Over the cell's repeats (detbench.summary.stats): n per platform, the time ratio's 95%
    # interval (Welch's t on log times), its p-value and verdict; the train times' coefficients
    # of variation and the Brown-Forsythe test of equal spread; mAP@0.5's difference interval.
    "n_a",
    "n_b",
    "time_ratio_ci_low",
    "time_ratio_ci_high",
    "time_p_value",
    "time_verdict",
    "time_cv_a",
    "time_cv_b",
    "spread_p_value",
    "spread_verdict",
    "d_map50_ci_low",
    "d_map50_ci_high",
    "d_map50_p_value",
    "map50_verdict",
]
SUMMARY_COLUMNS = [
    "platform_a",
    "platform_b",
    "model",
    "batch",
    "time_basis",
    "cells",
    "cells_timed",
    "median_time_ratio_a_over_b",
    "min_time_ratio",
    "max_time_ratio",
    "a_faster_cells",
    "b_faster_cells",
    *(f"median_d_{name}" for name in METRICS.values()),
    # The cells' time ratios as replicates: geometric mean, 95% t interval, verdict.
    "cells_ratio",
    "cells_ratio_ci_low",
    "cells_ratio_ci_high",
    "cells_verdict",
]
NOT_COMPARED = "not compared"
# What two cells must share to be compared: on another dataset or image size, time and
# accuracy measure another task.
SETUP_COLUMNS = ("dataset", "img_size")


def platform_sources(frame: pd.DataFrame) -> dict[str, str]:
    return dict(zip(frame["platform"], frame["source"], strict=True))


def time_basis(source_a: str, source_b: str) -> TimeBasis:
    return WALL if source_a == MEASURED and source_b == MEASURED else USER


def platform_pairs(platforms: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair, in report order (the first platform of a pair is A)."""
    return list(itertools.combinations(platforms, 2))


def cells_on_both(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Cells (model, batch, epochs) that finished on both platforms, columns suffixed _a / _b."""
    ok = frame[frame["status"] == "ok"]
    left = ok[ok["platform"] == a]
    right = ok[ok["platform"] == b]
    both = left.merge(right, on=["model", "batch", "epochs"], suffixes=("_a", "_b"))
    return both.sort_values(["model", "batch", "epochs"])


def same_setup(both: pd.DataFrame) -> pd.Series:
    """Per row of ``cells_on_both``: did the two cells train on the same dataset and size?"""
    same = pd.Series(True, index=both.index)
    for column in SETUP_COLUMNS:
        same &= both[f"{column}_a"] == both[f"{column}_b"]
    return same


def untimed_platforms(frame: pd.DataFrame, a: str, b: str, basis: TimeBasis) -> list[str]:
    """The platforms of a pair without any finished cell timed in the pair's basis."""
    return [
        p
        for p in (a, b)
        if frame.loc[(frame["platform"] == p) & (frame["status"] == "ok"), basis.column]
        .dropna()
        .empty
    ]


def compare_cells(frame: pd.DataFrame, platforms: Sequence[str]) -> pd.DataFrame:
    """One row per cell that finished on both platforms of a pair with the same setup."""
    sources = platform_sources(frame)
    rows = []
    for a, b in platform_pairs(platforms):
        basis = time_basis(sources.get(a, MEASURED), sources.get(b, MEASURED))
        both = cells_on_both(frame, a, b)
        for cell in both[same_setup(both)].itertuples(index=False):
            row = cell._asdict()
            time_a = row[f"{basis.column}_a"]
            time_b = row[f"{basis.column}_b"]
            repeats = repeat_statistics(row, basis.column, (a, b))
            ratio, faster, times = _speed(a, b, repeats.pop("time_ratio_a_over_b"))
            record = {
                "platform_a": a,
                "platform_b": b,
                "model": row["model"],
                "batch": int(row["batch"]),
                "epochs": int(row["epochs"]),
                "time_basis": basis.column,
                "time_a_s": time_a,
                "time_b_s": time_b,
                "time_ratio_a_over_b": ratio,
                "faster": faster,
                "times_faster": times,
            }
            for column, name in METRICS.items():
                record[f"d_{name}"] = row[f"{column}_a"] - row[f"{column}_b"]
            rows.append(record | repeats)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def repeat_statistics(row: dict, time_column: str, names: tuple[str, str]) -> dict[str, object]:
    """The statistics of one cell on both platforms over their runs (``row``: cells_on_both's,
    with the frame's ``<column>_runs`` tuples suffixed _a / _b). The time ratio is that of the
    geometric means (a single run's time when n = 1), NaN without a positive time on a side."""
    runs_a, runs_b = row[f"{time_column}_runs_a"], row[f"{time_column}_runs_b"]
    record: dict[str, object] = {"n_a": int(row["n_a"]), "n_b": int(row["n_b"])}
    record["time_ratio_a_over_b"] = math.nan
    if runs_a and runs_b and min(runs_a + runs_b) > 0:
        times = stats.compare_times(runs_a, runs_b, names)
        spread = stats.compare_spread(runs_a, runs_b, names)
        record |= {
            "time_ratio_a_over_b": times.ratio,
            "time_ratio_ci_low": times.ci_low,
            "time_ratio_ci_high": times.ci_high,
            "time_p_value": times.p_value,
            "time_verdict": times.verdict,
            "time_cv_a": spread.cv_a,
            "time_cv_b": spread.cv_b,
            "spread_p_value": spread.p_value,
            "spread_verdict": spread.verdict,
        }
    map_a, map_b = row["map50_runs_a"], row["map50_runs_b"]
    if map_a and map_b:
        accuracy = stats.compare_means(map_a, map_b, names)
        record |= {
            "d_map50_ci_low": accuracy.ci_low,
            "d_map50_ci_high": accuracy.ci_high,
            "d_map50_p_value": accuracy.p_value,
            "map50_verdict": accuracy.verdict,
        }
    return record


def _speed(a: str, b: str, ratio: float) -> tuple[float, str, float]:
    """Ratio A/B, which platform is faster and by what factor (NaN where not comparable)."""
    if not finite(ratio):
        return math.nan, NOT_COMPARED, math.nan
    if ratio < 1:
        return ratio, a, 1 / ratio
    if ratio > 1:
        return ratio, b, ratio
    return ratio, "equal", 1.0


def finite(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def summarise(cells: pd.DataFrame) -> pd.DataFrame:
    """Per pair, model and batch size: median time ratio, who is faster how often, median Δs."""
    rows = []
    keys = ["platform_a", "platform_b", "model", "batch"]
    for (a, b, model, batch), group in cells.groupby(keys, sort=False):
        timed = group["time_ratio_a_over_b"].dropna()
        record = {
            "platform_a": a,
            "platform_b": b,
            "model": model,
            "batch": int(batch),
            "time_basis": group["time_basis"].iloc[0],
            "cells": len(group),
            "cells_timed": len(timed),
            "median_time_ratio_a_over_b": timed.median() if len(timed) else math.nan,
            "min_time_ratio": timed.min() if len(timed) else math.nan,
            "max_time_ratio": timed.max() if len(timed) else math.nan,
            "a_faster_cells": int((group["faster"] == a).sum()),
            "b_faster_cells": int((group["faster"] == b).sum()),
        }
        for name in METRICS.values():
            record[f"median_d_{name}"] = group[f"d_{name}"].median()
        if len(timed):
            over_cells = stats.ratio_over_cells(list(timed), (a, b))
            record |= {
                "cells_ratio": over_cells.ratio,
                "cells_ratio_ci_low": over_cells.ci_low,
                "cells_ratio_ci_high": over_cells.ci_high,
                "cells_verdict": over_cells.verdict,
            }
        rows.append(record)
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


# The parts of a train job's wall time (detbench.training.timing), as summary.csv columns.
TIME_PARTS = (
    "startup_s",
    "first_epoch_extra_s",
    "steady_epochs_s",
    "interim_eval_s",
    "checkpoint_s",
)


def breakdown_differences(frame: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per cell on both measured platforms: each part of the train job's time on A and B
    (means over the runs, s) and A − B; NaN where a run record has no breakdown."""
    both = cells_on_both(frame, a, b)
    both = both[same_setup(both)]
    rows = []
    for row in both.to_dict("records"):
        record = {"model": row["model"], "batch": int(row["batch"]), "epochs": int(row["epochs"])}
        for part in TIME_PARTS:
            record[f"{part}_a"], record[f"{part}_b"] = row[f"{part}_a"], row[f"{part}_b"]
            record[f"d_{part}"] = row[f"{part}_a"] - row[f"{part}_b"]
        rows.append(record)
    return pd.DataFrame(rows)


def largest_part(row: dict) -> tuple[str, float] | None:
    """The part of the time (a TIME_PARTS column) whose A − B is largest in size, with that
    difference; None without a breakdown."""
    gaps = {p: row[f"d_{p}"] for p in TIME_PARTS if finite(row[f"d_{p}"])}
    if not gaps:
        return None
    part = max(gaps, key=lambda p: abs(gaps[p]))
    return part, gaps[part]
