"""Platforms side by side: for every cell present on two platforms, time ratio and differences.

Like with like: two cells are compared only when both trained on the same dataset at the same
image size (a demo on synthetic images is not set against the 2020 study's BCCD runs). Two
measured platforms are compared on the train wall time; a pair with a published 2020 platform
only on the process user CPU time (``user_time_s``, the study's ``/usr/bin/time -v`` figure),
never on the train wall time. Where that column is missing the pair's times are not compared,
and the comparison says so.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detbench import atomic
from detbench.report.document import Document
from detbench.report.frame import MEASURED, ok_cells
from detbench.report.layout import ReportLayout
from detbench.report.reference import PUBLISHED, SETUP
from detbench.report.setups import setup_sentence
from detbench.summary import stats


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
METRIC_HEADERS = {
    "precision": "Δ precision",
    "recall": "Δ recall",
    "map50": "Δ mAP@0.5",
    "map50_95": "Δ mAP@0.5:0.95",
    "obj_loss": "Δ objectness loss",
    "cls_loss": "Δ classification loss",
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
    # interval
    # (Welch's t on log times), its p-value and verdict; the train times' coefficients of
    # variation and the Brown-Forsythe test of equal spread; mAP@0.5's difference interval.
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
    ok = ok_cells(frame)
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


def setup_note(frame: pd.DataFrame, a: str, b: str) -> str | None:
    """Why cells that finished on both platforms are left out, or None when none is."""
    both = cells_on_both(frame, a, b)
    unlike = both[~same_setup(both)]
    if unlike.empty:
        return None
    return (
        f"{cell_count(len(unlike))} finished on both but not compared: {a} trained on "
        f"{_setups(unlike, 'a')}, {b} on {_setups(unlike, 'b')}; cells are compared only on "
        "the same dataset and image size."
    )


def cell_count(count: int) -> str:
    return "1 cell" if count == 1 else f"{count} cells"


def _setups(cells: pd.DataFrame, side: str) -> str:
    pairs = cells[[f"dataset_{side}", f"img_size_{side}"]].drop_duplicates()
    return " and ".join(
        f"{dataset} at {_pixels(size)}" for dataset, size in pairs.itertuples(index=False)
    )


def _pixels(size: float) -> str:
    return f"{size:g} px" if _finite(size) else "an unknown image size"


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
    if not _finite(ratio):
        return math.nan, NOT_COMPARED, math.nan
    if ratio < 1:
        return ratio, a, 1 / ratio
    if ratio > 1:
        return ratio, b, ratio
    return ratio, "equal", 1.0


def _finite(value: object) -> bool:
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


def missing_time_note(frame: pd.DataFrame, a: str, b: str, basis: TimeBasis) -> str | None:
    """Why a pair's times are not compared, or None when at least one cell is timed."""
    lacking = [
        p
        for p in (a, b)
        if frame.loc[(frame["platform"] == p) & (frame["status"] == "ok"), basis.column]
        .dropna()
        .empty
    ]
    if not lacking:
        return None
    names = " and ".join(lacking)
    if basis is USER:
        return (
            f"Times not compared: {names} has no user time (user_time_s) recorded. The 2020 "
            "figure is the user CPU time of the whole training process, so it is compared "
            "only with the same measurement, never with the train wall time."
        )
    return f"Times not compared: {names} has no train wall time (train_time_s) recorded."


def comparison_document(
    frame: pd.DataFrame,
    platforms: Sequence[str],
    cells: pd.DataFrame | None = None,
    summary: pd.DataFrame | None = None,
) -> Document:
    cells = compare_cells(frame, platforms) if cells is None else cells
    summary = summarise(cells) if summary is None else summary
    sources = platform_sources(frame)
    measured = [p for p in platforms if sources.get(p, MEASURED) == MEASURED]
    published = [p for p in platforms if sources.get(p) == PUBLISHED]
    document = Document("Platform comparison")
    document.paragraph(presence_sentence(measured, published))
    document.note(
        "Time ratio = time on A / time on B (below 1: A is faster); × faster = slower time / "
        "faster time. Two measured platforms are compared on the train wall time (sum of epoch "
        "wall times); a pair with a published 2020 platform on the process user CPU time "
        "(/usr/bin/time -v, whole training process), the only time the study published."
    )
    document.note(
        "Δ = A − B. Precision and recall are read at confidence 0.1 (IoU 0.5) on both sides by "
        "default; a measured platform and a published one also differ in dataset, image size "
        f"and starting weights unless the config repeats the 2020 setup ({SETUP['dataset']}, "
        f"{SETUP['img_size']} px, {SETUP['weights']}), and the published losses come from "
        "ultralytics/yolov3 v9's code."
    )
    for a, b in platform_pairs(platforms):
        _pair_section(document, frame, cells, summary, a, b)
    return document


