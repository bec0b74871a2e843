"""The 2020 study's published figures, as two reference platforms of the report.

The figures ship with detbench (``detbench/reference/study_2020.csv``; its README says what
each column meant in 2020). Here they become cell records in detbench's own column names, under
the platform labels ``cloud-t4 (published 2020)`` and ``baremetal-p40 (published 2020)``.
Standard library only: the workflow reads the reference grid at parse time.
"""

from __future__ import annotations

import csv
import math
from importlib import resources
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError

PUBLISHED = "published 2020"
# The platforms of the original study, in the order the report shows them.
REFERENCE_PLATFORMS = ("cloud-t4", "baremetal-p40")
REFERENCE_COLUMNS = (
    "platform",
    "gpu",
    "model",
    "batch",
    "epochs",
    "user_s",
    "cpu_pct",
    "max_rss_kb",
    "biggest_gpu_activity_avg_us",
    "precision",
    "recall",
    "objectness",
    "classification",
    "status",
)
# Published column -> detbench column it is shown next to (like with like: user_s is the user
# CPU time of the whole training process, so it meets user_time_s, never train_time_s).
COLUMN_MAP = {
    "user_s": "user_time_s",
    "cpu_pct": "cpu_percent",
    "max_rss_kb": "max_rss_kb",
    "biggest_gpu_activity_avg_us": "biggest_gpu_activity_avg_us",
    "precision": "precision_at_conf",
    "recall": "recall_at_conf",
    "objectness": "train_obj_loss",
    "classification": "train_cls_loss",
}
# What the original measured under, for the rows and the notes of the report.
SETUP = {
    "dataset": "bccd",
    "img_size": 416,
    "weights": "pretrained yolov3.pt",
    "eval_split": "val",
    "pr_confidence": 0.1,
}


def reference_csv() -> Path:
    """Path of the packaged copy of the published figures."""
    return Path(str(resources.files("detbench") / "reference" / "study_2020.csv"))


def platform_label(platform: str) -> str:
    """Report label of a published platform, e.g. ``cloud-t4 (published 2020)``."""
    return f"{platform} ({PUBLISHED})"


def is_published(label: str) -> bool:
    return label.endswith(f"({PUBLISHED})")


def read_reference(path: str | Path | None = None) -> list[dict[str, str]]:
    """The published rows as they are in the CSV (strings), checked for their columns."""
    path = Path(path) if path is not None else reference_csv()
    try:
        with path.open(encoding="utf-8", newline="") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REFERENCE_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise DetbenchError(f"{path}: missing column(s) {', '.join(missing)}")
            return list(reader)
    except FileNotFoundError:
        raise DetbenchError(f"{path}: the 2020 reference figures are missing") from None


def reference_cells(path: str | Path | None = None) -> list[tuple[str, str, int, int]]:
    """(platform label, model, batch, epochs) of every published cell, failed ones included."""
    return [
        (platform_label(row["platform"]), row["model"], int(row["batch"]), int(row["epochs"]))
        for row in read_reference(path)
    ]


def reference_records(path: str | Path | None = None) -> list[dict[str, Any]]:
    """The published cells in detbench's column names (see ``detbench.report.frame``)."""
    records = []
    for row in read_reference(path):
        status = row["status"].strip() or "ok"
        record: dict[str, Any] = {
            "platform": platform_label(row["platform"]),
            "source": PUBLISHED,
            "model": row["model"],
            "batch": int(row["batch"]),
            "epochs": int(row["epochs"]),
            "status": status,
            "device_name": row["gpu"],
            **SETUP,
            # No training wall time and no mAP were published.
            "train_time_s": math.nan,
            "map50": math.nan,
            "map50_95": math.nan,
        }
        for published, ours in COLUMN_MAP.items():
            record[ours] = _number(row[published])
        if status != "ok":
            record["pr_confidence"] = math.nan
        records.append(record)
    return records


def _number(text: str) -> float:
    return float(text) if text.strip() else math.nan
