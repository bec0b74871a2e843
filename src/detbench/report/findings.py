"""Findings: what the 2020 study stated by hand, stated from the data, each with its numbers.

Three questions, per platform: how much faster yolov3-tiny trains than yolov3, which platform
is faster per cell and by how much, and how accuracy moves with epochs and batch size. A
sentence is written only where the data has the cells for it; otherwise it says what is
missing. No trend is claimed that the numbers beside it do not show.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detbench import atomic
from detbench.report.comparison import (
    TIME_PART_NAMES,
    cell_count,
    missing_time_note,
    presence_sentence,
    setup_note,
)
from detbench.report.document import Document
from detbench.report.frame import MEASURED, ok_cells
from detbench.report.layout import ReportLayout
from detbench.report.reference import PUBLISHED
from detbench.summary.comparison import (
    USER,
    WALL,
    breakdown_differences,
    compare_cells,
    largest_part,
    platform_pairs,
    platform_sources,
    time_basis,
)
from detbench.summary.stats import Verdict

FULL, TINY = "yolov3", "yolov3-tiny"
METRIC_NAMES = {
    "map50": "mAP@0.5",
    "recall_at_conf": "recall (conf 0.1, IoU 0.5)",
}
MIN_CELLS_FOR_RHO = 4


def platform_time(frame: pd.DataFrame, platform: str) -> tuple[str, str]:
    """The time column a platform is measured in: train wall time, or user time if published."""
    published = (frame.loc[frame["platform"] == platform, "source"] == PUBLISHED).any()
    basis = USER if published else WALL
    return basis.column, basis.text


def model_speed(frame: pd.DataFrame, platform: str) -> str:
    """How much faster yolov3-tiny trains than yolov3 on one platform, over matching cells."""
    column, text = platform_time(frame, platform)
    ok = ok_cells(frame)
    cells = ok[ok["platform"] == platform]
    full = cells[cells["model"] == FULL].set_index(["batch", "epochs"])[column].dropna()
    tiny = cells[cells["model"] == TINY].set_index(["batch", "epochs"])[column].dropna()
    both = full.index.intersection(tiny.index)
    if len(both) == 0:
        return (
            f"On {platform}, no cell has a {text} for both {FULL} and {TINY}: "
            "no speed comparison of the two models."
        )
    ratios = (full.loc[both] / tiny.loc[both]).astype(float)
    median = float(ratios.median())
    cells_text = cell_count(len(ratios))
    spread = f"; range {ratios.min():.2f}–{ratios.max():.2f}" if len(ratios) > 1 else ""
    detail = f"{FULL} / {TINY} {text}, median over {cells_text} run with both models{spread}"
    if median > 1:
        return f"On {platform}, {TINY} trained {median:.2f}× faster than {FULL} ({detail})."
    if median < 1:
        return f"On {platform}, {TINY} trained slower than {FULL}: {median:.2f} ({detail})."
    return f"On {platform}, {TINY} and {FULL} took the same time: 1.00 ({detail})."


def batch_speed(frame: pd.DataFrame, platform: str, model: str) -> str | None:
    """Time at the largest epochs value from the smallest to the largest batch size."""
    column, text = platform_time(frame, platform)
    cells = _cells(frame, platform, model).dropna(subset=[column])
    epochs = _epochs_with_most_batches(cells)
    if epochs is None:
        return None
    at = cells[cells["epochs"] == epochs].sort_values("batch")
    low, high = at.iloc[0], at.iloc[-1]
    change = _direction(high[column], low[column], "rose", "fell", "was unchanged")
    return (
        f"On {platform}, {model} at {_epochs(epochs)}: {text} {change} from "
        f"{low[column]:.1f} s at batch {int(low['batch'])} to {high[column]:.1f} s at batch "
        f"{int(high['batch'])}."
    )


def platform_speed(frame: pd.DataFrame, platforms: Sequence[str]) -> list[str]:
    """Which platform of each pair is faster per cell, summarised per model."""
    cells = compare_cells(frame, platforms)
    sources = platform_sources(frame)
    sentences = []
    for a, b in platform_pairs(platforms):
        basis = time_basis(sources.get(a, MEASURED), sources.get(b, MEASURED))
        pair = cells[(cells["platform_a"] == a) & (cells["platform_b"] == b)]
        if pair.empty:
            unlike = setup_note(frame, a, b)
            sentences.append(f"{a} vs {b}: {unlike or 'no cell finished on both, no comparison.'}")
            continue
        timed = pair.dropna(subset=["time_ratio_a_over_b"])
        if timed.empty:
            note = missing_time_note(frame, a, b, basis) or "no time on both sides."
            sentences.append(f"{a} vs {b} ({cell_count(len(pair))} on both): {note}")
            continue
        for model, group in timed.groupby("model", sort=False):
            sentences.append(_pair_sentence(a, b, model, group, basis.text))
    return sentences


def _pair_sentence(a: str, b: str, model: str, group: pd.DataFrame, basis: str) -> str:
    ratios = group["time_ratio_a_over_b"]
    a_wins = int((group["faster"] == a).sum())
    b_wins = int((group["faster"] == b).sum())
    widest = group.loc[group["times_faster"].idxmax()]
    slower_time = max(widest["time_a_s"], widest["time_b_s"])
    faster_time = min(widest["time_a_s"], widest["time_b_s"])
    spread = f" (range {ratios.min():.2f}–{ratios.max():.2f})" if len(group) > 1 else ""
    return (
        f"{model}, {a} vs {b} ({basis}, {cell_count(len(group))} on both, "
        f"{_runs_text(group)}): {_wins_text(group, a, b, a_wins, b_wins)}; median time ratio "
        f"{a}/{b} = {ratios.median():.2f}{spread}. "
        f"Largest gap at batch {int(widest['batch'])}, {_epochs(int(widest['epochs']))}: "
        f"{widest['faster']} took {widest['times_faster']:.2f}× less time "
        f"({faster_time:.1f} s vs {slower_time:.1f} s)."
    )


def _runs_text(group: pd.DataFrame) -> str:
    """How many runs per cell the figures are means of, e.g. 'n = 3 and 1 runs per cell'."""
    n_a, n_b = _span(group["n_a"]), _span(group["n_b"])
    if n_a == n_b == "1":
        return "n = 1 run per cell on each: single runs, no spread"
    return f"n = {n_a} and {n_b} runs per cell"


def _span(values: pd.Series) -> str:
    low, high = int(values.min()), int(values.max())
    return str(low) if low == high else f"{low}-{high}"


def _wins_text(group: pd.DataFrame, a: str, b: str, a_wins: int, b_wins: int) -> str:
    """Who was faster: by the point estimate for single runs, by the 95% interval otherwise."""
    verdicts = list(group["time_verdict"])
    a_real = verdicts.count(Verdict.A)
    b_real = verdicts.count(Verdict.B)
    none = verdicts.count(Verdict.NO_DIFFERENCE)
    untested = len(group) - a_real - b_real - none
    if a_real + b_real + none == 0:
        return f"{a} was faster in {a_wins}, {b} in {b_wins} (single runs, no spread)"
    text = (
        f"{a} faster in {a_real}, {b} faster in {b_real} (95% interval of the time ratio "
        f"excluding 1), no detectable difference in {none}"
    )
    if untested:
        text += f"; {cell_count(untested)} with a single run on a side, not tested"
    return text


def time_parts(frame: pd.DataFrame, platforms: Sequence[str]) -> list[str]:
    """Per pair of measured platforms: which part of the train job's time differs most, over
    the cells with a time breakdown (means of their runs)."""
    sources = platform_sources(frame)
    measured = [p for p in platforms if sources.get(p) == MEASURED]
    sentences = []
    for a, b in platform_pairs(measured):
        table = breakdown_differences(frame, a, b)
        parts = [found for row in table.to_dict("records") if (found := largest_part(row))]
        if not parts:
            continue
        counts: dict[str, int] = {}
        for part, _ in parts:
            name = TIME_PART_NAMES[part]
            counts[name] = counts.get(name, 0) + 1
        ranked = sorted(counts.items(), key=lambda item: -item[1])
        listed = ", ".join(f"{name} in {cell_count(n)}" for name, n in ranked)
        sentences.append(
            f"{a} vs {b}: the part of the train job's time that differs most is {listed} "
            f"(of {cell_count(len(parts))} with a time breakdown; means over each cell's runs)."
        )
    return sentences


def consistency(frame: pd.DataFrame, platforms: Sequence[str]) -> list[str]:
    """Which platform's train times varied less, per pair and model, where the data can tell
    (Brown-Forsythe on log times over the repeats, 3 or more runs per side)."""
    cells = compare_cells(frame, platforms)
    sentences = []
    for (a, b, model), group in cells.groupby(["platform_a", "platform_b", "model"], sort=False):
        tested = group[group["spread_p_value"].notna()]
        if tested.empty:
            continue
        for row in tested.itertuples(index=False):
            where = f"{model} batch {row.batch}, {_epochs(int(row.epochs))}"
            cvs = f"CV {100 * row.time_cv_a:.1f}% vs {100 * row.time_cv_b:.1f}%"
            counts = f"p = {row.spread_p_value:.2g}, n = {row.n_a} and {row.n_b}"
            steadier = row.spread_verdict.platform((a, b))
            if steadier is not None:
                other = b if row.spread_verdict is Verdict.A else a
                sentences.append(f"{where}: {steadier} ran more consistently than {other} "
                                 f"({cvs} for {a} and {b}, {counts}).")
            else:
                sentences.append(f"{where}: the data cannot tell which of {a} and {b} ran more "
                                 f"consistently ({cvs}, {counts}).")
    return sentences


def accuracy_metric(cells: pd.DataFrame) -> str | None:
    """mAP@0.5 where the platform has it, else recall (the published platforms)."""
    for metric in METRIC_NAMES:
        if cells[metric].notna().any():
            return metric
    return None


def accuracy_with_epochs(frame: pd.DataFrame, platform: str, model: str) -> str:
    cells = _cells(frame, platform, model)
    metric = accuracy_metric(cells)
    if metric is None:
        return f"On {platform}, {model}: no accuracy figure, nothing to say about epochs."
    name = METRIC_NAMES[metric]
    cells = cells.dropna(subset=[metric])
    parts, rose, fell, monotone, checked = [], 0, 0, 0, 0
    for batch, group in cells.groupby("batch"):
        group = group.sort_values("epochs")
        if len(group) < 2:
            continue
        first, last = group.iloc[0], group.iloc[-1]
        rose += last[metric] > first[metric]
        fell += last[metric] < first[metric]
        parts.append(
            f"batch {int(batch)}: {_num(first[metric])} at {int(first['epochs'])} → "
            f"{_num(last[metric])} at {_epochs(int(last['epochs']))}"
        )
        if len(group) >= 3:
            checked += 1
            monotone += bool(np.all(np.diff(group[metric].to_numpy()) >= 0))
    if not parts:
        return (
            f"On {platform}, {model}: no batch size has two epochs values with a {name}: "
            "too little data to say how accuracy moves with epochs."
        )
    sentence = (
        f"On {platform}, {model}, {name} from the fewest to the most epochs rose in {rose} of "
        f"{len(parts)} batch sizes and fell in {fell} ({'; '.join(parts)})."
    )
    if checked:
        sentence += (
            f" It never decreased as epochs grew in {monotone} of {checked} batch sizes with "
            "three or more epochs values."
        )
    rho = spearman(cells["epochs"], cells[metric])
    if rho is not None:
        sentence += f" Spearman ρ(epochs, {name}) = {rho:.2f} over {len(cells)} cells."
    return sentence


def accuracy_with_batch(frame: pd.DataFrame, platform: str, model: str) -> str | None:
    cells = _cells(frame, platform, model)
    metric = accuracy_metric(cells)
    if metric is None:
        return None
    name = METRIC_NAMES[metric]
    cells = cells.dropna(subset=[metric])
    epochs = _epochs_with_most_batches(cells)
    if epochs is None:
        return (
            f"On {platform}, {model}: no epochs value was run at two batch sizes: too little "
            "data to say how accuracy moves with batch size."
        )
    at = cells[cells["epochs"] == epochs].sort_values("batch")
    values = ", ".join(f"batch {int(r.batch)}: {_num(getattr(r, metric))}" for r in at.itertuples())
    low, high = at.iloc[0], at.iloc[-1]
    change = _direction(high[metric], low[metric], "higher", "lower", "the same")
    return (
        f"On {platform}, {model} at {_epochs(epochs)}, {name} was {change} at the largest batch "
        f"size than at the smallest ({values})."
    )


def spearman(x: pd.Series, y: pd.Series) -> float | None:
    """Spearman's ρ (average ranks) when there are enough cells and both vary, else None."""
    if len(x) < MIN_CELLS_FOR_RHO or x.nunique() < 2 or y.nunique() < 2:
        return None
    rx = x.rank().to_numpy(dtype=float)
    ry = y.rank().to_numpy(dtype=float)
    return float(np.corrcoef(rx, ry)[0, 1])


