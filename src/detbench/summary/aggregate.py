"""Collect every finished cell under ``results/`` into one table, ``results/summary.csv``.

A cell's folder (named by :mod:`detbench.study.cells`) holds ``run.json`` (from training),
``history.csv`` and ``metrics.json`` (from evaluation); the profile of its model and batch size
joins its row where there is one. Every platform present is included, so copying another
platform's ``results/<platform>/`` beside this one and rebuilding the summary compares them
without retraining anything.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.cluster import efficiency
from detbench.deploy.summary_columns import describe_columns, inference_columns
from detbench.errors import DetbenchError, read_json
from detbench.study import cells
from detbench.study.cells import METRICS, RUN_RECORD, Cell
from detbench.summary.cell_stats import stats_columns, write_cell_stats
from detbench.summary.csv_table import csv_text
from detbench.training import target
from detbench.training.timing import BREAKDOWN_COLUMNS

# Column name -> what it holds (units, split, threshold). Written beside the summary.
COLUMNS: dict[str, str] = {
    "platform": "platform label the cell ran under",
    "dataset": "dataset name",
    "model": "yolov3 or yolov3-tiny",
    "batch": "training batch size (images)",
    "epochs": "training epochs",
    "repeat": "which run of the cell (0, 1, ...; config repeats)",
    "seed": "seed the run trained with (seed + repeat, or seed with repeat_seed fixed)",
    "img_size": "network input size (px, square letterbox)",
    "weights": "starting weights: scratch, backbone or coco",
    "device": "device the cell trained on (e.g. cpu, cuda:0)",
    "device_name": "GPU model, or on a CPU the CPU's model name",
    "cpu_model": "model name of the host's CPU (/proc/cpuinfo)",
    "cpu_cores": "CPUs the train job could use (its affinity: a Slurm or container allocation)",
    "host": "host name the train job ran on",
    "precision": "arithmetic of training: fp32, bf16 or fp16 (AMP)",
    "train_images": "images in the training split",
    "train_time_s": "training time: sum of epoch wall times (s), all segments",
    "train_images_per_s": "training throughput: epochs x train images / train_time_s",
    "segments": "how many job runs the training took (1 = never resumed)",
    **BREAKDOWN_COLUMNS,
    "eval_split": "split the metrics below are measured on",
    "eval_images": "images in eval_split",
    "map50": "mAP@0.5 on eval_split (COCO 101-point AP, mean over classes)",
    "map50_95": "mAP@0.5:0.95 on eval_split (COCO 101-point AP, mean over IoU 0.50..0.95)",
    "pr_confidence": "confidence at which precision_at_conf / recall_at_conf are read",
    "precision_at_conf": (
        "precision on eval_split at confidence pr_confidence, IoU 0.5, class mean"
    ),
    "recall_at_conf": "recall on eval_split at confidence pr_confidence, IoU 0.5, class mean",
    "best_f1_confidence": "confidence that maximises F1 of the class-mean P and R (IoU 0.5)",
    "precision_at_best_f1": "precision on eval_split at best_f1_confidence, IoU 0.5",
    "recall_at_best_f1": "recall on eval_split at best_f1_confidence, IoU 0.5",
    "val_box_loss": "box loss (1-CIoU x gain) per image on eval_split",
    "val_obj_loss": "objectness loss (BCE x gain) per image on eval_split",
    "val_cls_loss": "classification loss (BCE x gain) per image on eval_split",
    "train_box_loss": "box loss, mean over the last training epoch",
    "train_obj_loss": "objectness loss, mean over the last training epoch",
    "train_cls_loss": "classification loss, mean over the last training epoch",
    "eval_time_s": "time to predict eval_split (s, model forward + NMS)",
    # Resources of the train job (run.json "resources"), as /usr/bin/time -v reports them.
    "wall_time_s": "train job wall time (s): the whole process, start-up included, all segments",
    "user_time_s": (
        "train job user CPU time (s): the process and its reaped DataLoader workers, start-up "
        "included, all segments (the 2020 study's time -v 'User time')"
    ),
    "system_time_s": "train job system CPU time (s): as user_time_s, in the kernel",
    "cpu_percent": "(user_time_s + system_time_s) / wall_time_s x 100 (time -v 'Percent of CPU')",
    "max_rss_kb": (
        "peak resident set (kB) of the largest single process of the train job (main process "
        "or one DataLoader worker), as time -v's 'Maximum resident set size'"
    ),
    "max_tree_rss_kb": (
        "peak summed resident set (kB) of the train process and its live DataLoader workers, "
        "sampled every 0.5 s; shared pages count once per process (an upper bound)"
    ),
    # GPU telemetry of the train job (run.json "gpu", NVML sampled every 0.5 s); NA on a CPU.
    "gpu_name": "GPU model as NVML names it (NA: trained on a CPU or without NVML)",
    "gpu_peak_memory_mib": "peak GPU memory used (MiB, NVML, the whole device) during training",
    "gpu_mean_utilization_percent": "mean GPU utilisation during training (%, NVML samples)",
    "gpu_mean_power_w": "mean GPU board power during training (W, NVML samples)",
    "gpu_energy_j": "GPU energy of the train job (J), by gpu_energy_method",
    "gpu_energy_method": (
        "nvml_energy_counter (the GPU's energy counter, Volta and later) or power_integration "
        "(sampled power integrated over time)"
    ),
    # The profile of the cell's {model, batch} (profile_b{batch}/summary.json, torch.profiler).
    "activity_kind": (
        "what the profile's activities are: cuda_kernel (GPU activities, device time) or "
        "cpu_operator (CPU operators, self CPU time)"
    ),
    "biggest_activity_name": "activity with the largest total time in the profiled steps",
    "biggest_activity_avg_us": "average time per call of biggest_activity_name (µs)",
    "biggest_gpu_activity_avg_us": (
        "average time of the GPU activity with the largest total time (µs; the 2020 study's "
        "nvprof figure); NA when the profile ran on a CPU"
    ),
    # Cost and provenance.
    "cost": "wall_time_s / 3600 x gpu_hour_price of the platform (config); NA without a price",
    "currency": "currency of cost (config key currency)",
    "git_commit": "commit of the detbench checkout the cell trained with ('unknown' outside git)",
    "config_hash": "hash of the effective config of the cell (run.json provenance)",
    # The job the train job ran in, its wait and what it used of it (detbench.cluster).
    **efficiency.COLUMNS,
    # Time to a target accuracy (config target_map50; detbench.training.target).
    **target.COLUMNS,
}


def find_cells(results_dir: str | Path) -> list[Path]:
    """Every cell folder under ``results_dir`` with a finished evaluation, in cell order."""
    return [cell.folder(results_dir) for cell in cells.find_cells(results_dir)]


def _read_json(path: Path) -> dict[str, Any]:
    data = read_json(path, missing="missing (the cell is incomplete)")
    if not isinstance(data, dict):
        raise DetbenchError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


def _read_metrics(path: Path) -> dict[str, Any]:
    """A cell's metrics.json, checked for the parts the summary reads."""
    evaluation = _read_json(path)
    metrics, losses = evaluation.get("metrics"), evaluation.get("val_loss")
    if not isinstance(metrics, dict):
        raise DetbenchError(f"{path}: lacks 'metrics' (not a detbench metrics file)")
    if not isinstance(losses, dict) or not {"box", "obj", "cls"} <= set(losses):
        raise DetbenchError(f"{path}: lacks 'val_loss' box/obj/cls (not a detbench metrics file)")
    return evaluation


