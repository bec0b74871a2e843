"""The report: study tables, platform comparison, findings, plots and `snakemake --report`.

Fast tests build hand-made summary frames (missing and failed cells, the process columns of
issue 4 present or not, two measured platforms or one) and check what the tables, the
comparison and the findings say about them. Marked slow: the tiny study run in a copy of the
workflow, its report files and `snakemake --report report.html`, and a second platform copied
in, which turns the comparison on.
"""

from __future__ import annotations

import csv
import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import yaml

from detbench.errors import DetbenchError
from detbench.report import (
    comparison,
    deployment,
    findings,
    plots,
    reference,
    tables,
    waiting,
)
from detbench.report.frame import cell_frame, published_frame
from detbench.report.layout import ReportLayout, build_layout, slug
from detbench.summary import comparison as pairs
from detbench.summary.stats import Verdict

REPO = Path(__file__).resolve().parents[1]
SHARED_STUDY = REPO.parent / "shared" / "data" / "study-2020" / "results.csv"
T4 = "cloud-t4 (published 2020)"
P40 = "baremetal-p40 (published 2020)"
VALUE_HEADERS = [
    "User time (s)",
    "% CPU",
    "Max RSS (kB)",
    "Avg time of biggest GPU activity (µs)",
    "Precision (conf 0.1, IoU 0.5)",
    "Recall (conf 0.1, IoU 0.5)",
    "Objectness loss (train, last epoch)",
    "Classification loss (train, last epoch)",
    "mAP@0.5",
    "mAP@0.5:0.95",
    "Train wall time (s)",
]


# --------------------------------------------------------------------------- hand-made data


def summary_row(platform: str, model: str, batch: int, epochs: int, **values: Any) -> dict:
    """A summary.csv row with plausible figures; ``values`` overrides any of them."""
    row = {
        "platform": platform,
        "dataset": "synthetic",
        "model": model,
        "batch": batch,
        "epochs": epochs,
        "img_size": 64,
        "weights": "scratch",
        "device_name": "x86_64",
        "precision": "fp32",  # arithmetic, not the metric: must not reach the tables
        "train_time_s": 10.0 * epochs,
        "eval_split": "test",
        "eval_images": 4,
        "map50": 0.1 * epochs,
        "map50_95": 0.05 * epochs,
        "pr_confidence": 0.1,
        "precision_at_conf": 0.2,
        "recall_at_conf": 0.3,
        "train_obj_loss": 0.25,
        "train_cls_loss": 0.03,
    }
    row.update(values)
    return row


# The 2020 study's setup, which a measured cell must share to be compared with its figures.
SETUP_2020 = {"dataset": "bccd", "img_size": 416}


def frame_of(rows: list[dict], published: bool = False) -> pd.DataFrame:
    return cell_frame(pd.DataFrame(rows), published_frame() if published else None)


def table_rows(table: tables.StudyTable) -> dict[tuple[int, int], dict[str, object]]:
    return {(row[0], row[1]): dict(zip(table.headers, row, strict=True)) for row in table.values}


# --------------------------------------------------------------------------- study tables


def test_table_headers_are_the_studys_columns_with_units() -> None:
    frame = frame_of([summary_row("p", "yolov3", 8, 2)])
    table = tables.study_table(frame, "p", "yolov3", [8], [2])
    assert table.headers == ["Batch", "Epochs", *VALUE_HEADERS]
    markdown = table.document.to_markdown()
    assert "| Batch | Epochs | User time (s) | % CPU | Max RSS (kB) |" in markdown
    assert "test split" in markdown and "last training epoch" in markdown


def test_missing_and_failed_cells_show_as_such_never_as_zeros() -> None:
    rows = [
        summary_row("p", "yolov3", 4, 1),
        summary_row("p", "yolov3", 4, 2, status="failed", train_time_s=0.0, map50=0.0),
    ]
    table = tables.study_table(frame_of(rows), "p", "yolov3", [4, 8], [1, 2])
    by_cell = table_rows(table)
    assert set(by_cell) == {(4, 1), (4, 2), (8, 1), (8, 2)}
    for header in VALUE_HEADERS:
        assert by_cell[(4, 2)][header] == "failed"
        assert by_cell[(8, 1)][header] == "missing"
        assert by_cell[(8, 2)][header] == "missing"
    assert by_cell[(4, 1)]["Train wall time (s)"] == 10.0
    csv_text = table.to_csv()
    assert "4,2,failed,failed" in csv_text and "8,1,missing,missing" in csv_text
    markdown = table.document.to_markdown()
    assert "| 8 | 2 | missing | missing |" in markdown
    assert "| 4 | 2 | failed | failed |" in markdown


