"""The study's tables: one per platform × model, in the 2020 study's columns, units in headers.

A row per cell of the grid. A cell that is in the grid but has no result shows ``missing`` and
a cell that failed shows ``failed`` in every value column; a figure the platform did not record
(process resources a cell did not record, mAP of the published platforms) shows ``NA``. Never a
zero that was not measured.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Sequence

import pandas as pd

from detbench import atomic
from detbench.report.document import Document
from detbench.report.layout import ReportLayout
from detbench.report.reference import PUBLISHED, SETUP

NA = "NA"
MISSING = "missing"
FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Column:
    key: str  # column of the cell frame
    header: str  # with units
    spec: str  # format of the Markdown / HTML value


def study_columns(pr_condition: str) -> list[Column]:
    """The 2020 study's columns first, then what detbench adds (mAP, train wall time)."""
    return [
        Column("batch", "Batch", "d"),
        Column("epochs", "Epochs", "d"),
        Column("user_time_s", "User time (s)", ".2f"),
        Column("cpu_percent", "% CPU", ".0f"),
        Column("max_rss_kb", "Max RSS (kB)", ".0f"),
        Column("biggest_gpu_activity_avg_us", "Avg time of biggest GPU activity (µs)", ".2f"),
        Column("precision_at_conf", f"Precision ({pr_condition})", ".4g"),
        Column("recall_at_conf", f"Recall ({pr_condition})", ".4g"),
        Column("train_obj_loss", "Objectness loss (train, last epoch)", ".4g"),
        Column("train_cls_loss", "Classification loss (train, last epoch)", ".4g"),
        Column("map50", "mAP@0.5", ".4g"),
        Column("map50_95", "mAP@0.5:0.95", ".4g"),
        Column("train_time_s", "Train wall time (s)", ".2f"),
    ]


@dataclasses.dataclass
class StudyTable:
    platform: str
    model: str
    headers: list[str]
    values: list[list[object]]  # numbers, or NA / missing / failed
    document: Document

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.headers)
        for row in self.values:
            writer.writerow([_csv_value(v) for v in row])
        return buffer.getvalue()


def grid_rows(
    cells: pd.DataFrame, batch_sizes: Sequence[int], epochs: Sequence[int]
) -> list[tuple[int, int]]:
    """(batch, epochs) rows of a table: the study grid and every cell present, sorted."""
    rows = {(int(b), int(e)) for b in batch_sizes for e in epochs}
    rows |= {(int(b), int(e)) for b, e in zip(cells["batch"], cells["epochs"], strict=True)}
    return sorted(rows)


def pr_condition(cells: pd.DataFrame) -> tuple[str, str | None]:
    """Header text of the precision / recall condition, and a footnote when it varies."""
    confidences = sorted(set(cells.loc[cells["status"] == "ok", "pr_confidence"].dropna()))
    if len(confidences) == 1:
        return f"conf {confidences[0]:g}, IoU 0.5", None
    if not confidences:
        return "conf NA, IoU 0.5", None
    listed = ", ".join(f"{c:g}" for c in confidences)
    return "conf varies, IoU 0.5", f"Precision and recall are read at confidences {listed}."


def study_table(
    frame: pd.DataFrame,
    platform: str,
    model: str,
    batch_sizes: Sequence[int] = (),
    epochs: Sequence[int] = (),
) -> StudyTable:
    """The table of one platform × model; ``batch_sizes`` × ``epochs`` is the expected grid."""
    cells = frame[(frame["platform"] == platform) & (frame["model"] == model)]
    condition, varies = pr_condition(cells)
    columns = study_columns(condition)
    values: list[list[object]] = []
    display: list[list[str]] = []
    by_cell = {(int(r.batch), int(r.epochs)): r for r in cells.itertuples(index=False)}
    for batch, n_epochs in grid_rows(cells, batch_sizes, epochs):
        row = by_cell.get((batch, n_epochs))
        status = MISSING if row is None else str(row.status)
        raw: list[object] = [batch, n_epochs]
        shown = [str(batch), str(n_epochs)]
        for column in columns[2:]:
            # A cell without a result says why in every column, so no value is mistaken for it.
            value = status if status != "ok" else _value(getattr(row, column.key))
            raw.append(value)
            shown.append(value if isinstance(value, str) else format(value, column.spec))
        values.append(raw)
        display.append(shown)
    headers = [c.header for c in columns]
    document = _table_document(cells, platform, model, headers, display, varies)
    return StudyTable(platform, model, headers, values, document)


