"""The report's Deployment section from summary.csv's inference columns."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from detbench.report.deployment import deployment_document, read_runs, write_deployment


def _run(model: str, epochs: int, repeat: int, torch_ms: float, ort_ms: float) -> dict:
    size = 35.0 if model == "yolov3-tiny" else 248.0
    row = {
        "platform": "demo-cpu",
        "model": model,
        "batch": 4,
        "epochs": epochs,
        "repeat": repeat,
        "eval_split": "test",
        "map50": 0.30 if model == "yolov3-tiny" else 0.45,
        "infer_timed_images": 64,
        "infer_threads": 2,
    }
    for backend, ms in (("torch", torch_ms), ("onnxruntime", ort_ms)):
        name = f"infer_{backend}"
        row |= {
            f"{name}_device": "cpu",
            f"{name}_e2e_p50_ms": ms + 2,
            f"{name}_forward_p50_ms": ms,
            f"{name}_forward_p99_ms": ms * 1.5,
            f"{name}_images_per_s_b1": 1000 / ms,
            f"{name}_images_per_s_b8": 1200 / ms,
            f"{name}_model_mb": size,
            f"{name}_peak_rss_mib": 300.0,
            f"{name}_map50_diff": 0.0 if backend == "torch" else 2e-4,
        }
    return row


def _summary(tmp_path: Path) -> Path:
    rows = [_run("yolov3", 8, 0, 100.0, 50.0)]
    rows += [_run("yolov3-tiny", 8, r, 10.0 + r, 5.0 + r / 2) for r in range(3)]
    rows.append({"platform": "other", "model": "yolov3", "batch": 4, "epochs": 1, "map50": 0.1})
    path = tmp_path / "summary.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_deployment_section_has_intervals_and_findings(tmp_path: Path) -> None:
    runs = read_runs(_summary(tmp_path))
    assert len(runs) == 4  # the cell without an inference benchmark is left out
    document = deployment_document(runs)
    markdown = document.to_markdown()
    tables = [b for b in document.blocks if b.kind == "table"]
    assert len(tables) == 1
    headers, rows = tables[0].headers, tables[0].rows
    assert "images/s at batch 8" in headers
    tiny_torch = next(r for r in rows if r[0] == "yolov3-tiny" and r[1].startswith("PyTorch"))
    # p50 forward of runs 10, 11, 12 ms: mean 11.0 with a t interval of +-2.5
    assert tiny_torch[3] == "3"
    assert tiny_torch[headers.index("forward p50 (ms)")] == "11.0 [8.5, 13.5]"
    full_torch = next(r for r in rows if r[0] == "yolov3" and r[1].startswith("PyTorch"))
    assert full_torch[headers.index("forward p50 (ms)")] == "100.0"  # one run: no interval
    assert (
        "it answers 7.8× faster (end-to-end batch-1 p50 13.0 ms against 102.0 ms, mean over 3 "
        "and 1 runs) and its model file is 7.1× smaller (35.0 MB against 248.0 MB), at 0.150 "
        "mAP@0.5 less" in markdown
    )
    assert "takes 0.50 [0.50, 0.50]× PyTorch eager's batch-1 forward latency" in markdown
    assert "by at most 2.0e-04" in markdown


def test_tiny_more_accurate_than_full_reads_more(tmp_path: Path) -> None:
    runs = read_runs(_summary(tmp_path))
    runs.loc[runs["model"] == "yolov3-tiny", "map50"] = 0.5
    markdown = deployment_document(runs).to_markdown()
    assert "at 0.050 mAP@0.5 more (0.500 against 0.450" in markdown


def test_deployment_section_without_benchmarks_says_so(tmp_path: Path) -> None:
    path = tmp_path / "summary.csv"
    pd.DataFrame([{"platform": "p", "model": "yolov3", "map50": 0.1}]).to_csv(path, index=False)
    markdown, html = tmp_path / "d.md", tmp_path / "d.html"
    write_deployment(path, markdown, html)
    assert "No cell has an inference benchmark" in markdown.read_text()
    assert html.read_text().startswith("<!DOCTYPE html>")