def test_process_columns_are_na_until_the_summary_has_them() -> None:
    without = tables.study_table(frame_of([summary_row("p", "yolov3", 8, 2)]), "p", "yolov3")
    cell = table_rows(without)[(8, 2)]
    for header in VALUE_HEADERS[:4]:
        assert cell[header] == "NA"
    assert cell["mAP@0.5"] == pytest.approx(0.2)
    assert cell["Precision (conf 0.1, IoU 0.5)"] == pytest.approx(0.2)  # not "fp32"

    issue4 = summary_row(
        "p",
        "yolov3",
        8,
        2,
        user_time_s=61.5,
        cpu_percent=97,
        max_rss_kb=4446340,
        biggest_gpu_activity_avg_us=536.7,
    )
    cell = table_rows(tables.study_table(frame_of([issue4]), "p", "yolov3"))[(8, 2)]
    assert [cell[h] for h in VALUE_HEADERS[:4]] == [61.5, 97.0, 4446340.0, 536.7]
    text = tables.study_table(frame_of([issue4]), "p", "yolov3").to_csv()
    assert ",4446340," in text  # kB as an integer, not 4.44634e+06


def test_precision_recall_header_names_the_confidence() -> None:
    frame = frame_of([summary_row("p", "yolov3", 8, 2, pr_confidence=0.25)])
    table = tables.study_table(frame, "p", "yolov3")
    assert "Precision (conf 0.25, IoU 0.5)" in table.headers
    mixed = frame_of(
        [summary_row("p", "yolov3", 8, 2), summary_row("p", "yolov3", 8, 4, pr_confidence=0.25)]
    )
    table = tables.study_table(mixed, "p", "yolov3")
    assert "Precision (conf varies, IoU 0.5)" in table.headers
    assert "confidences 0.1, 0.25" in table.document.to_markdown()


# --------------------------------------------------------------------------- the 2020 reference


def test_published_figures_become_two_reference_platforms() -> None:
    frame = published_frame()
    assert len(frame) == 64
    assert list(dict.fromkeys(frame["platform"])) == [T4, P40]
    assert set(frame["source"]) == {reference.PUBLISHED}
    failed = frame[frame["status"] == "failed"]
    assert [tuple(r) for r in failed[["platform", "model", "batch", "epochs"]].values] == [
        (P40, "yolov3-tiny", 16, 20)
    ]
    first = frame.iloc[0]
    # user_s is the whole process's user CPU time: it fills user_time_s, never train_time_s.
    assert first["user_time_s"] == pytest.approx(59.68)
    assert math.isnan(first["train_time_s"]) and math.isnan(first["map50"])
    assert first["max_rss_kb"] == 8078296 and first["cpu_percent"] == 20
    assert first["train_obj_loss"] == pytest.approx(0.1282)


def test_reference_table_shows_the_failed_cell_and_na_map() -> None:
    table = tables.study_table(published_frame(), P40, "yolov3-tiny")
    by_cell = table_rows(table)
    assert len(by_cell) == 16
    assert all(by_cell[(16, 20)][h] == "failed" for h in VALUE_HEADERS)
    assert by_cell[(4, 1)]["User time (s)"] == pytest.approx(31.41)
    assert by_cell[(4, 1)]["mAP@0.5"] == "NA"
    assert by_cell[(4, 1)]["Train wall time (s)"] == "NA"
    assert "Published by the 2020 study (Tesla P40)" in table.document.to_markdown()


def test_reference_copy_matches_the_shared_study_figures() -> None:
    if not SHARED_STUDY.exists():
        pytest.skip(f"{SHARED_STUDY} not found (the shared folder beside the repository)")
    assert reference.reference_csv().read_bytes() == SHARED_STUDY.read_bytes()


def test_reference_with_a_missing_column_is_one_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "study.csv"
    broken.write_text("platform,model,batch\ncloud-t4,yolov3,4\n", encoding="utf-8")
    with pytest.raises(DetbenchError, match=r"study\.csv: missing column\(s\) gpu, epochs"):
        reference.read_reference(broken)


# --------------------------------------------------------------------------- comparison


def two_platforms() -> pd.DataFrame:
    rows = [
        summary_row("a", "yolov3", 8, 2, train_time_s=30.0, map50=0.5),
        summary_row("b", "yolov3", 8, 2, train_time_s=10.0, map50=0.2),
        summary_row("a", "yolov3", 8, 4, train_time_s=20.0, map50=0.6),
        summary_row("b", "yolov3", 8, 4, train_time_s=40.0, map50=0.6),
        summary_row("a", "yolov3", 16, 2, train_time_s=12.0),  # on a only: not compared
    ]
    return frame_of(rows, published=True)


def test_comparison_ratio_faster_and_differences_per_cell() -> None:
    cells = pairs.compare_cells(two_platforms(), ["a", "b"])
    assert len(cells) == 2
    first, second = cells.iloc[0], cells.iloc[1]
    assert (first["batch"], first["epochs"], first["time_basis"]) == (8, 2, "train_time_s")
    assert first["time_ratio_a_over_b"] == pytest.approx(3.0)
    assert first["faster"] == "b" and first["times_faster"] == pytest.approx(3.0)
    assert first["d_map50"] == pytest.approx(0.3)
    assert second["time_ratio_a_over_b"] == pytest.approx(0.5)
    assert second["faster"] == "a" and second["times_faster"] == pytest.approx(2.0)
    summary = pairs.summarise(cells)
    assert len(summary) == 1
    row = summary.iloc[0]
    assert row["median_time_ratio_a_over_b"] == pytest.approx(1.75)
    assert (row["a_faster_cells"], row["b_faster_cells"], row["cells"]) == (1, 1, 2)