def _value(value: object) -> object:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return NA
    return float(value)  # type: ignore[arg-type]


def _csv_value(value: object) -> str:
    if isinstance(value, float):
        # Ten significant digits: kB counts stay integers (4446340, not 4.44634e+06).
        return f"{value:.10g}"
    return str(value)


def _table_document(
    cells: pd.DataFrame,
    platform: str,
    model: str,
    headers: list[str],
    rows: list[list[str]],
    varies: str | None,
) -> Document:
    document = Document(f"{platform} — {model}")
    published = bool(len(cells)) and (cells["source"] == PUBLISHED).all()
    document.paragraph(_setup_line(cells, published))
    document.table(headers, rows)
    for note in _footnotes(cells, published, varies):
        document.note(note)
    return document


def _setup_line(cells: pd.DataFrame, published: bool) -> str:
    if published:
        device = _first(cells, "device_name") or "GPU"
        return (
            f"Published by the 2020 study ({device}): ultralytics/yolov3 v9, BCCD, "
            f"{SETUP['img_size']} px, starting from {SETUP['weights']}."
        )
    if not len(cells):
        return "No cell of this platform and model has a result under results/."
    dataset = _first(cells, "dataset") or "NA"
    img_size = _first(cells, "img_size")
    weights = _first(cells, "weights") or "NA"
    split = _first(cells, "eval_split") or "NA"
    images = _first(cells, "eval_images")
    device = _first(cells, "device_name") or "NA"
    size = f"{int(img_size)} px" if img_size is not None else "NA px"
    count = f"{int(images)} images" if images is not None else "NA images"
    return (
        f"Measured by detbench on {device}: dataset {dataset}, {size}, weights {weights}; "
        f"accuracy on the {split} split ({count})."
    )


def _footnotes(cells: pd.DataFrame, published: bool, varies: str | None) -> list[str]:
    notes = []
    if published:
        notes.append(
            "Precision, recall: class means at confidence 0.1, IoU 0.5, from the validation "
            "run of the training code (ultralytics/yolov3 v9)."
        )
        notes.append(
            "Objectness, classification loss: the study's 'Objectness Score' and "
            "'Classification Score' columns, loss values of that code (lower is better), most "
            "likely the training-loss columns of its results.txt."
        )
        notes.append("mAP and train wall time were not published: NA.")
    else:
        split = _first(cells, "eval_split") or "evaluation"
        notes.append(
            f"Precision, recall: class means at the confidence in the header, IoU 0.5, on the "
            f"{split} split. mAP@0.5 and mAP@0.5:0.95: COCO 101-point AP on the same split."
        )
        notes.append(
            "Objectness, classification loss: detbench's training loss terms (ultralytics v9 "
            "recipe, with gains), mean over the batches of the last training epoch."
        )
        notes.append("Train wall time: the sum of the training epochs' wall times (s).")
    if varies:
        notes.append(varies)
    notes.append(
        "User time: user CPU time of the whole training process, % CPU and max RSS as "
        "/usr/bin/time -v reports them; GPU activity: nvprof's average time of the GPU "
        "activity with the largest total time."
    )
    notes.append(
        "NA: not recorded for this platform. missing: in the grid, no result under results/. "
        "failed: the cell ran and failed."
    )
    return notes


def _first(cells: pd.DataFrame, column: str) -> object | None:
    values = cells[column].dropna() if column in cells.columns else []
    return values.iloc[0] if len(values) else None


def all_tables(frame: pd.DataFrame, layout: ReportLayout) -> list[StudyTable]:
    tables = []
    for platform, model in layout.platform_models():
        # Measured platforms are held to the study grid (what is not there is missing); a
        # published platform shows the grid it published.
        measured = platform in layout.measured
        batches = layout.grid_batch_sizes if measured else ()
        epochs = layout.grid_epochs if measured else ()
        tables.append(study_table(frame, platform, model, batches, epochs))
    return tables


def write_tables(frame: pd.DataFrame, layout: ReportLayout) -> list[StudyTable]:
    """Write every platform × model table as CSV, Markdown and HTML."""
    tables = all_tables(frame, layout)
    for table in tables:
        stem = layout.table_stem(table.platform, table.model)
        atomic.write_text(f"{stem}.csv", table.to_csv())
        atomic.write_text(f"{stem}.md", table.document.to_markdown())
        atomic.write_text(f"{stem}.html", table.document.to_html())
    return tables