def _last_history_row(path: Path) -> dict[str, str]:
    if not path.exists():
        return {}
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return rows[-1] if rows else {}


def cell_row(
    cell: Path, prices: Mapping[str, float] | None = None, currency: str = "USD"
) -> dict[str, Any]:
    """One summary row from a cell folder's run.json, history.csv and metrics.json, with its
    {model, batch} profile where there is one. ``prices``: price per hour by platform label."""
    parsed = Cell.from_folder(cell)
    if parsed is None:
        raise DetbenchError(f"{cell}: not a cell folder (expected b<batch>_e<epochs>)")
    run = _read_json(cell / RUN_RECORD)
    _check_run_matches_folder(run, parsed, cell / RUN_RECORD)
    evaluation = _read_metrics(cell / METRICS)
    metrics = evaluation["metrics"]
    last = _last_history_row(cell / cells.HISTORY)
    row: dict[str, Any] = {
        "platform": parsed.platform,
        "dataset": run.get("dataset"),
        "model": parsed.model,
        "batch": run_batch(run),
        "epochs": int(run["epochs"]),
        "repeat": parsed.repeat,
        "seed": run.get("seed"),
        "img_size": run.get("img_size"),
        "weights": run.get("weights"),
        "device": run.get("device"),
        "device_name": run.get("device_name"),
        "precision": run.get("precision"),
        "train_images": run.get("train_images"),
        "train_time_s": run.get("train_seconds"),
        "train_images_per_s": run.get("images_per_second"),
        "segments": run.get("segments"),
        **{key: (run.get("time_breakdown") or {}).get(key) for key in BREAKDOWN_COLUMNS},
        "eval_split": evaluation.get("split"),
        "eval_images": evaluation.get("num_images"),
        "map50": metrics.get("map50"),
        "map50_95": metrics.get("map50_95"),
        "pr_confidence": metrics.get("pr_confidence"),
        "precision_at_conf": metrics.get("precision_at_conf"),
        "recall_at_conf": metrics.get("recall_at_conf"),
        "best_f1_confidence": metrics.get("best_f1_confidence"),
        "precision_at_best_f1": metrics.get("precision_at_best_f1"),
        "recall_at_best_f1": metrics.get("recall_at_best_f1"),
        "val_box_loss": evaluation["val_loss"]["box"],
        "val_obj_loss": evaluation["val_loss"]["obj"],
        "val_cls_loss": evaluation["val_loss"]["cls"],
        "train_box_loss": _float_or_none(last.get("train_box_loss")),
        "train_obj_loss": _float_or_none(last.get("train_obj_loss")),
        "train_cls_loss": _float_or_none(last.get("train_cls_loss")),
        "eval_time_s": evaluation.get("eval_seconds"),
    }
    row.update(_resource_columns(run))
    row.update(efficiency.summary_columns(run))
    row.update(_profile_columns(parsed.profile_folder(cell.parents[2]) / "summary.json"))
    row.update(inference_columns(cell))
    price = (prices or {}).get(row["platform"])
    wall = row["wall_time_s"]
    row["cost"] = wall / 3600 * price if price is not None and wall is not None else None
    row["currency"] = currency if row["cost"] is not None else None
    row.update(target.summary_columns(run, price))
    for entry in metrics.get("per_class", []):
        row[f"ap50_{entry['name']}"] = entry.get("ap50")
        row[f"ap50_95_{entry['name']}"] = entry.get("ap50_95")
    return row


