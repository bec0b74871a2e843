"""Figures of the repeats: every run as a point with the mean and its 95% interval, the
consistency of train times (CV per cell and platform), and where each cell's train job spent
its time (start-up, first epoch's extra, epochs, evaluation, checkpoints)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from detbench.report.frame import MEASURED, ok_cells
from detbench.summary.stats import describe

SPREAD_PANELS = (
    ("train_time_s_runs", "train wall time (s)"),
    ("map50_runs", "mAP@0.5 on the evaluation split"),
)
BREAKDOWN_PARTS = (
    ("startup_s", "start-up"),
    ("first_epoch_extra_s", "first epoch's extra"),
    ("epochs_s", "epochs (steady)"),
    ("interim_eval_s", "evaluation during training"),
    ("checkpoint_s", "checkpoints"),
)


def _measured(frame: pd.DataFrame, platforms: Sequence[str]) -> pd.DataFrame:
    cells = ok_cells(frame)
    return cells[(cells["source"] == MEASURED) & cells["platform"].isin(platforms)]


def spread_figure(frame: pd.DataFrame, platforms: Sequence[str], model: str) -> Figure:
    """Per panel, x = epochs: each run a small point, the mean a line with its 95% t interval
    (none with a single run), one line per platform and batch size."""
    cells = _measured(frame, platforms)
    cells = cells[cells["model"] == model]
    figure, axes_list = plt.subplots(1, len(SPREAD_PANELS), figsize=(11, 4.2))
    for axes, (column, label) in zip(axes_list, SPREAD_PANELS, strict=True):
        for (platform, batch), group in cells.groupby(["platform", "batch"], sort=False):
            group = group.sort_values("epochs")
            means, lows, highs, points = [], [], [], []
            for row in group.itertuples(index=False):
                runs = getattr(row, column)
                points += [(row.epochs, value) for value in runs]
                summary = describe(runs)
                means.append(summary.mean if summary else np.nan)
                lows.append(summary.ci_low if summary and summary.ci_low is not None else np.nan)
                highs.append(summary.ci_high if summary and summary.ci_high is not None else np.nan)
            n = "/".join(str(v) for v in sorted(set(group["n"])))
            errors = [np.subtract(means, lows), np.subtract(highs, means)]
            line = axes.errorbar(group["epochs"], means, yerr=errors, capsize=3, marker="o",
                                 label=f"{platform} b{batch} (n = {n})")
            if points:
                x, y = zip(*points, strict=True)
                axes.scatter(x, y, s=12, alpha=0.45, color=line.lines[0].get_color())
        axes.set_xlabel("epochs")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
        if axes.has_data():
            axes.legend(fontsize=7)
    figure.suptitle(
        f"{model}: every run (points), mean and 95% confidence interval of the mean (bars); "
        "n = runs per cell"
    )
    figure.tight_layout()
    return figure


def consistency_figure(frame: pd.DataFrame, platforms: Sequence[str]) -> Figure:
    """Coefficient of variation of train time (%) per cell and platform, cells with 2+ runs."""
    cells = _measured(frame, platforms)
    cells = cells[cells["n"] >= 2]
    figure, axes = plt.subplots(figsize=(10, 4.2))
    if cells.empty:
        axes.text(0.5, 0.5, "no cell has 2 or more runs: no spread to show (config repeats)",
                  ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return figure
    labels = list(dict.fromkeys(
        f"{r.model} b{r.batch} e{r.epochs}" for r in cells.itertuples(index=False)
    ))
    present = list(dict.fromkeys(cells["platform"]))
    width = 0.8 / len(present)
    for i, platform in enumerate(present):
        values, ns = {}, {}
        for row in cells[cells["platform"] == platform].itertuples(index=False):
            summary = describe(row.train_time_s_runs)
            key = f"{row.model} b{row.batch} e{row.epochs}"
            values[key] = 100 * summary.cv if summary and summary.cv is not None else np.nan
            ns[key] = row.n
        x = np.arange(len(labels)) + i * width
        heights = [values.get(label, np.nan) for label in labels]
        n_text = "/".join(str(n) for n in sorted(set(ns.values())))
        axes.bar(x, heights, width, label=f"{platform} (n = {n_text} runs per cell)")
    axes.set_xticks(np.arange(len(labels)) + 0.4 - width / 2, labels, rotation=30, ha="right",
                    fontsize=8)
    axes.set_ylabel("CV of train wall time (%)")
    axes.set_title("Consistency: standard deviation / mean of a cell's train times (lower is "
                   "steadier)")
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure


def breakdown_table(runs: pd.DataFrame, platform: str) -> pd.DataFrame:
    """Per cell of ``platform`` (summary rows, one per run): the mean seconds of each part."""
    rows = runs[runs["platform"] == platform].copy()
    for column in ("startup_s", "first_epoch_s", "first_epoch_extra_s", "steady_epochs_s",
                   "interim_eval_s", "checkpoint_s"):
        rows[column] = pd.to_numeric(rows.get(column), errors="coerce")
    extra = rows["first_epoch_extra_s"].fillna(0.0)
    rows["first_epoch_extra_s"] = extra
    rows["epochs_s"] = rows["first_epoch_s"] - extra + rows["steady_epochs_s"].fillna(0.0)
    parts = [part for part, _ in BREAKDOWN_PARTS]
    table = rows.groupby(["model", "batch", "epochs"], sort=True)[parts].mean()
    table["n"] = rows.groupby(["model", "batch", "epochs"], sort=True).size()
    return table.reset_index()


def time_breakdown_figure(runs: pd.DataFrame, platform: str) -> Figure:
    """A stacked bar per cell: where its train job's time went (means over its runs)."""
    figure, axes = plt.subplots(figsize=(10, 4.2))
    table = breakdown_table(runs, platform) if "startup_s" in runs.columns else pd.DataFrame()
    if table.empty or table["epochs_s"].isna().all():
        axes.text(0.5, 0.5, f"{platform}: no time breakdown in its run records",
                  ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
        return figure
    labels = [f"{r.model} b{r.batch} e{r.epochs} (n = {r.n})" for r in table.itertuples()]
    bottom = np.zeros(len(table))
    for part, label in BREAKDOWN_PARTS:
        values = table[part].fillna(0.0).to_numpy()
        axes.bar(labels, values, bottom=bottom, label=label)
        bottom += values
    axes.set_ylabel("seconds (mean over the cell's runs)")
    axes.set_title(f"{platform}: where each train job's time went")
    axes.tick_params(axis="x", labelrotation=30, labelsize=8)
    axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    return figure
