"""``results/summary_stats.csv``: one row per cell (platform, model, batch, epochs) over its
repeats, with n and, for each metric below, its mean, standard deviation, min, median, max,
coefficient of variation and 95% confidence interval of the mean (detbench.summary.stats).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.summary.csv_table import csv_text
from detbench.summary.stats import describe

CELL_KEYS = ("platform", "dataset", "img_size", "model", "batch", "epochs")
# Summary column -> what it is, for the statistics' descriptions.
METRICS: dict[str, str] = {
    "train_time_s": "training time (s, sum of epoch wall times)",
    "user_time_s": "train job user CPU time (s)",
    "max_rss_kb": "train job peak resident set of its largest process (kB)",
    "map50": "mAP@0.5 on eval_split (COCO 101-point AP)",
    "map50_95": "mAP@0.5:0.95 on eval_split",
    "precision_at_conf": "precision on eval_split at confidence pr_confidence, IoU 0.5",
    "recall_at_conf": "recall on eval_split at confidence pr_confidence, IoU 0.5",
    "time_to_target_s": "seconds to target_map50 (training and interim evaluation)",
    "cost_to_target": "cost to target_map50 (time_to_target_s x gpu_hour_price)",
}
STATISTICS: dict[str, str] = {
    "mean": "mean over the cell's runs",
    "std": "sample standard deviation over the runs (ddof 1; NA with one run)",
    "min": "smallest run",
    "median": "median run",
    "max": "largest run",
    "cv": "coefficient of variation, std / mean (NA with one run)",
    "ci_low": "lower end of the 95% Student-t confidence interval of the mean (NA with one run)",
    "ci_high": "upper end of the 95% Student-t confidence interval of the mean",
}
TRIMMED = (
    "train_time_s_trimmed_mean",
    "MLPerf-style aggregate: mean train time without the fastest and slowest run (n >= 5)",
)


def stats_columns() -> dict[str, str]:
    """Every column of summary_stats.csv -> what it holds."""
    columns = {key: f"{key} of the cell (as in summary.csv)" for key in CELL_KEYS}
    columns["n"] = "runs of the cell in summary.csv (its repeats)"
    for metric, meaning in METRICS.items():
        for statistic, how in STATISTICS.items():
            columns[f"{metric}_{statistic}"] = f"{meaning}: {how}"
        if metric == "train_time_s":
            columns[TRIMMED[0]] = TRIMMED[1]
    return columns


def cell_stats_rows(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per cell of the summary's ``rows`` (one per run), in first-seen order."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(tuple(row.get(key) for key in CELL_KEYS), []).append(row)
    result = []
    for key, runs in groups.items():
        out: dict[str, Any] = dict(zip(CELL_KEYS, key, strict=True))
        out["n"] = len(runs)
        for metric in METRICS:
            summary = describe([_number(run.get(metric)) for run in runs])
            for statistic in STATISTICS:
                out[f"{metric}_{statistic}"] = getattr(summary, statistic) if summary else None
            if metric == "train_time_s":
                out[TRIMMED[0]] = summary.trimmed_mean if summary else None
        result.append(out)
    return result


def write_cell_stats(rows: Iterable[Mapping[str, Any]], path: str | Path) -> list[dict[str, Any]]:
    stats_rows = cell_stats_rows(rows)
    atomic.write_text(path, csv_text(stats_rows, list(stats_columns())))
    return stats_rows


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