def test_published_platform_is_compared_on_user_time_only() -> None:
    # b4_e1 has a user time and b4_e5 only a train wall time: that one is not compared.
    rows = [
        summary_row("a", "yolov3", 4, 1, train_time_s=5.0, user_time_s=119.36, **SETUP_2020),
        summary_row("a", "yolov3", 4, 5, train_time_s=5.0, **SETUP_2020),
    ]
    frame = frame_of(rows, published=True)
    cells = pairs.compare_cells(frame, ["a", T4])
    assert set(cells["time_basis"]) == {"user_time_s"} and len(cells) == 2
    timed = cells.set_index("epochs")
    assert timed.loc[1, "time_ratio_a_over_b"] == pytest.approx(119.36 / 59.68)
    assert timed.loc[1, "faster"] == T4
    assert math.isnan(timed.loc[5, "time_ratio_a_over_b"])
    assert timed.loc[5, "faster"] == pairs.NOT_COMPARED


def test_comparison_says_when_the_user_time_is_missing() -> None:
    frame = frame_of([summary_row("a", "yolov3", 4, 1, **SETUP_2020)], published=True)
    text = comparison.comparison_document(frame, ["a", T4, P40]).to_markdown()
    assert "## A = a, B = cloud-t4 (published 2020)" in text
    assert "a has no user time (user_time_s) recorded" in text
    assert "never with the train wall time" in text


def test_cells_of_another_dataset_or_image_size_are_not_compared() -> None:
    # The published cells are BCCD at 416 px: a synthetic run is listed as unlike, not timed.
    rows = [
        summary_row("a", "yolov3", 4, 1, user_time_s=10.0),  # synthetic, 64 px
        summary_row("a", "yolov3", 4, 5, user_time_s=50.0, dataset="bccd", img_size=320),
        summary_row("a", "yolov3", 8, 1, user_time_s=20.0, **SETUP_2020),
        summary_row("b", "yolov3", 4, 1, img_size=128),
    ]
    frame = frame_of(rows, published=True)
    cells = pairs.compare_cells(frame, ["a", "b", T4])
    assert set(cells["platform_b"]) == {T4}
    assert list(zip(cells["batch"], cells["epochs"], strict=True)) == [(8, 1)]
    note = comparison.setup_note(frame, "a", T4)
    assert note == (
        "2 cells finished on both but not compared: a trained on synthetic at 64 px and bccd "
        f"at 320 px, {T4} on bccd at 416 px; cells are compared only on the same dataset and "
        "image size."
    )
    assert comparison.setup_note(frame, T4, P40) is None
    text = comparison.comparison_document(frame, ["a", "b", T4]).to_markdown()
    assert "1 cell finished on both; time basis: process user CPU time." in text
    assert "1 cell finished on both but not compared: a trained on synthetic at 64 px, b on " \
        "synthetic at 128 px" in text
    sentences = findings.platform_speed(frame, ["a", "b", T4])
    assert sentences[0].startswith("a vs b: 1 cell finished on both but not compared")
    assert sentences[1].startswith(
        f"yolov3, a vs {T4} (process user CPU time, 1 cell on both, n = 1 run per cell on each: "
        "single runs, no spread)"
    )


def test_one_measured_platform_says_only_one_platform_is_present() -> None:
    frame = frame_of([summary_row("solo", "yolov3", 8, 2)], published=True)
    text = comparison.comparison_document(frame, ["solo", T4, P40]).to_markdown()
    assert "Only one platform is present: solo is the only measured platform" in text
    two = comparison.comparison_document(two_platforms(), ["a", "b", T4, P40]).to_markdown()
    assert "Only one platform is present" not in two
    assert "Measured platforms: a, b." in two
    assert "| yolov3 | 8 | 2 | 30.00 | 10.00 | 3 | b | 3 |" in two


# --------------------------------------------------------------------------- findings


def test_findings_state_the_model_speed_with_numbers() -> None:
    rows = [
        summary_row("p", "yolov3", 8, 2, train_time_s=40.0),
        summary_row("p", "yolov3-tiny", 8, 2, train_time_s=10.0),
        summary_row("p", "yolov3", 8, 4, train_time_s=60.0),
        summary_row("p", "yolov3-tiny", 8, 4, train_time_s=10.0),
    ]
    sentence = findings.model_speed(frame_of(rows), "p")
    assert sentence.startswith("On p, yolov3-tiny trained 5.00× faster than yolov3")
    assert "over 2 cells" in sentence and "range 4.00–6.00" in sentence
    only_full = frame_of([summary_row("p", "yolov3", 8, 2)])
    assert "no speed comparison" in findings.model_speed(only_full, "p")


