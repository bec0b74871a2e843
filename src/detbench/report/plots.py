"""The report's figures (matplotlib, Agg): PNG for report.html, SVG beside each.

Every figure tolerates missing data: a panel without values says what is not recorded (NA)
instead of drawing zeros, and a figure with nothing to draw is a placeholder that says why.
Times are never mixed: train wall time and process user CPU time get separate panels.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import matplotlib.ticker
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import ScaledTranslation

from detbench import atomic
from detbench.errors import DetbenchError
from detbench.report.comparison import missing_time_note
from detbench.report.frame import MEASURED, cell_dir, ok_cells
from detbench.report.layout import ReportLayout, slug
from detbench.report.reference import PUBLISHED
from detbench.report.spread_plots import (
    consistency_figure,
    spread_figure,
    time_breakdown_figure,
)
from detbench.study.cells import GPU_SAMPLES
from detbench.summary.comparison import (
    compare_cells,
    platform_pairs,
    platform_sources,
    time_basis,
)

# No display on cluster nodes or in CI; switching is allowed as long as no figure exists yet.
matplotlib.use("Agg")

# Of gpu_samples.csv's columns (time_s, utilization_percent, memory_used_mib, power_w), the
# ones the plots read.
GPU_SAMPLE_COLUMNS = ("time_s", "utilization_percent", "memory_used_mib")
HISTORY_LOSSES = {
    "train_box_loss": "box",
    "train_obj_loss": "objectness",
    "train_cls_loss": "classification",
    "train_total_loss": "total",
}
# Filled only at the epochs evaluated during training (train.eval_interval_epochs).
HISTORY_EVAL_LOSS = ("eval_total_loss", "total, eval split")
HISTORY_EVAL_MAP = ("eval_map50", "mAP@0.5, eval split (right axis)")
DPI = 100


# -- styles and output ---------------------------------------------------------------------


def platform_styles(platforms: Sequence[str], frame: pd.DataFrame) -> dict[str, dict[str, object]]:
    """A colour per platform; published 2020 platforms dashed with hollow markers."""
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    sources = platform_sources(frame)
    styles = {}
    for index, platform in enumerate(platforms):
        published = sources.get(platform) == PUBLISHED
        styles[platform] = {
            "color": colours[index % len(colours)],
            "linestyle": "--" if published else "-",
            "marker": "s" if published else "o",
            "markerfacecolor": "none" if published else colours[index % len(colours)],
        }
    return styles


def save_figure(figure: Figure, png_path: str | Path) -> None:
    """Write the figure as PNG and, beside it, SVG; atomically, then close it."""
    png_path = Path(png_path)
    for path, fmt in ((png_path, "png"), (png_path.with_suffix(".svg"), "svg")):
        buffer = io.BytesIO()
        figure.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight")
        atomic.write_bytes(path, buffer.getvalue())
    plt.close(figure)


def placeholder_figure(title: str, message: str) -> Figure:
    figure, axes = plt.subplots(figsize=(8, 3))
    axes.set_axis_off()
    axes.set_title(title)
    axes.text(0.5, 0.5, message, ha="center", va="center", wrap=True, fontsize=10)
    return figure


def _empty_panel(axes: Axes, message: str) -> None:
    axes.text(
        0.5,
        0.5,
        message,
        ha="center",
        va="center",
        transform=axes.transAxes,
        fontsize=9,
        color="#64748b",
        wrap=True,
    )
    axes.set_xticks([])
    axes.set_yticks([])


def _finish(figure: Figure, axes_list: Sequence[Axes], notes: Sequence[str] = ()) -> None:
    """Lay the figure out, then hang the legend and the notes below it (``bbox_inches``
    "tight" at saving keeps them), so neither covers data."""
    figure.tight_layout()
    handles, labels = {}, []
    for axes in axes_list:
        for handle, label in zip(*axes.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    ncol = min(len(labels), 4)
    if labels:
        figure.legend(
            [handles[label] for label in labels],
            labels,
            loc="upper center",
            ncol=ncol,
            bbox_to_anchor=(0.5, 0.0),
            frameon=False,
        )
    notes = list(dict.fromkeys(notes))
    if notes:
        # Below the legend: about 22 points per legend row.
        drop = (22 * math.ceil(len(labels) / ncol) + 4) / 72 if labels else 0.0
        shift = ScaledTranslation(0, -drop, figure.dpi_scale_trans)
        figure.text(
            0.01,
            0.0,
            "\n".join(notes),
            fontsize=8,
            color="#475569",
            va="top",
            transform=figure.transFigure + shift,
        )


def _na_notes(cells: pd.DataFrame, column: str, what: str, model: str | None = None) -> list[str]:
    """'NA' notes for platforms with finished cells here but no value in ``column``."""
    ok = ok_cells(cells)
    lacking = [p for p, group in ok.groupby("platform", sort=False) if group[column].isna().all()]
    where = f" ({model})" if model else ""
    return [f"NA, not recorded{where}: {what} of {', '.join(lacking)}"] if lacking else []


def _failed(cells: pd.DataFrame, model: str | None = None) -> list[str]:
    failed = cells[cells["status"] != "ok"]
    where = f"{model}, " if model else ""
    return [
        f"{r.status}: {r.platform}, {where}batch {r.batch}, {r.epochs} epochs (not drawn)"
        for r in failed.itertuples()
    ]


def _line(axes: Axes, x: Sequence[float], y: Sequence[float], platform: str, style: dict) -> None:
    axes.plot(x, y, label=platform, **style)


# -- train time ------------------------------------------------------------------------------


TIME_ROWS = (
    ("train_time_s", "train wall time (s)"),
    ("user_time_s", "process user CPU time (s)"),
)


def train_time_figure(
    frame: pd.DataFrame, platforms: Sequence[str], models: Sequence[str], batch: int
) -> Figure:
    """Time vs epochs at one batch size: a column per model, a line per platform."""
    styles = platform_styles(platforms, frame)
    figure, grid = plt.subplots(
        len(TIME_ROWS), len(models), figsize=(4.2 * len(models), 6.4), squeeze=False
    )
    notes: list[str] = []
    for col, model in enumerate(models):
        cells = frame[(frame["model"] == model) & (frame["batch"] == batch)]
        for row, (column, label) in enumerate(TIME_ROWS):
            axes = grid[row][col]
            drawn = _lines_vs_epochs(axes, cells, platforms, column, styles)
            axes.set_title(f"{model}, batch {batch}", fontsize=10)
            axes.set_ylabel(label)
            axes.set_xlabel("epochs")
            if not drawn:
                _empty_panel(axes, f"no {label.rsplit(' (', 1)[0]} recorded at batch {batch}")
            notes += _na_notes(cells, column, label, model)
        notes += _failed(cells, model)
    figure.suptitle(f"Training time vs epochs, batch size {batch}")
    _finish(figure, grid.ravel(), notes)
    return figure


def _lines_vs_epochs(
    axes: Axes,
    cells: pd.DataFrame,
    platforms: Sequence[str],
    column: str,
    styles: dict[str, dict],
) -> bool:
    drawn = False
    axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ok = ok_cells(cells).dropna(subset=[column])
    for platform in platforms:
        points = ok[ok["platform"] == platform].sort_values("epochs")
        if points.empty:
            continue
        _line(axes, points["epochs"], points[column], platform, styles[platform])
        drawn = True
    return drawn


# -- accuracy --------------------------------------------------------------------------------


ACCURACY_PANELS = (
    ("precision_at_conf", "precision (conf 0.1, IoU 0.5)"),
    ("recall_at_conf", "recall (conf 0.1, IoU 0.5)"),
    ("map50", "mAP@0.5"),
    ("map50_95", "mAP@0.5:0.95"),
)


def accuracy_figure(
    frame: pd.DataFrame, platforms: Sequence[str], model: str, batch: int
) -> Figure:
    """Precision, recall and mAP vs epochs for one model and batch size, a line per platform."""
    styles = platform_styles(platforms, frame)
    cells = frame[(frame["model"] == model) & (frame["batch"] == batch)]
    confidences = sorted(set(ok_cells(cells)["pr_confidence"].dropna()))
    figure, grid = plt.subplots(1, len(ACCURACY_PANELS), figsize=(15, 4), squeeze=False)
    notes: list[str] = []
    for axes, (column, label) in zip(grid[0], ACCURACY_PANELS, strict=True):
        if column in ("precision_at_conf", "recall_at_conf") and len(confidences) > 1:
            label = label.replace("conf 0.1", "conf " + "/".join(f"{c:g}" for c in confidences))
        drawn = _lines_vs_epochs(axes, cells, platforms, column, styles)
        axes.set_title(label, fontsize=10)
        axes.set_xlabel("epochs")
        axes.set_ylim(-0.02, 1.02)
        if not drawn:
            _empty_panel(axes, f"no {label} at batch {batch}")
        notes += _na_notes(cells, column, label)
    figure.suptitle(
        f"{model}, batch {batch}: accuracy vs epochs (measured platforms: evaluation split; "
        "published 2020: validation)"
    )
    _finish(figure, grid.ravel(), notes + _failed(cells))
    return figure


# -- loss curves -----------------------------------------------------------------------------


def read_history(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    history = pd.read_csv(path)
    if "epoch" not in history.columns:
        raise DetbenchError(f"{path}: no 'epoch' column (not a detbench history.csv)")
    return history


def _plot_interim_evaluation(axes: Axes, history: pd.DataFrame) -> None:
    """The eval split's total loss beside the training losses, and its mAP@0.5 on a right axis,
    at the epochs that were evaluated during training (none: nothing drawn)."""
    column, label = HISTORY_EVAL_LOSS
    if column in history.columns and history[column].notna().any():
        rows = history.dropna(subset=[column])
        axes.plot(rows["epoch"], rows[column], marker="o", linestyle="--", label=label)
    column, label = HISTORY_EVAL_MAP
    if column in history.columns and history[column].notna().any():
        rows = history.dropna(subset=[column])
        right = axes.twinx()
        right.plot(rows["epoch"], rows[column], marker="s", linestyle=":", color="black",
                   label=label)
        right.set_ylim(0, 1)
        right.tick_params(labelsize=8)


def loss_figure(frame: pd.DataFrame, results_dir: str | Path, platform: str, model: str) -> Figure:
    """Per-cell training loss curves of one platform × model: a panel per cell (batch × epochs)."""
    cells = ok_cells(frame)
    cells = cells[(cells["platform"] == platform) & (cells["model"] == model)]
    if cells.empty:
        return placeholder_figure(
            f"Loss curves, {platform} — {model}", f"No finished cell of {model} on {platform}."
        )
    batches = sorted(cells["batch"].unique())
    epochs = sorted(cells["epochs"].unique())
    figure, grid = plt.subplots(
        len(batches),
        len(epochs),
        figsize=(3.4 * len(epochs), 2.6 * len(batches) + 0.8),
        squeeze=False,
    )
    present = {(int(r.batch), int(r.epochs)) for r in cells.itertuples()}
    for i, batch in enumerate(batches):
        for j, n_epochs in enumerate(epochs):
            axes = grid[i][j]
            axes.set_title(f"batch {batch}, {n_epochs} epochs", fontsize=9)
            if (batch, n_epochs) not in present:
                _empty_panel(axes, "no result")
                continue
            path = cell_dir(results_dir, platform, model, batch, n_epochs) / "history.csv"
            history = read_history(path)
            if history is None:
                _empty_panel(axes, "no history.csv")
                continue
            for column, label in HISTORY_LOSSES.items():
                if column in history.columns:
                    axes.plot(history["epoch"], history[column], marker=".", label=label)
            _plot_interim_evaluation(axes, history)
            axes.set_xlabel("epoch", fontsize=8)
            axes.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            axes.tick_params(labelsize=8)
    figure.suptitle(
        f"Training loss per epoch (mean over the epoch's batches), {platform} — {model}"
    )
    _finish(figure, figure.axes)  # with the right-hand axes of interim mAPs, if any
    return figure


RATIO_TICKS = (0.125, 0.25, 0.5, 0.67, 0.8, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 4.0, 8.0)


# -- platform speed ratio --------------------------------------------------------------------


def speed_ratio_figure(frame: pd.DataFrame, platforms: Sequence[str], model: str) -> Figure:
    """Heatmaps of time on A / time on B over batch × epochs, a panel per comparable pair."""
    cells = compare_cells(frame, platforms)
    cells = cells[(cells["model"] == model)].dropna(subset=["time_ratio_a_over_b"])
    sources = platform_sources(frame)
    pairs = [
        (a, b)
        for a, b in platform_pairs(platforms)
        if not cells[(cells["platform_a"] == a) & (cells["platform_b"] == b)].empty
    ]
    if not pairs:
        reasons = [
            note
            for a, b in platform_pairs(platforms)
            if (
                note := missing_time_note(
                    frame, a, b, time_basis(sources.get(a, MEASURED), sources.get(b, MEASURED))
                )
            )
        ]
        message = f"No pair of platforms has comparable times for {model}."
        if reasons:
            message += "\n" + reasons[0]
        return placeholder_figure(f"Platform speed ratio, {model}", message)
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    figure, grid = plt.subplots(
        nrows, ncols, figsize=(6.0 * ncols, 4.2 * nrows), squeeze=False, layout="constrained"
    )
    # Colours on a log scale, symmetric around 1: twice as fast and twice as slow look alike.
    limit = max(abs(np.log2(cells["time_ratio_a_over_b"])).max(), 0.1)
    image = None
    for axes, (a, b) in zip(grid.ravel(), pairs, strict=False):
        pair = cells[(cells["platform_a"] == a) & (cells["platform_b"] == b)]
        batches = sorted(pair["batch"].unique())
        epochs = sorted(pair["epochs"].unique())
        matrix = np.full((len(batches), len(epochs)), np.nan)
        for r in pair.itertuples():
            matrix[batches.index(r.batch), epochs.index(r.epochs)] = r.time_ratio_a_over_b
        image = axes.imshow(np.log2(matrix), cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")
        for (i, j), value in np.ndenumerate(matrix):
            axes.text(
                j,
                i,
                "n/a" if np.isnan(value) else f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
            )
        axes.set_xticks(range(len(epochs)), [str(e) for e in epochs])
        axes.set_yticks(range(len(batches)), [str(b) for b in batches])
        axes.set_xlabel("epochs")
        axes.set_ylabel("batch size")
        basis = time_basis(sources.get(a, MEASURED), sources.get(b, MEASURED))
        axes.set_title(f"{model}: time on {a}\n/ time on {b} ({basis.text})", fontsize=9)
    for axes in grid.ravel()[len(pairs) :]:
        axes.set_axis_off()
    if image is not None:
        bar = figure.colorbar(image, ax=grid.ravel().tolist(), shrink=0.8)
        ratios = [r for r in RATIO_TICKS if abs(math.log2(r)) <= limit + 1e-9]
        bar.set_ticks([math.log2(r) for r in ratios], labels=[f"{r:g}" for r in ratios])
        bar.set_label("time ratio A / B (below 1: A is faster)")
    return figure


# -- memory ----------------------------------------------------------------------------------


def gpu_memory_peaks(frame: pd.DataFrame, results_dir: str | Path) -> pd.Series:
    """Peak GPU memory (MiB) of each measured cell from its gpu_samples.csv; NaN without."""
    peaks = []
    for row in frame.itertuples():
        peak = math.nan
        if row.source == MEASURED and row.status == "ok":
            path = cell_dir(results_dir, row.platform, row.model, row.batch, row.epochs)
            samples = read_gpu_samples(path / GPU_SAMPLES)
            if samples is not None and samples["memory_used_mib"].notna().any():
                peak = float(samples["memory_used_mib"].max())
        peaks.append(peak)
    return pd.Series(peaks, index=frame.index, dtype=float)


MEMORY_PANELS = (
    ("max_rss_gib", "max RSS of the training process (GiB)"),
    ("gpu_memory_max_mib", "peak GPU memory used (MiB)"),
)


def memory_figure(frame: pd.DataFrame, platforms: Sequence[str], model: str) -> Figure:
    """Max RSS and peak GPU memory vs batch size (max over each batch size's epochs)."""
    styles = platform_styles(platforms, frame)
    cells = ok_cells(frame[frame["model"] == model]).copy()
    cells["max_rss_gib"] = cells["max_rss_kb"] / 1024**2
    if "gpu_memory_max_mib" not in cells.columns:
        cells["gpu_memory_max_mib"] = np.nan
    figure, grid = plt.subplots(1, len(MEMORY_PANELS), figsize=(11, 4), squeeze=False)
    notes: list[str] = []
    for axes, (column, label) in zip(grid[0], MEMORY_PANELS, strict=True):
        drawn = False
        for platform in platforms:
            points = cells[cells["platform"] == platform].dropna(subset=[column])
            if points.empty:
                continue
            peak = points.groupby("batch")[column].max()
            _line(axes, peak.index, peak.values, platform, styles[platform])
            drawn = True
        axes.set_title(label, fontsize=10)
        axes.set_xlabel("batch size")
        if drawn:
            axes.set_xscale("log", base=2)
            axes.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        else:
            _empty_panel(axes, f"no {label.split(' (')[0]} recorded for {model}")
        notes += _na_notes(cells, column, label.split(" (")[0])
    figure.suptitle(f"{model}: memory vs batch size (max over the epochs of each batch size)")
    _finish(figure, grid.ravel(), notes)
    return figure


# -- GPU utilisation -------------------------------------------------------------------------


def read_gpu_samples(path: Path) -> pd.DataFrame | None:
    """A cell's GPU samples (gpu_samples.csv), or None when the cell has none."""
    if not path.exists():
        return None
    samples = pd.read_csv(path)
    missing = [c for c in GPU_SAMPLE_COLUMNS if c not in samples.columns]
    if missing:
        raise DetbenchError(f"{path}: missing column(s) {', '.join(missing)}")
    return samples


def longest_cell(frame: pd.DataFrame, platform: str) -> pd.Series | None:
    cells = ok_cells(frame)
    cells = cells[(cells["platform"] == platform)].dropna(subset=["train_time_s"])
    if cells.empty:
        return None
    return cells.loc[cells["train_time_s"].idxmax()]


def gpu_utilisation_figure(frame: pd.DataFrame, results_dir: str | Path, platform: str) -> Figure:
    title = f"GPU utilisation over time, longest cell on {platform}"
    cell = longest_cell(frame, platform)
    if cell is None:
        return placeholder_figure(title, f"No finished cell with a train time on {platform}.")
    folder = cell_dir(results_dir, platform, cell["model"], cell["batch"], cell["epochs"])
    name = f"{cell['model']} batch {cell['batch']}, {cell['epochs']} epochs"
    samples = read_gpu_samples(folder / GPU_SAMPLES)
    if samples is None or samples.empty:
        return placeholder_figure(
            title,
            f"No GPU samples for the longest cell ({name}, train wall time "
            f"{cell['train_time_s']:.1f} s):\n{folder / GPU_SAMPLES} is not there "
            "(a CPU platform, or a run without GPU sampling).",
        )
    figure, axes = plt.subplots(figsize=(10, 4))
    axes.plot(
        samples["time_s"],
        samples["utilization_percent"],
        color="tab:blue",
        label="GPU utilisation (%)",
    )
    axes.set_ylim(0, 105)
    axes.set_xlabel("time since the job's start (s)")
    axes.set_ylabel("GPU utilisation (%)")
    memory = axes.twinx()
    memory.plot(
        samples["time_s"],
        samples["memory_used_mib"],
        color="tab:orange",
        label="GPU memory used (MiB)",
    )
    memory.set_ylabel("GPU memory used (MiB)")
    axes.set_title(f"{title}: {name}", fontsize=10)
    _finish(figure, [axes, memory])
    return figure


# -- all figures of the report ---------------------------------------------------------------


def write_plots(
    frame: pd.DataFrame,
    layout: ReportLayout,
    results_dir: str | Path,
    runs: pd.DataFrame | None = None,
) -> None:
    """Every figure of ``layout``; ``runs``: the summary's rows (one per run), for the time
    breakdown (without them, its figures say there is none)."""
    runs = pd.DataFrame() if runs is None else runs
    for model in layout.models:
        figure = spread_figure(frame, layout.measured, model)
        save_figure(figure, layout.plot_path(f"spread_{model}"))
    save_figure(consistency_figure(frame, layout.measured), layout.plot_path("consistency"))
    for platform in layout.measured:
        figure = time_breakdown_figure(runs, platform)
        save_figure(figure, layout.plot_path(f"time_breakdown_{slug(platform)}"))
    frame = frame.copy()
    frame["gpu_memory_max_mib"] = gpu_memory_peaks(frame, results_dir)
    platforms = layout.platforms
    for batch in layout.batch_sizes:
        figure = train_time_figure(frame, platforms, layout.models, batch)
        save_figure(figure, layout.plot_path(f"train_time_b{batch}"))
    for model in layout.models:
        for batch in layout.batch_sizes:
            figure = accuracy_figure(frame, platforms, model, batch)
            save_figure(figure, layout.plot_path(f"accuracy_{model}_b{batch}"))
    for platform in layout.measured:
        for model in layout.measured_models[platform]:
            figure = loss_figure(frame, results_dir, platform, model)
            save_figure(figure, layout.plot_path(f"loss_{slug(platform)}_{model}"))
    for model in layout.models:
        save_figure(
            speed_ratio_figure(frame, platforms, model), layout.plot_path(f"speed_ratio_{model}")
        )
        save_figure(memory_figure(frame, platforms, model), layout.plot_path(f"memory_{model}"))
    for platform in layout.measured:
        figure = gpu_utilisation_figure(frame, results_dir, platform)
        save_figure(figure, layout.plot_path(f"gpu_utilisation_{slug(platform)}"))