def run_batch(run: Mapping[str, Any]) -> int:
    """The training batch of a run record (``batch``; ``batch_size`` in records written before
    the rename)."""
    return int(run["batch"] if "batch" in run else run["batch_size"])


def _check_run_matches_folder(run: Mapping[str, Any], cell: Cell, path: Path) -> None:
    """A run record copied into the wrong folder would put its figures in another cell's row."""
    try:
        recorded = (str(run["model"]), run_batch(run), int(run["epochs"]))
    except (KeyError, TypeError, ValueError):
        raise DetbenchError(
            f"{path}: lacks model, batch or epochs (not a detbench run record)"
        ) from None
    expected = (cell.model, cell.batch, cell.epochs)
    if recorded != expected:
        raise DetbenchError(
            f"{path}: records {recorded[0]} b{recorded[1]} e{recorded[2]}, but its folder is "
            f"{cell.label()} (a run record copied into the wrong cell?)"
        )


def _resource_columns(run: dict[str, Any]) -> dict[str, Any]:
    """Resources, GPU telemetry and provenance of the train job (NA for older run.json)."""
    resources = run.get("resources") or {}
    gpu = run.get("gpu") or {}
    provenance = run.get("provenance") or {}
    return {
        "wall_time_s": resources.get("wall_time_s"),
        "user_time_s": resources.get("user_time_s"),
        "system_time_s": resources.get("system_time_s"),
        "cpu_percent": resources.get("cpu_percent"),
        "max_rss_kb": resources.get("max_rss_kb"),
        "max_tree_rss_kb": resources.get("max_tree_rss_kb"),
        "cpu_model": provenance.get("cpu_model"),
        "cpu_cores": provenance.get("cpu_cores_usable"),
        "host": provenance.get("host"),
        "gpu_name": gpu.get("name"),
        "gpu_peak_memory_mib": gpu.get("peak_memory_used_mib"),
        "gpu_mean_utilization_percent": gpu.get("mean_utilization_percent"),
        "gpu_mean_power_w": gpu.get("mean_power_w"),
        "gpu_energy_j": gpu.get("energy_j"),
        "gpu_energy_method": gpu.get("energy_method"),
        "git_commit": provenance.get("git_commit"),
        "config_hash": provenance.get("config_hash"),
    }