def test_findings_platform_speed_per_model() -> None:
    [sentence] = findings.platform_speed(two_platforms(), ["a", "b"])
    assert "yolov3, a vs b (train wall time, 2 cells on both, n = 1 run per cell" in sentence
    assert "a was faster in 1, b in 1" in sentence
    assert "median time ratio a/b = 1.75 (range 0.50–3.00)" in sentence
    assert "Largest gap at batch 8, 2 epochs: b took 3.00× less time (10.0 s vs 30.0 s)" in sentence


def test_findings_accuracy_with_epochs_only_where_the_data_shows_it() -> None:
    rising = [summary_row("p", "yolov3", b, e, map50=m) for b, e, m in [
        (4, 1, 0.1), (4, 2, 0.2), (4, 3, 0.4), (8, 1, 0.1), (8, 2, 0.05), (8, 3, 0.3)
    ]]  # fmt: skip
    sentence = findings.accuracy_with_epochs(frame_of(rising), "p", "yolov3")
    assert "rose in 2 of 2 batch sizes and fell in 0" in sentence
    assert "batch 4: 0.1 at 1 → 0.4 at 3 epochs" in sentence
    assert "never decreased as epochs grew in 1 of 2 batch sizes" in sentence
    assert "Spearman ρ(epochs, mAP@0.5) = " in sentence and "over 6 cells" in sentence
    thin = frame_of([summary_row("p", "yolov3", 4, 1), summary_row("p", "yolov3", 8, 1)])
    assert "too little data" in findings.accuracy_with_epochs(thin, "p", "yolov3")
    assert "Spearman" not in findings.accuracy_with_epochs(
        frame_of(rising[:2] + rising[3:4]), "p", "yolov3"
    )


def test_findings_accuracy_with_batch_size() -> None:
    rows = [
        summary_row("p", "yolov3", 4, 2, map50=0.5),
        summary_row("p", "yolov3", 16, 2, map50=0.2),
    ]
    sentence = findings.accuracy_with_batch(frame_of(rows), "p", "yolov3")
    assert sentence == (
        "On p, yolov3 at 2 epochs, mAP@0.5 was lower at the largest batch size than at the "
        "smallest (batch 4: 0.5, batch 16: 0.2)."
    )
    single = frame_of([summary_row("p", "yolov3", 4, 2)])
    assert "too little data" in findings.accuracy_with_batch(single, "p", "yolov3")


def test_findings_document_with_one_platform_and_the_reference() -> None:
    frame = frame_of([summary_row("solo", "yolov3", 8, 2)], published=True)
    text = findings.findings_document(frame, ["solo", T4, P40]).to_markdown()
    assert "Only one platform is present" in text
    assert "On cloud-t4 (published 2020), yolov3-tiny trained 1.72× faster than yolov3" in text
    assert "On solo, no cell has a train wall time for both yolov3 and yolov3-tiny" in text


# --------------------------------------------------------------------------- layout and files


def test_layout_names_platforms_models_and_batch_sizes() -> None:
    layout = build_layout(
        "test-cpu",
        ["yolov3", "yolov3-tiny"],
        [4, 8],
        [1, 2],
        ["results/other/yolov3/b64_e3", "results/other/yolov3/b4_e1/"],
    )
    assert layout.measured == ("test-cpu", "other")
    assert layout.measured_models["other"] == ("yolov3",)
    assert layout.published == (T4, P40)
    assert layout.batch_sizes == (4, 8, 16, 32, 64)
    assert slug(T4) == "cloud-t4-published-2020"
    assert ReportLayout.from_params(layout.to_params()) == layout
    paths = layout.all_paths()
    assert len(paths) == len(set(paths))
    assert "results/report/tables/cloud-t4-published-2020_yolov3.md" in paths
    assert "results/report/plots/loss_other_yolov3.svg" in paths


def test_report_entries_have_string_labels_unique_per_subcategory() -> None:
    layout = build_layout("p", ["yolov3", "yolov3-tiny"], [4], [1], ["results/q/yolov3/b4_e1"])
    groups = (
        layout.tables,
        layout.comparison,
        layout.findings,
        layout.deployment,
        layout.dataset,
        layout.plots,
    )
    shown: dict[tuple[str, str | None], set[tuple]] = {}
    for entry in (e for group in groups for e in group() if e.category is not None):
        assert entry.labels and all(isinstance(v, str) for v in entry.labels.values())
        assert (REPO / "report" / str(entry.caption)).is_file(), entry.caption
        key = tuple(sorted(entry.labels.items()))
        seen = shown.setdefault((entry.category, entry.subcategory), set())
        assert key not in seen, f"two report entries share labels {key}"
        seen.add(key)
    categories = {category for category, _ in shown}
    assert categories == {
        "Findings",
        "Accuracy",
        "Training time",
        "Resources",
        "Platforms",
        "Data",
        "Deployment",
    }