def _cells(frame: pd.DataFrame, platform: str, model: str) -> pd.DataFrame:
    ok = ok_cells(frame)
    return ok[(ok["platform"] == platform) & (ok["model"] == model)]


def _epochs_with_most_batches(cells: pd.DataFrame) -> int | None:
    """The epochs value run at the most batch sizes (the largest on a tie), if at least two."""
    counts = cells.groupby("epochs")["batch"].nunique()
    counts = counts[counts >= 2]
    if counts.empty:
        return None
    best = counts[counts == counts.max()]
    return int(best.index.max())


def _direction(new: float, old: float, up: str, down: str, same: str) -> str:
    if new > old:
        return up
    if new < old:
        return down
    return same


def _epochs(count: int) -> str:
    return f"{count} epoch" if count == 1 else f"{count} epochs"


def _num(value: float) -> str:
    if value is None or not math.isfinite(value):
        return "NA"
    return f"{value:.3g}"


def findings_document(frame: pd.DataFrame, platforms: Sequence[str]) -> Document:
    sources = platform_sources(frame)
    present = [p for p in platforms if p in sources]
    measured = [p for p in present if sources[p] == MEASURED]
    published = [p for p in present if sources[p] == PUBLISHED]
    document = Document("Findings")
    document.paragraph(
        "Generated from the cells of this report: every sentence carries its numbers and n, "
        "the runs each figure is the mean of. Times of measured platforms are train wall "
        "times; those of the published 2020 platforms are process user CPU times (the only "
        "time the study published), single runs with no spread. A platform is called faster "
        "only where the 95% interval of the time ratio over the repeats excludes 1."
    )
    if not present:
        document.paragraph("No cell is present: too little data for any finding.")
        return document
    document.heading("yolov3-tiny against yolov3")
    document.bullets([model_speed(frame, p) for p in present])
    batch_lines = [
        line
        for p in present
        for m in _models(frame, p)
        if (line := batch_speed(frame, p, m)) is not None
    ]
    if batch_lines:
        document.heading("Time and batch size", level=3)
        document.bullets(batch_lines)
    document.heading("Platforms")
    document.paragraph(presence_sentence(measured, published))
    if len(present) > 1:
        document.bullets(platform_speed(frame, present))
        document.bullets(time_parts(frame, present))
        steadiness = consistency(frame, present)
        if steadiness:
            document.heading("Consistency over repeats", level=3)
            document.bullets(steadiness)
    document.heading("Accuracy, epochs and batch size")
    document.note(
        "Accuracy figure: mAP@0.5 on the evaluation split for measured platforms; recall at "
        "confidence 0.1 (IoU 0.5) for the published ones, which published no mAP."
    )
    document.bullets(
        [accuracy_with_epochs(frame, p, m) for p in present for m in _models(frame, p)]
    )
    document.bullets(
        [
            line
            for p in present
            for m in _models(frame, p)
            if (line := accuracy_with_batch(frame, p, m)) is not None
        ]
    )
    return document


def _models(frame: pd.DataFrame, platform: str) -> list[str]:
    return list(dict.fromkeys(frame.loc[frame["platform"] == platform, "model"]))


def write_findings(frame: pd.DataFrame, layout: ReportLayout) -> Document:
    document = findings_document(frame, layout.platforms)
    entries = {e.path.rsplit(".", 1)[-1]: e.path for e in layout.findings()}
    atomic.write_text(entries["md"], document.to_markdown())
    atomic.write_text(entries["html"], document.to_html())
    return document
