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
            ratio, faster, times = _speed(a, b, time_a, time_b)
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
            rows.append(record)
    return pd.DataFrame(rows, columns=CELL_COLUMNS)


def _speed(a: str, b: str, time_a: float, time_b: float) -> tuple[float, str, float]:
    """Ratio A/B, which platform is faster and by what factor (NaN where not comparable)."""
    if not (_finite(time_a) and _finite(time_b)) or time_a <= 0 or time_b <= 0:
        return math.nan, NOT_COMPARED, math.nan
    ratio = time_a / time_b
    if ratio < 1:
        return ratio, a, time_b / time_a
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