def test_every_report_file_is_written(tmp_path: Path) -> None:
    # The published cells at batch 4 only: fewer figures, same code paths.
    published = tmp_path / "study_2020.csv"
    lines = reference.reference_csv().read_text(encoding="utf-8").splitlines()
    published.write_text(
        "\n".join([lines[0], *(line for line in lines[1:] if line.split(",")[3] == "4")]) + "\n",
        encoding="utf-8",
    )
    results = tmp_path / "results"
    rows = [summary_row("p", m, 4, e) for m in ("yolov3", "yolov3-tiny") for e in (1, 2)]
    for row in rows:
        cell = results / "p" / row["model"] / f"b4_e{row['epochs']}"
        cell.mkdir(parents=True)
        history = "epoch,train_box_loss,train_obj_loss,train_cls_loss,train_total_loss\n"
        history += "".join(f"{e},0.1,0.2,0.03,0.33\n" for e in range(1, row["epochs"] + 1))
        (cell / "history.csv").write_text(history, encoding="utf-8")
    layout = build_layout(
        "p", ["yolov3", "yolov3-tiny"], [4], [1, 2], reference=published, root=str(tmp_path / "r")
    )
    assert layout.batch_sizes == (4,)
    frame = cell_frame(pd.DataFrame(rows), published_frame(published))
    tables.write_tables(frame, layout)
    comparison.write_comparison(frame, layout)
    [cells_csv] = [e.path for e in layout.comparison() if e.path.endswith("cells.csv")]
    assert {c["time_verdict"] for c in _read_csv(Path(cells_csv))} == {"single run, no spread"}
    findings.write_findings(frame, layout)
    plots.write_plots(frame, layout, results)
    summary = tmp_path / "summary.csv"
    pd.DataFrame(rows).to_csv(summary, index=False)
    waiting.write_waiting(summary, results, *(entry.path for entry in layout.waiting()))
    deployment.write_deployment(summary, *(e.path for e in layout.deployment()))
    written = [p for p in layout.all_paths() if not p.startswith(str(tmp_path / "r/data"))]
    assert [p for p in written if not Path(p).is_file()] == []
    assert not list((tmp_path / "r").rglob("*.tmp"))
    png = Path(layout.plot_path("train_time_b4")).read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_loss_curves_show_the_evaluations_made_during_training(tmp_path: Path) -> None:
    """history.csv's interim columns (train.eval_interval_epochs) become an eval-split loss
    line and an mAP line on a right-hand axis, at the evaluated epochs only; without them the
    panel has the training losses alone."""
    rows = [summary_row("p", "yolov3", 8, 4), summary_row("p", "yolov3", 8, 1)]
    header = "epoch,train_total_loss,eval_map50,eval_map50_95,eval_total_loss,eval_seconds\n"
    (tmp_path / "p" / "yolov3" / "b8_e4").mkdir(parents=True)
    (tmp_path / "p" / "yolov3" / "b8_e4" / "history.csv").write_text(
        header + "1,0.5,,,,\n2,0.4,0.25,0.1,0.45,0.3\n3,0.35,,,,\n4,0.3,0.5,0.2,0.41,0.3\n",
        encoding="utf-8",
    )
    (tmp_path / "p" / "yolov3" / "b8_e1").mkdir(parents=True)
    (tmp_path / "p" / "yolov3" / "b8_e1" / "history.csv").write_text(
        "epoch,train_total_loss\n1,0.5\n", encoding="utf-8"
    )
    figure = plots.loss_figure(frame_of(rows), tmp_path, "p", "yolov3")
    lines = {
        line.get_label(): (list(line.get_xdata()), list(line.get_ydata()))
        for axes in figure.axes
        for line in axes.get_lines()
    }
    assert lines["mAP@0.5, eval split (right axis)"] == ([2, 4], [0.25, 0.5])
    assert lines["total, eval split"] == ([2, 4], [0.45, 0.41])
    assert len(figure.axes) == 3  # two panels and one right-hand axis
    legend = [text.get_text() for text in figure.legends[0].get_texts()]
    assert "mAP@0.5, eval split (right axis)" in legend


def test_gpu_samples_feed_the_utilisation_and_memory_plots(tmp_path: Path) -> None:
    rows = [summary_row("gpu", "yolov3", 8, 2, train_time_s=50.0)]
    frame = frame_of(rows)
    placeholder = plots.gpu_utilisation_figure(frame, tmp_path, "gpu")
    message = placeholder.axes[0].texts[0].get_text()
    assert not placeholder.axes[0].axison and "No GPU samples" in message
    cell = tmp_path / "gpu/yolov3/b8_e2"
    cell.mkdir(parents=True)
    (cell / "gpu_samples.csv").write_text(
        "time_s,utilization_percent,memory_used_mib,power_w\n0,10,500,60\n1,95,2300,200\n",
        encoding="utf-8",
    )
    figure = plots.gpu_utilisation_figure(frame, tmp_path, "gpu")
    assert figure.axes[0].axison and len(figure.axes[0].lines) == 1
    assert list(plots.gpu_memory_peaks(frame, tmp_path)) == [2300.0]
    (cell / "gpu_samples.csv").write_text("time_s,util\n0,1\n", encoding="utf-8")
    with pytest.raises(DetbenchError, match=r"gpu_samples\.csv: missing column\(s\)"):
        plots.gpu_utilisation_figure(frame, tmp_path, "gpu")


# --------------------------------------------------------------------------- end to end


