"""One table of cells for the report: ``results/summary.csv`` joined with the 2020 figures.

Rows are cells (platform, model, batch, epochs); columns are detbench's summary names, so a
published figure sits in the same column as the measurement it is comparable with. Columns a
summary does not have (a cell without process resources: ``user_time_s``, ``cpu_percent``,
``max_rss_kb``, ``biggest_gpu_activity_avg_us``) are NaN and show as NA.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from detbench.errors import DetbenchError
from detbench.report import reference
from detbench.study.cells import Cell
from detbench.summary.comparison import MEASURED

KEYS = ["platform", "model", "batch", "epochs"]
# Numeric columns of the report's cell table (summary names).
NUMERIC = [
    "train_time_s",
    "user_time_s",
    "cpu_percent",
    "max_rss_kb",
    "biggest_gpu_activity_avg_us",
    "pr_confidence",
    "precision_at_conf",
    "recall_at_conf",
    "train_obj_loss",
    "train_cls_loss",
    "map50",
    "map50_95",
    "img_size",
    "eval_images",
    # Where the train job's time went (detbench.training.timing), s.
    "startup_s",
    "first_epoch_extra_s",
    "steady_epochs_s",
    "first_epoch_s",
    "interim_eval_s",
    "checkpoint_s",
]
TEXT = ["source", "status", "dataset", "weights", "eval_split", "device_name"]
COLUMNS = KEYS + TEXT + NUMERIC
# A cell's row holds the mean over its repeats and, for the statistics of the comparison,
# every run's value of these columns (a tuple in "<column>_runs"), and "n", its runs.
RUN_VALUES = ("train_time_s", "user_time_s", "map50")
RUNS = [f"{column}_runs" for column in RUN_VALUES]


def read_summary(path: str | Path) -> pd.DataFrame:
    """The measured cells of ``results/summary.csv`` as report rows (``source`` = measured)."""
    try:
        summary = pd.read_csv(path)
    except FileNotFoundError:
        raise DetbenchError(f"{path}: missing (run the workflow first)") from None
    except pd.errors.EmptyDataError:
        raise DetbenchError(f"{path}: empty file") from None
    missing = [key for key in KEYS if key not in summary.columns]
    if missing:
        raise DetbenchError(f"{path}: missing column(s) {', '.join(missing)}")
    return measured_frame(summary)


def measured_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """Summary rows (one per run) in the report's columns, one row per cell: the mean of its
    repeats' numbers, its runs' values of RUN_VALUES and their count ``n``. Absent optional
    columns become NaN."""
    frame = pd.DataFrame(index=summary.index)
    for column in COLUMNS:
        frame[column] = summary[column] if column in summary.columns else np.nan
    frame["source"] = MEASURED
    if "status" in summary.columns:  # a summary that records failed cells says so per row
        frame["status"] = summary["status"].fillna("ok").astype(str)
    else:
        frame["status"] = "ok"
    return collapse_repeats(_typed(frame))


def collapse_repeats(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (KEYS): numbers averaged over its finished runs (a failed run counts
    only when all failed), text from its first run."""
    rows = []
    for _, cell in runs.groupby(KEYS, sort=False):
        ok = cell[cell["status"] == "ok"]
        used = ok if len(ok) else cell
        row = used.iloc[0].to_dict()
        for column in NUMERIC:
            row[column] = used[column].mean()
        for column, runs_column in zip(RUN_VALUES, RUNS, strict=True):
            row[runs_column] = tuple(float(v) for v in used[column].dropna())
        row["n"] = len(used)
        rows.append(row)
    return pd.DataFrame(rows, columns=[*COLUMNS, *RUNS, "n"])


def _with_single_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Published cells are single runs: their values are their runs."""
    frame = frame.copy()
    for column, runs_column in zip(RUN_VALUES, RUNS, strict=True):
        frame[runs_column] = [
            (float(v),) if pd.notna(v) else () for v in frame[column]
        ]
    frame["n"] = 1
    return frame


def published_frame(path: str | Path | None = None) -> pd.DataFrame:
    """The 2020 study's cells in the report's columns (two platforms, ``published 2020``)."""
    frame = pd.DataFrame.from_records(reference.reference_records(path))
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = np.nan
    return _with_single_runs(_typed(frame[COLUMNS]))


def cell_frame(summary: pd.DataFrame, published: pd.DataFrame | None = None) -> pd.DataFrame:
    """Measured and published cells in one frame (measured first)."""
    parts = [measured_frame(summary) if "source" not in summary.columns else summary]
    if published is not None:
        parts.append(published)
    parts = [p if "n" in p.columns else _with_single_runs(p) for p in parts]
    frame = pd.concat([p[[*COLUMNS, *RUNS, "n"]] for p in parts], ignore_index=True)
    return _typed(frame)


def load_cells(summary_csv: str | Path, reference_csv: str | Path | None) -> pd.DataFrame:
    """The report's cell table from the summary file and the published figures."""
    return cell_frame(read_summary(summary_csv), published_frame(reference_csv))


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    frame["batch"] = frame["batch"].astype(int)
    frame["epochs"] = frame["epochs"].astype(int)
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype(float)
    for column in ["platform", "model", "source", "status"]:
        frame[column] = frame[column].astype(str)
    return frame


def ok_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Cells that finished (neither failed nor missing)."""
    return frame[frame["status"] == "ok"]


def cell_dir(results_dir: str | Path, platform: str, model: str, batch: int, epochs: int) -> Path:
    return Cell(platform, model, int(batch), int(epochs)).folder(results_dir)