def presence_sentence(measured: Sequence[str], published: Sequence[str]) -> str:
    if not measured:
        return "No measured platform is present: only the published 2020 figures are compared."
    published_text = ", ".join(published) if published else "none"
    if len(measured) == 1:
        return (
            f"Only one platform is present: {measured[0]} is the only measured platform under "
            "results/, so there is no second measured platform to compare it with (copy another "
            "platform's results/<platform>/ folder beside it and rebuild the summary and the "
            f"report to compare). Below, it is compared with the published 2020 figures "
            f"({published_text})."
        )
    return f"Measured platforms: {', '.join(measured)}. Published 2020 platforms: {published_text}."


def _pair_section(
    document: Document,
    frame: pd.DataFrame,
    cells: pd.DataFrame,
    summary: pd.DataFrame,
    a: str,
    b: str,
) -> None:
    sources = platform_sources(frame)
    basis = time_basis(sources.get(a, MEASURED), sources.get(b, MEASURED))
    document.heading(f"A = {a}, B = {b}")
    document.paragraph(setup_sentence(frame, a, b))
    pair_cells = cells[(cells["platform_a"] == a) & (cells["platform_b"] == b)]
    unlike = setup_note(frame, a, b)
    if pair_cells.empty:
        document.paragraph(unlike or "No cell finished on both platforms: nothing to compare.")
        return
    document.paragraph(f"{cell_count(len(pair_cells))} finished on both; time basis: {basis.text}.")
    for note in (unlike, missing_time_note(frame, a, b, basis)):
        if note:
            document.note(note)
    pair_summary = summary[(summary["platform_a"] == a) & (summary["platform_b"] == b)]
    document.heading("Per model and batch size", level=3)
    document.table(
        [
            "Model",
            "Batch",
            "Cells",
            f"Median time ratio A/B ({basis.text})",
            "Range",
            "A faster (cells)",
            "B faster (cells)",
            *(f"Median {METRIC_HEADERS[n]}" for n in METRICS.values()),
        ],
        [
            [
                row.model,
                str(row.batch),
                str(row.cells),
                _fmt(row.median_time_ratio_a_over_b, ".3g"),
                _range(row.min_time_ratio, row.max_time_ratio),
                str(row.a_faster_cells),
                str(row.b_faster_cells),
                *(_fmt(getattr(row, f"median_d_{n}"), "+.3g") for n in METRICS.values()),
            ]
            for row in pair_summary.itertuples(index=False)
        ],
    )
    document.heading("Per cell", level=3)
    document.table(
        [
            "Model",
            "Batch",
            "Epochs",
            "Time A (s)",
            "Time B (s)",
            "Ratio A/B",
            "Faster",
            "× faster",
            *(METRIC_HEADERS[n] for n in METRICS.values()),
        ],
        [
            [
                row.model,
                str(row.batch),
                str(row.epochs),
                _fmt(row.time_a_s, ".2f"),
                _fmt(row.time_b_s, ".2f"),
                _fmt(row.time_ratio_a_over_b, ".3g"),
                row.faster,
                _fmt(row.times_faster, ".3g"),
                *(_fmt(getattr(row, f"d_{n}"), "+.3g") for n in METRICS.values()),
            ]
            for row in pair_cells.itertuples(index=False)
        ],
    )
    _repeats_tables(document, pair_cells, pair_summary, basis)
    if basis is WALL:
        _breakdown_table(document, frame, a, b)