def tiny_report_from(tiny_study_run: Any, tiny_config: Path) -> dict[str, Any]:
    """The session's tiny study (conftest.tiny_study_run) with the report layout it follows;
    shared by this module and test_report_browser.py."""
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    layout = build_layout(
        config["platform"], config["models"], config["batch_sizes"], config["epochs"]
    )
    return {
        "workdir": tiny_study_run.workdir,
        "run": tiny_study_run.run,
        "report": tiny_study_run.report,
        "layout": layout,
    }


@pytest.fixture(scope="module")
def tiny_report(tiny_study_run: Any, tiny_config: Path) -> dict[str, Any]:
    return tiny_report_from(tiny_study_run, tiny_config)


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_tiny_study_writes_every_report_file(tiny_report: dict[str, Any]) -> None:
    workdir, layout = tiny_report["workdir"], tiny_report["layout"]
    stats = tiny_report["run"].job_stats()
    for rule in ("report_tables", "report_comparison", "report_findings", "report_plots"):
        assert stats.get(rule) == 1, tiny_report["run"].describe()
    missing = [p for p in layout.all_paths() if not (workdir / p).is_file()]
    assert missing == []
    for rule in ("report_tables", "report_plots", "report_dataset"):
        assert (workdir / f"results/logs/{rule}.log").is_file()


@pytest.mark.slow
def test_tiny_study_tables_look_like_the_studys(tiny_report: dict[str, Any]) -> None:
    tables_dir = tiny_report["workdir"] / "results/report/tables"
    rows = _read_csv(tables_dir / "test-cpu_yolov3.csv")
    assert [(r["Batch"], r["Epochs"]) for r in rows] == [
        ("4", "1"),
        ("4", "2"),
        ("8", "1"),
        ("8", "2"),
    ]
    for row in rows:
        assert list(row)[2:] == VALUE_HEADERS
        assert row["User time (s)"] in ("NA",) or float(row["User time (s)"]) > 0
        assert float(row["Train wall time (s)"]) > 0
        assert 0 <= float(row["mAP@0.5"]) <= 1
        assert "missing" not in row.values() and "failed" not in row.values()
    markdown = (tables_dir / "test-cpu_yolov3.md").read_text(encoding="utf-8")
    assert markdown.startswith("# test-cpu — yolov3\n")
    assert "synthetic-tiny, 64 px" in markdown and "test split (4 images)" in markdown
    published = _read_csv(tables_dir / "baremetal-p40-published-2020_yolov3-tiny.csv")
    assert len(published) == 16
    assert {published[i]["% CPU"] for i in range(len(published))} >= {"failed", "97"}


@pytest.mark.slow
def test_tiny_study_comparison_and_findings(tiny_report: dict[str, Any]) -> None:
    report_dir = tiny_report["workdir"] / "results/report"
    text = (report_dir / "comparison/comparison.md").read_text(encoding="utf-8")
    assert "Only one platform is present: test-cpu is the only measured platform" in text
    cells = _read_csv(report_dir / "comparison/cells.csv")
    pairs = {(c["platform_a"], c["platform_b"]) for c in cells}
    # b4_e1 and b8_e1 of the tiny grid are cells of the 2020 grid too, but on synthetic images
    # at 64 px: listed as not compared with the study's BCCD cells, never timed against them.
    assert (T4, P40) in pairs and ("test-cpu", T4) not in pairs
    assert (
        "finished on both but not compared: test-cpu trained on synthetic-tiny at 64 px, "
        f"{T4} on bccd at 416 px"
    ) in text
    found = (report_dir / "findings.md").read_text(encoding="utf-8")
    assert "On test-cpu, yolov3-tiny trained" in found
    assert "Only one platform is present" in found


@pytest.mark.slow
def test_snakemake_report_holds_every_plot_and_table(tiny_report: dict[str, Any]) -> None:
    html = (tiny_report["workdir"] / "report.html").read_text(encoding="utf-8")
    for category in ("Findings", "Accuracy", "Training time", "Resources", "Platforms", "Data"):
        assert f'"{category}"' in html, category
    for name in ("train_time_b4.png", "loss_test-cpu_yolov3.png", "test-cpu_yolov3.html"):
        assert name in html
    assert html.count("data:image/png") >= len(
        [e for e in tiny_report["layout"].plots() if e.category is not None]
    )
    assert '"platform": "cloud-t4 (published 2020)"' in html


