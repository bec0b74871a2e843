"""The summary table from hand-made cell folders: its columns, 'NA' for what a cell lacks,
per-class AP columns, the column dictionary beside it, and one-line errors for broken cells."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from detbench.errors import DetbenchError
from detbench.summary.aggregate import COLUMNS, find_cells, write_summary

CLASSES = ("RBC", "WBC", "Platelets")


def _run(model: str, batch: int, epochs: int, **changes: Any) -> dict[str, Any]:
    record = {
        "model": model,
        "batch": batch,
        "epochs": epochs,
        "img_size": 416,
        "seed": 0,
        "weights": "scratch",
        "dataset": "bccd",
        "train_split": "train",
        "train_images": 205,
        "device": "cuda:0",
        "device_name": "Tesla P40",
        "precision": "fp16",
        "train_seconds": 123.5,
        "images_per_second": epochs * 205 / 123.5,
        "segments": 1,
    }
    record.update(changes)
    return {k: v for k, v in record.items() if v is not None}


def _metrics(map50: float = 0.5, per_class: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    if per_class is None:
        per_class = [
            {"name": name, "ap50": map50 - 0.1 * i, "ap50_95": (map50 - 0.1 * i) / 2}
            for i, name in enumerate(CLASSES)
        ]
    return {
        "split": "test",
        "num_images": 72,
        "metrics": {
            "map50": map50,
            "map50_95": map50 / 2,
            "pr_confidence": 0.1,
            "precision_at_conf": 0.6,
            "recall_at_conf": 0.7,
            "best_f1_confidence": 0.25,
            "precision_at_best_f1": 0.65,
            "recall_at_best_f1": 0.66,
            "per_class": per_class,
        },
        "val_loss": {"box": 0.05, "obj": 0.4, "cls": 0.01},
        "eval_seconds": 3.25,
    }


HISTORY = (
    "epoch,lr,train_box_loss,train_obj_loss,train_cls_loss,train_total_loss,epoch_seconds,"
    "images_per_second\n"
    "1,0.01,0.09,0.8,0.03,0.92,60,3.4\n"
    "2,0.002,0.07,0.6,0.02,0.69,63.5,3.2\n"
)


def _cell(
    root: Path,
    platform: str,
    model: str,
    batch: int,
    epochs: int,
    *,
    run: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    history: str | None = HISTORY,
) -> Path:
    cell = root / platform / model / f"b{batch}_e{epochs}"
    cell.mkdir(parents=True)
    record = run if run is not None else _run(model, batch, epochs)
    (cell / "run.json").write_text(json.dumps(record), encoding="utf-8")
    (cell / "metrics.json").write_text(json.dumps(metrics or _metrics()), encoding="utf-8")
    if history is not None:
        (cell / "history.csv").write_text(history, encoding="utf-8")
    return cell


def _read(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        return list(reader.fieldnames or []), list(reader)


@pytest.fixture
def results(tmp_path: Path) -> Path:
    root = tmp_path / "results"
    _cell(root, "baremetal-p40", "yolov3", 16, 5)
    _cell(root, "baremetal-p40", "yolov3", 8, 5, metrics=_metrics(0.75))
    _cell(
        root,
        "cloud-t4",
        "yolov3-tiny",
        4,
        1,
        run=_run("yolov3-tiny", 4, 1, device_name=None, precision=None, segments=2),
        metrics=_metrics(
            0.25,
            per_class=[
                {"name": "RBC", "ap50": 0.5, "ap50_95": 0.2},
                {"name": "WBC", "ap50": None, "ap50_95": None},  # no ground truth
            ],
        ),
        history=None,
    )
    return root


def test_summary_has_the_documented_columns_in_order(results: Path) -> None:
    rows = write_summary(find_cells(results), results / "summary.csv")
    header, table = _read(results / "summary.csv")
    assert header[: len(COLUMNS)] == list(COLUMNS)
    per_class = [f"ap50_{n}" for n in CLASSES] + [f"ap50_95_{n}" for n in CLASSES]
    assert sorted(header[len(COLUMNS) :]) == sorted(per_class)
    assert len(table) == len(rows) == 3
    columns = json.loads((results / "summary.columns.json").read_text(encoding="utf-8"))
    assert set(columns) == set(header)
    assert all(isinstance(text, str) and text.strip() for text in columns.values())
    assert "WBC" in columns["ap50_WBC"] and "eval_split" in columns["ap50_95_WBC"]
    assert not list(results.glob(".*.tmp")), "temporary files were left behind"


def test_summary_values_come_from_the_cell_files(results: Path) -> None:
    write_summary(find_cells(results), results / "summary.csv")
    _, table = _read(results / "summary.csv")
    first = table[0]
    assert (first["platform"], first["model"], first["batch"], first["epochs"]) == (
        "baremetal-p40",
        "yolov3",
        "8",
        "5",
    )
    assert first["dataset"] == "bccd" and first["device_name"] == "Tesla P40"
    assert float(first["train_time_s"]) == 123.5
    assert float(first["map50"]) == 0.75 and float(first["map50_95"]) == 0.375
    assert first["eval_split"] == "test" and first["eval_images"] == "72"
    assert float(first["pr_confidence"]) == 0.1
    assert float(first["val_obj_loss"]) == 0.4
    # Training losses are the last epoch's.
    assert (first["train_box_loss"], first["train_obj_loss"], first["train_cls_loss"]) == (
        "0.07",
        "0.6",
        "0.02",
    )
    assert float(first["ap50_WBC"]) == pytest.approx(0.65)


def test_missing_values_are_na(results: Path) -> None:
    write_summary(find_cells(results), results / "summary.csv")
    _, table = _read(results / "summary.csv")
    tiny = next(row for row in table if row["platform"] == "cloud-t4")
    assert tiny["device_name"] == "NA" and tiny["precision"] == "NA"  # not in run.json
    assert tiny["segments"] == "2"
    for column in ("train_box_loss", "train_obj_loss", "train_cls_loss"):
        assert tiny[column] == "NA"  # no history.csv
    assert tiny["ap50_WBC"] == "NA"  # the class has no ground truth on this split
    assert tiny["ap50_Platelets"] == "NA"  # not evaluated for this cell at all
    assert "" not in tiny.values() and "None" not in tiny.values()


def test_find_cells_takes_only_finished_cell_folders(results: Path) -> None:
    for folder in ("datasets/voc/b1_e1", "logs/x/b1_e1", "reference/x/b1_e1", ".hidden/m/b1_e1"):
        (results / folder).mkdir(parents=True)
        (results / folder / "metrics.json").write_text("{}", encoding="utf-8")
    (results / "p/yolov3/notacell").mkdir(parents=True)
    (results / "p/yolov3/notacell/metrics.json").write_text("{}", encoding="utf-8")
    (results / "p/yolov3/b2_e2").mkdir(parents=True)  # training, not evaluated yet
    cells = find_cells(results)
    names = [str(cell.relative_to(results)) for cell in cells]
    # Sorted by platform, model, then batch and epochs as numbers (b8 before b16).
    assert names == [
        "baremetal-p40/yolov3/b8_e5",
        "baremetal-p40/yolov3/b16_e5",
        "cloud-t4/yolov3-tiny/b4_e1",
    ]


BROKEN_METRICS = {
    "truncated JSON": '{"split": "test", "metrics": {"map50": 0.',
    "not an object": "[1, 2, 3]",
    "no metrics": '{"split": "test", "val_loss": {"box": 1, "obj": 1, "cls": 1}}',
    "no val_loss": json.dumps({k: v for k, v in _metrics().items() if k != "val_loss"}),
}


@pytest.mark.parametrize("problem", list(BROKEN_METRICS))
def test_broken_metrics_json_is_a_one_line_error_naming_it(results: Path, problem: str) -> None:
    text = BROKEN_METRICS[problem]
    broken = results / "baremetal-p40/yolov3/b16_e5/metrics.json"
    broken.write_text(text, encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        write_summary(find_cells(results), results / "summary.csv")
    message = str(info.value)
    assert message.startswith(f"{broken}: ") and "\n" not in message, message
    assert not (results / "summary.csv").exists()


def test_cell_without_run_json_is_a_one_line_error(results: Path) -> None:
    missing = results / "cloud-t4/yolov3-tiny/b4_e1/run.json"
    missing.unlink()
    with pytest.raises(DetbenchError, match=r"run\.json: missing"):
        write_summary(find_cells(results), results / "summary.csv")