def _profile_columns(path: Path) -> dict[str, Any]:
    profile = _read_json(path) if path.exists() else {}
    return {
        key: profile.get(key)
        for key in (
            "activity_kind",
            "biggest_activity_name",
            "biggest_activity_avg_us",
            "biggest_gpu_activity_avg_us",
        )
    }


def _float_or_none(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def summary_rows(
    folders: Iterable[Path], prices: Mapping[str, float] | None = None, currency: str = "USD"
) -> list[dict[str, Any]]:
    """Rows in platform, model, batch, epochs order (numeric, so b4 comes before b16)."""
    return [cell_row(folder, prices, currency) for folder in sorted(folders, key=_cell_order)]


def _cell_order(folder: Path) -> tuple[Any, ...]:
    cell = Cell.from_folder(folder)
    return (0, cell) if cell is not None else (1, str(folder))


def to_csv(rows: list[dict[str, Any]]) -> str:
    columns = list(COLUMNS)
    for row in rows:  # per-class AP columns, in first-seen order
        columns.extend(key for key in row if key not in columns)
    return csv_text(rows, columns)


def write_summary(
    folders: Iterable[Path],
    path: str | Path,
    *,
    prices: Mapping[str, float] | None = None,
    currency: str = "USD",
    stats_path: str | Path | None = None,
) -> list[dict[str, Any]]:
    """Write the summary CSV (a row per run) and, beside it, a JSON dictionary of what each
    column holds; with ``stats_path``, the per-cell statistics over the repeats there (and
    their dictionary beside them: detbench.summary.cell_stats).

    ``prices``: price of one hour per platform label (config gpu_hour_price), in ``currency``.
    """
    rows = summary_rows(folders, prices, currency)
    atomic.write_text(path, to_csv(rows))
    if stats_path is not None:
        write_cell_stats(rows, stats_path)
        atomic.write_json(Path(stats_path).with_suffix(".columns.json"), stats_columns())
    columns = {**COLUMNS}
    for row in rows:
        for key in row:
            if key.startswith("ap50_95_"):
                columns[key] = f"AP@0.5:0.95 of class {key[8:]} on eval_split"
            elif key.startswith("ap50_"):
                columns[key] = f"AP@0.5 of class {key[5:]} on eval_split"
    columns.update(describe_columns(rows))
    atomic.write_json(Path(path).with_suffix(".columns.json"), columns)
    return rows