@pytest.mark.slow
def test_second_platform_turns_the_comparison_on(
    tiny_report: dict[str, Any],
    tmp_path: Path,
    tree_cloner: Callable[[Path, Path], Path],
    snakemake: Callable[..., Any],
    tiny_config: Path,
) -> None:
    workdir = tree_cloner(tiny_report["workdir"], tmp_path / "workflow")
    results = workdir / "results"
    shutil.rmtree(results / "report")
    tree_cloner(results / "test-cpu", results / "other-cpu")

    run = snakemake(workdir, "--cores", "2", "--configfile", str(tiny_config))

    assert run.returncode == 0, run.describe()
    assert "train" not in run.job_stats() and "evaluate" not in run.job_stats()
    text = (results / "report/comparison/comparison.md").read_text(encoding="utf-8")
    assert "Only one platform is present" not in text
    assert "Measured platforms: test-cpu, other-cpu." in text
    assert "## A = test-cpu, B = other-cpu" in text
    cells = _read_csv(results / "report/comparison/cells.csv")
    measured = [c for c in cells if (c["platform_a"], c["platform_b"]) == ("test-cpu", "other-cpu")]
    assert len(measured) == 8
    assert {c["time_basis"] for c in measured} == {"train_time_s"}
    assert all(float(c["time_ratio_a_over_b"]) == pytest.approx(1.0) for c in measured)
    assert (results / "report/tables/other-cpu_yolov3-tiny.md").is_file()
    assert (results / "report/plots/loss_other-cpu_yolov3.png").is_file()
    report = snakemake(workdir, "--report", "report.html", "--configfile", str(tiny_config))
    assert report.returncode == 0, report.describe()
    assert "other-cpu_yolov3.html" in (workdir / "report.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- repeats


def repeated_platforms(noise_a: float, noise_b: float, n: int = 5) -> pd.DataFrame:
    """Platform a 10% faster than b on one cell, every run a row of its own."""
    rng = np.random.default_rng(7)
    rows = []
    for platform, mean, noise in (("a", 90.0, noise_a), ("b", 100.0, noise_b)):
        times = mean * np.exp(rng.normal(0.0, noise, n))
        for repeat, seconds in enumerate(times):
            rows.append(
                summary_row(platform, "yolov3", 8, 2, repeat=repeat, train_time_s=seconds,
                            map50=0.5 + 0.01 * repeat)
            )
    return frame_of(rows)


def test_repeats_are_one_cell_with_their_mean_and_runs() -> None:
    frame = repeated_platforms(0.01, 0.01)
    assert len(frame) == 2 and list(frame["n"]) == [5, 5]
    a = frame[frame["platform"] == "a"].iloc[0]
    assert a["train_time_s"] == pytest.approx(np.mean(a["train_time_s_runs"]))
    assert a["map50"] == pytest.approx(0.52)


def test_comparison_says_faster_only_when_the_interval_excludes_one() -> None:
    cells = pairs.compare_cells(repeated_platforms(0.01, 0.01), ["a", "b"])
    [cell] = cells.to_dict("records")
    assert (cell["n_a"], cell["n_b"]) == (5, 5)
    assert cell["time_verdict"] is Verdict.A
    assert cell["time_ratio_ci_low"] < cell["time_ratio_a_over_b"] < cell["time_ratio_ci_high"] < 1
    assert cell["map50_verdict"] is Verdict.NO_DIFFERENCE  # the same mAPs on both
    noisy = pairs.compare_cells(repeated_platforms(0.2, 0.2), ["a", "b"]).iloc[0]
    assert noisy["time_verdict"] is Verdict.NO_DIFFERENCE
    document = comparison.comparison_document(repeated_platforms(0.01, 0.01), ["a", "b"])
    markdown = document.to_markdown()
    assert "Over the repeats: is the difference real?" in markdown
    assert "| yolov3 | 8 | 2 | 5 | 5 |" in markdown and "a faster" in markdown


def test_findings_state_n_and_only_supported_differences() -> None:
    [sentence] = findings.platform_speed(repeated_platforms(0.01, 0.01), ["a", "b"])
    assert "n = 5 and 5 runs per cell" in sentence
    assert "a faster in 1, b faster in 0 (95% interval of the time ratio excluding 1)" in sentence
    [noisy] = findings.platform_speed(repeated_platforms(0.2, 0.2), ["a", "b"])
    assert "no detectable difference in 1" in noisy and "a faster in 0" in noisy
    [steady] = findings.consistency(repeated_platforms(0.005, 0.2, n=8), ["a", "b"])
    assert steady.startswith("yolov3 batch 8, 2 epochs: a ran more consistently than b (CV ")
    assert "n = 8 and 8" in steady


def steadier_and_faster(order: tuple[str, str], faster: str, steadier: str) -> pd.DataFrame:
    """One cell with 8 runs on each platform of ``order``: ``faster`` takes 60 s against 100 s,
    ``steadier`` varies by 0.5% against 10%."""
    rng = np.random.default_rng(11)
    rows = []
    for platform in order:
        mean = 60.0 if platform == faster else 100.0
        noise = 0.005 if platform == steadier else 0.10
        for repeat, seconds in enumerate(mean * np.exp(rng.normal(0.0, noise, 8))):
            rows.append(summary_row(platform, "yolov3", 8, 2, repeat=repeat, train_time_s=seconds))
    return frame_of(rows)


@pytest.mark.parametrize("steadier", ["h100", "h100-sxm"])
@pytest.mark.parametrize("faster", ["h100", "h100-sxm"])
@pytest.mark.parametrize("order", [("h100", "h100-sxm"), ("h100-sxm", "h100")])
def test_a_label_that_starts_another_is_named_right(
    order: tuple[str, str], faster: str, steadier: str
) -> None:
    """``h100`` is the start of ``h100-sxm``: the verdicts, their words and the findings name
    the platform that was faster or steadier, in either order."""
    a, b = order
    shakier = b if steadier == a else a
    frame = steadier_and_faster(order, faster, steadier)
    [cell] = pairs.compare_cells(frame, list(order)).to_dict("records")
    assert cell["time_verdict"] is (Verdict.A if faster == a else Verdict.B)
    assert cell["spread_verdict"] is (Verdict.A if steadier == a else Verdict.B)
    [words] = comparison.with_words(pairs.compare_cells(frame, list(order))).to_dict("records")
    assert words["time_verdict"] == f"{faster} faster"
    assert words["spread_verdict"] == f"{steadier} more consistent"
    markdown = comparison.comparison_document(frame, list(order)).to_markdown()
    assert f"| {faster} faster |" in markdown and f"| {steadier} more consistent |" in markdown
    [speed] = findings.platform_speed(frame, list(order))
    assert (
        f"{a} faster in {int(faster == a)}, {b} faster in {int(faster == b)} (95% interval"
    ) in speed
    assert f"2 epochs: {faster} took 1." in speed  # 100 s / 60 s, within the noise
    [steady] = findings.consistency(frame, list(order))
    assert steady.startswith(
        f"yolov3 batch 8, 2 epochs: {steadier} ran more consistently than {shakier} (CV "
    )
    assert f"for {a} and {b}, p = " in steady


def test_verdict_words() -> None:
    words = comparison.verdict_words
    assert words("time_verdict", Verdict.B, "h100", "h100-sxm") == "h100-sxm faster"
    assert words("time_verdict", Verdict.NOT_TESTABLE, "a", "b") == "single run, no spread"
    assert words("cells_verdict", Verdict.NOT_TESTABLE, "a", "b") == "single cell, no spread"
    assert words("spread_verdict", Verdict.NOT_TESTABLE, "a", "b") == "too few runs"
    assert words("spread_verdict", Verdict.A, "a", "b") == "a more consistent"
    assert words("map50_verdict", Verdict.A, "a", "b") == "a higher"
    assert words("map50_verdict", Verdict.NO_DIFFERENCE, "a", "b") == "no detectable difference"
    assert words("time_verdict", math.nan, "a", "b") == "NA"


def test_spread_consistency_and_breakdown_figures(tmp_path: Path) -> None:
    from detbench.report import spread_plots

    frame = repeated_platforms(0.01, 0.05)
    figure = spread_plots.spread_figure(frame, ["a", "b"], "yolov3")
    legends = [t.get_text() for a in figure.axes for t in a.get_legend().get_texts()]
    assert "a b8 (n = 5)" in legends and "b b8 (n = 5)" in legends
    assert "train wall time (s)" in [a.get_ylabel() for a in figure.axes]
    consistency = spread_plots.consistency_figure(frame, ["a", "b"])
    heights = [p.get_height() for p in consistency.axes[0].patches]
    assert len(heights) == 2 and heights[0] < heights[1]  # a is the steadier
    runs = pd.DataFrame([
        {"platform": "a", "model": "yolov3", "batch": 8, "epochs": 2, "startup_s": 5.0,
         "first_epoch_s": 3.0, "first_epoch_extra_s": 1.0, "steady_epochs_s": 2.0,
         "interim_eval_s": 0.5, "checkpoint_s": 0.25},
        {"platform": "a", "model": "yolov3", "batch": 8, "epochs": 2, "startup_s": 7.0,
         "first_epoch_s": 3.0, "first_epoch_extra_s": 1.0, "steady_epochs_s": 2.0,
         "interim_eval_s": 0.5, "checkpoint_s": 0.25},
    ])
    table = spread_plots.breakdown_table(runs, "a")
    assert table.iloc[0][["startup_s", "first_epoch_extra_s", "epochs_s", "n"]].tolist() == [
        6.0, 1.0, 4.0, 2
    ]
    figure = spread_plots.time_breakdown_figure(runs, "a")
    assert sum(p.get_height() for p in figure.axes[0].patches) == pytest.approx(11.75)


def test_where_the_time_went_names_the_part_that_differs() -> None:
    parts = {"first_epoch_s": 2.0, "first_epoch_extra_s": 0.5, "steady_epochs_s": 4.0,
             "interim_eval_s": 0.0, "checkpoint_s": 0.1}
    rows = [
        summary_row("a", "yolov3", 8, 2, train_time_s=6.0, startup_s=3.0, **parts),
        summary_row("b", "yolov3", 8, 2, train_time_s=6.5, startup_s=12.0, **parts),
    ]
    frame = frame_of(rows)
    [row] = pairs.breakdown_differences(frame, "a", "b").to_dict("records")
    assert row["d_startup_s"] == -9.0
    assert pairs.largest_part(row) == ("startup_s", -9.0)
    markdown = comparison.comparison_document(frame, ["a", "b"]).to_markdown()
    assert "Where the time went (s, means over the runs)" in markdown
    assert "start-up (-9.00 s)" in markdown
    [sentence] = findings.time_parts(frame, ["a", "b"])
    assert "differs most is start-up in 1 cell" in sentence
