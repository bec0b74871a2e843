"""Platforms side by side, in words: the comparison tables (Markdown / HTML) and their CSVs,
rendered from ``detbench.summary.comparison``'s statistics. Verdicts become words here.

Like with like: two cells are compared only when both trained on the same dataset at the same
image size. Two measured platforms are compared on the train wall time; a pair with a published
2020 platform only on the process user CPU time (``user_time_s``, the study's
``/usr/bin/time -v`` figure), never on the train wall time. Where that column is missing the
pair's times are not compared, and the comparison says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from detbench import atomic
from detbench.report.document import Document
from detbench.report.layout import ReportLayout
from detbench.report.reference import PUBLISHED, SETUP
from detbench.report.setups import setup_sentence
from detbench.summary.comparison import (
    MEASURED,
    METRICS,
    TIME_PARTS,
    USER,
    WALL,
    TimeBasis,
    breakdown_differences,
    cells_on_both,
    compare_cells,
    finite,
    largest_part,
    platform_pairs,
    platform_sources,
    same_setup,
    summarise,
    time_basis,
    untimed_platforms,
)
from detbench.summary.stats import Verdict

METRIC_HEADERS = {
    "precision": "Δ precision",
    "recall": "Δ recall",
    "map50": "Δ mAP@0.5",
    "map50_95": "Δ mAP@0.5:0.95",
    "obj_loss": "Δ objectness loss",
    "cls_loss": "Δ classification loss",
}
# Each verdict column of summary.comparison's tables in words: what platform A or B was found
# to be, and what a row without a test says.
VERDICT_WORDS = {
    "time_verdict": ("faster", "single run, no spread"),
    "spread_verdict": ("more consistent", "too few runs"),
    "map50_verdict": ("higher", "single run, no spread"),
    "cells_verdict": ("faster", "single cell, no spread"),
}
NO_DIFFERENCE = "no detectable difference"
# What a train job's wall time is made of (summary.comparison.TIME_PARTS), as the comparison
# shows it.
TIME_PART_NAMES = {
    "startup_s": "start-up",
    "first_epoch_extra_s": "first epoch's extra",
    "steady_epochs_s": "steady epochs",
    "interim_eval_s": "evaluation",
    "checkpoint_s": "checkpoints",
}


def verdict_words(column: str, verdict: object, a: str, b: str) -> str:
    """A verdict column's value about platforms A and B in words; NA where there is none."""
    if not isinstance(verdict, Verdict):
        return "NA"
    found, untested = VERDICT_WORDS[column]
    if verdict is Verdict.NOT_TESTABLE:
        return untested
    if verdict is Verdict.NO_DIFFERENCE:
        return NO_DIFFERENCE
    return f"{verdict.platform((a, b))} {found}"


def with_words(table: pd.DataFrame) -> pd.DataFrame:
    """A comparison table (cells or summary) with its verdict columns in words, as its CSV
    reads; a missing verdict stays NaN."""
    table = table.copy()
    for column in VERDICT_WORDS:
        if column in table.columns:
            verdicts = zip(table[column], table["platform_a"], table["platform_b"], strict=True)
            table[column] = [
                verdict_words(column, v, a, b) if isinstance(v, Verdict) else np.nan
                for v, a, b in verdicts
            ]
    return table


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
    return f"{size:g} px" if finite(size) else "an unknown image size"


def missing_time_note(frame: pd.DataFrame, a: str, b: str, basis: TimeBasis) -> str | None:
    """Why a pair's times are not compared, or None when at least one cell is timed."""
    lacking = untimed_platforms(frame, a, b, basis)
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
                _fmt(row.time_p_value, ".2g"), _verdict(row, "time_verdict"),
                _percent(row.time_cv_a), _percent(row.time_cv_b),
                _fmt(row.spread_p_value, ".2g"), _verdict(row, "spread_verdict"),
                _with_interval(row.d_map50, row.d_map50_ci_low, row.d_map50_ci_high, "+.3g"),
                _verdict(row, "map50_verdict"),
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
                _verdict(row, "cells_verdict"),
            ]
            for row in pair_summary.itertuples(index=False)
        ],
    )


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
    headers += [f"{TIME_PART_NAMES[p]} A / B" for p in TIME_PARTS] + ["Differs most (A − B)"]
    rows = []
    for row in table.to_dict("records"):
        cells = [row["model"], str(row["batch"]), str(row["epochs"])]
        for part in TIME_PARTS:
            cells.append(f"{_fmt(row[f'{part}_a'], '.2f')} / {_fmt(row[f'{part}_b'], '.2f')}")
        found = largest_part(row)
        cells.append(f"{TIME_PART_NAMES[found[0]]} ({found[1]:+.2f} s)" if found else "NA")
        rows.append(cells)
    document.table(headers, rows)


def _with_interval(value: float, low: float, high: float, spec: str) -> str:
    if not finite(low) or not finite(high):
        return _fmt(value, spec)
    return f"{_fmt(value, spec)} [{format(low, spec)}, {format(high, spec)}]"


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%" if finite(value) else "NA"


def _verdict(row: tuple, column: str) -> str:
    """A table row's verdict in words (the row: an itertuples row of a comparison table)."""
    return verdict_words(column, getattr(row, column), row.platform_a, row.platform_b)


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
    atomic.write_text(entries["cells.csv"], to_csv(with_words(cells)))
    atomic.write_text(entries["summary.csv"], to_csv(with_words(summary)))
    document = comparison_document(frame, layout.platforms, cells, summary)
    atomic.write_text(entries["comparison.md"], document.to_markdown())
    atomic.write_text(entries["comparison.html"], document.to_html())
    return cells