def _repeats_tables(
    document: Document, pair_cells: pd.DataFrame, pair_summary: pd.DataFrame, basis: TimeBasis
) -> None:
    """Whether the differences are real: the cells over their repeats, and each model and batch
    over its cells."""
    document.heading("Over the repeats: is the difference real?", level=3)
    document.note(
        f"n = runs of the cell per platform. Ratio A/B of the geometric mean {basis.text}s, "
        "with a 95% confidence interval from Welch's t on log times and its p-value for 'same "
        "time'; a platform is called faster only when the interval excludes 1. CV = standard "
        "deviation / mean of the train times; equal spread tested with Brown-Forsythe on log "
        "times (p < 0.05 names the more consistent platform). Δ mAP@0.5 (evaluation split) "
        "with its 95% Welch interval. A cell with one run on a side has no spread: 'single "
        "run, no spread'."
    )
    document.table(
        ["Model", "Batch", "Epochs", "n A", "n B", "Ratio A/B [95% CI]", "p", "Verdict",
         "CV A", "CV B", "p (spread)", "Consistency", "Δ mAP@0.5 [95% CI]", "Accuracy"],
        [
            [
                row.model, str(row.batch), str(row.epochs), str(row.n_a), str(row.n_b),
                _with_interval(row.time_ratio_a_over_b, row.time_ratio_ci_low,
                               row.time_ratio_ci_high, ".3g"),
                _fmt(row.time_p_value, ".2g"), _text(row.time_verdict),
                _percent(row.time_cv_a), _percent(row.time_cv_b),
                _fmt(row.spread_p_value, ".2g"), _text(row.spread_verdict),
                _with_interval(row.d_map50, row.d_map50_ci_low, row.d_map50_ci_high, "+.3g"),
                _text(row.map50_verdict),
            ]
            for row in pair_cells.itertuples(index=False)
        ],
    )
    document.heading("Per model and batch size, over its cells", level=3)
    document.note(
        "Each cell's time ratio counted once (its epochs are the replicates): the geometric "
        "mean ratio with a 95% t interval on the log ratios."
    )
    document.table(
        ["Model", "Batch", "Cells", "Ratio A/B [95% CI]", "Verdict"],
        [
            [
                row.model, str(row.batch), str(row.cells_timed),
                _with_interval(row.cells_ratio, row.cells_ratio_ci_low, row.cells_ratio_ci_high,
                               ".3g"),
                _text(row.cells_verdict),
            ]
            for row in pair_summary.itertuples(index=False)
        ],
    )


# What a train job's wall time is made of (detbench.training.timing), as the comparison shows it.
TIME_PARTS = {
    "startup_s": "start-up",
    "first_epoch_extra_s": "first epoch's extra",
    "steady_epochs_s": "steady epochs",
    "interim_eval_s": "evaluation",
    "checkpoint_s": "checkpoints",
}


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
    """The part of the time whose A − B is largest in size, or None without a breakdown."""
    gaps = {p: row[f"d_{p}"] for p in TIME_PARTS if _finite(row[f"d_{p}"])}
    if not gaps:
        return None
    part = max(gaps, key=lambda p: abs(gaps[p]))
    return TIME_PARTS[part], gaps[part]


def _breakdown_table(document: Document, frame: pd.DataFrame, a: str, b: str) -> None:
    table = breakdown_differences(frame, a, b)
    if table.empty:
        return
    document.heading("Where the time went (s, means over the runs)", level=3)
    document.note(
        "Start-up: process start to the first step; first epoch's extra: the first epoch less "
        "a steady one; steady epochs: epochs 2..n. 'Differs most': the part with the largest "
        "A − B, so a platform comparison on fast GPUs says whether it compares training or "
        "start-up."
    )
    headers = ["Model", "Batch", "Epochs"]
    headers += [f"{name} A / B" for name in TIME_PARTS.values()] + ["Differs most (A − B)"]
    rows = []
    for row in table.to_dict("records"):
        cells = [row["model"], str(row["batch"]), str(row["epochs"])]
        for part in TIME_PARTS:
            cells.append(f"{_fmt(row[f'{part}_a'], '.2f')} / {_fmt(row[f'{part}_b'], '.2f')}")
        found = largest_part(row)
        cells.append(f"{found[0]} ({found[1]:+.2f} s)" if found else "NA")
        rows.append(cells)
    document.table(headers, rows)


def _with_interval(value: float, low: float, high: float, spec: str) -> str:
    if not _finite(low) or not _finite(high):
        return _fmt(value, spec)
    return f"{_fmt(value, spec)} [{format(low, spec)}, {format(high, spec)}]"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if _finite(value) else "NA"


def _text(value: object) -> str:
    return value if isinstance(value, str) and value else "NA"


def _fmt(value: float, spec: str) -> str:
    return "NA" if value is None or not np.isfinite(value) else format(value, spec)


def _range(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "NA"
    return f"{low:.3g}–{high:.3g}"


def to_csv(table: pd.DataFrame) -> str:
    return table.to_csv(index=False, na_rep="NA", float_format="%.6g", lineterminator="\n")


def write_comparison(frame: pd.DataFrame, layout: ReportLayout) -> pd.DataFrame:
    """Write the per-cell and summary CSVs and the Markdown / HTML comparison."""
    cells = compare_cells(frame, layout.platforms)
    summary = summarise(cells)
    entries = {e.path.rsplit("/", 1)[-1]: e.path for e in layout.comparison()}
    atomic.write_text(entries["cells.csv"], to_csv(cells))
    atomic.write_text(entries["summary.csv"], to_csv(summary))
    document = comparison_document(frame, layout.platforms, cells, summary)
    atomic.write_text(entries["comparison.md"], document.to_markdown())
    atomic.write_text(entries["comparison.html"], document.to_html())
    return cells
