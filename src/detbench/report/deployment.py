"""The report's "Deployment" section: what a trained model costs to serve, per platform, model
and backend (the inference columns of summary.csv, detbench.deploy.summary_columns), with 95%
intervals over the model's runs, and findings sentences that carry their numbers.

Latency here is the batch-1 p50 of each run (end to end: decode, letterbox, forward, NMS; and
the forward alone); a model's runs are every cell and repeat of it on the platform, whose
forward costs the same work (training changes the weights' values, not the network).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from detbench import atomic
from detbench.deploy.summary_columns import BACKEND_TITLES, prefix
from detbench.errors import DetbenchError
from detbench.report.document import Document
from detbench.summary.stats import describe

TITLE = "Deployment: what a trained model costs to serve"
TINY, FULL = "yolov3-tiny", "yolov3"
REFERENCE = "torch"


def read_runs(path: str | Path) -> pd.DataFrame:
    """summary.csv's runs with inference columns (none: an empty frame)."""
    try:
        summary = pd.read_csv(path)
    except FileNotFoundError:
        raise DetbenchError(f"{path}: missing (run the workflow first)") from None
    if "infer_timed_images" not in summary.columns:
        return summary.iloc[0:0]
    return summary[summary["infer_timed_images"].notna()]


def backends(runs: pd.DataFrame) -> list[str]:
    return [b for b in BACKEND_TITLES if f"{prefix(b)}_e2e_p50_ms" in runs.columns]


def _interval(values: pd.Series, digits: int = 1) -> str:
    """mean [95% CI low, high] (n) of the finite values; the mean alone for one run."""
    summary = describe(values.astype(float).tolist())
    if summary is None:
        return "NA"
    text = f"{summary.mean:.{digits}f}"
    if summary.ci_low is not None and summary.ci_high is not None:
        text += f" [{summary.ci_low:.{digits}f}, {summary.ci_high:.{digits}f}]"
    return text


def _mean(values: pd.Series) -> float:
    finite = values.astype(float).dropna()
    return float(finite.mean()) if len(finite) else math.nan


def backend_table(runs: pd.DataFrame, platform: str) -> tuple[list[str], list[list[str]]]:
    own = runs[runs["platform"] == platform]
    batches = sorted(
        {
            int(c.rsplit("_b", 1)[1])
            for c in runs.columns
            if "_images_per_s_b" in c and own[c].notna().any()
        }
    )
    headers = [
        "model",
        "backend",
        "device",
        "runs",
        "end-to-end p50 (ms)",
        "forward p50 (ms)",
        "forward p99 (ms)",
        *[f"images/s at batch {b}" for b in batches],
        "model file (MB)",
        "peak RSS (MiB)",
        "mAP@0.5 − PyTorch's",
    ]
    rows = []
    for model in sorted(own["model"].unique(), key=lambda m: (m != FULL, m)):
        cells = own[own["model"] == model]
        for backend in backends(cells):
            name = prefix(backend)
            measured = cells[cells[f"{name}_e2e_p50_ms"].notna()]
            if measured.empty:
                continue
            rows.append(
                [
                    model,
                    BACKEND_TITLES[backend],
                    str(measured[f"{name}_device"].iloc[0]),
                    str(len(measured)),
                    _interval(measured[f"{name}_e2e_p50_ms"]),
                    _interval(measured[f"{name}_forward_p50_ms"]),
                    _interval(measured[f"{name}_forward_p99_ms"]),
                    *[
                        _interval(measured.get(f"{name}_images_per_s_b{b}", pd.Series()), 1)
                        for b in batches
                    ],
                    f"{_mean(measured[f'{name}_model_mb']):.1f}",
                    f"{_mean(measured[f'{name}_peak_rss_mib']):.0f}",
                    f"{_mean(measured[f'{name}_map50_diff']):+.4f}",
                ]
            )
    return headers, rows


def tiny_against_full(runs: pd.DataFrame, platform: str, backend: str) -> str | None:
    """The 2020 study's reason for serving tiny, in this platform's numbers."""
    own = runs[runs["platform"] == platform]
    name = prefix(backend)
    column = f"{name}_e2e_p50_ms"
    if column not in own.columns:
        return None
    tiny, full = own[own["model"] == TINY], own[own["model"] == FULL]
    if tiny[column].notna().sum() == 0 or full[column].notna().sum() == 0:
        return None
    t_ms, f_ms = _mean(tiny[column]), _mean(full[column])
    t_mb, f_mb = _mean(tiny[f"{name}_model_mb"]), _mean(full[f"{name}_model_mb"])
    shared = tiny.merge(full, on=["batch", "epochs"], suffixes=("_tiny", "_full"))
    if shared.empty:
        accuracy = "no cell trained with the same batch and epochs to compare mAP@0.5 with"
    else:
        difference = _mean(shared["map50_full"]) - _mean(shared["map50_tiny"])
        accuracy = (
            f"at {abs(difference):.3f} mAP@0.5 {'less' if difference >= 0 else 'more'} "
            f"({_mean(shared['map50_tiny']):.3f} against {_mean(shared['map50_full']):.3f} on "
            f"{own['eval_split'].iloc[0]}, mean over the {len(shared)} runs trained alike)"
        )
    return (
        f"The 2020 study chose yolov3-tiny for its app; on {platform} with "
        f"{BACKEND_TITLES[backend]} it answers {f_ms / t_ms:.1f}× faster (end-to-end batch-1 "
        f"p50 {t_ms:.1f} ms against {f_ms:.1f} ms, mean over {tiny[column].notna().sum()} and "
        f"{full[column].notna().sum()} runs) and its model file is {f_mb / t_mb:.1f}× smaller "
        f"({t_mb:.1f} MB against {f_mb:.1f} MB), {accuracy}."
    )


def backend_against_eager(runs: pd.DataFrame, platform: str, backend: str) -> list[str]:
    """Per model: the backend's batch-1 forward and end-to-end latency over PyTorch eager's."""
    own = runs[runs["platform"] == platform]
    name, ref = prefix(backend), prefix(REFERENCE)
    sentences = []
    for model in sorted(own["model"].unique()):
        cells = own[own["model"] == model]
        pairs = cells[[f"{name}_forward_p50_ms", f"{ref}_forward_p50_ms"]].dropna()
        if pairs.empty:
            continue
        ratio = pairs.iloc[:, 0] / pairs.iloc[:, 1]
        e2e = _mean(cells[f"{name}_e2e_p50_ms"]) / _mean(cells[f"{ref}_e2e_p50_ms"])
        worst = cells[f"{name}_map50_diff"].abs().max()
        sentences.append(
            f"{model} on {platform}: {BACKEND_TITLES[backend]} takes {_interval(ratio, 2)}× "
            f"PyTorch eager's batch-1 forward latency (p50, mean [95% CI] over {len(ratio)} "
            f"runs; {_mean(pairs.iloc[:, 0]):.1f} ms against {_mean(pairs.iloc[:, 1]):.1f} ms) "
            f"and {e2e:.2f}× its end-to-end latency; its mAP@0.5 differs from PyTorch's by at "
            f"most {worst:.1e} over those runs."
        )
    return sentences


def deployment_document(runs: pd.DataFrame) -> Document:
    document = Document(TITLE)
    if runs.empty:
        document.paragraph("No cell has an inference benchmark (inference.json) yet.")
        return document
    timed = sorted({int(n) for n in runs["infer_timed_images"].dropna()})
    threads = sorted({int(n) for n in runs["infer_threads"].dropna()})
    document.note(
        "Latency at batch 1 over the evaluation split's images, "
        f"{' or '.join(map(str, timed))} timed per backend after a warm-up, "
        f"{' or '.join(map(str, threads))} CPU thread(s); each run's p50 (or p99), then the "
        "mean over the model's runs with its 95% Student-t interval in brackets (one run: no "
        "interval). End to end: decode the image file from memory, letterbox, forward, NMS. "
        "Throughput: forward only. Peak RSS: the whole process serving with that backend "
        "(an ONNX Runtime process imports no torch). mAP@0.5 − PyTorch's: the backend's "
        "detections scored as the evaluation scores them, minus PyTorch eager fp32's."
    )
    for platform in runs["platform"].unique():
        document.heading(f"{platform}")
        headers, rows = backend_table(runs, platform)
        document.table(headers, rows)
        findings = []
        for backend in backends(runs[runs["platform"] == platform]):
            sentence = tiny_against_full(runs, platform, backend)
            if sentence:
                findings.append(sentence)
        for backend in backends(runs[runs["platform"] == platform]):
            if backend != REFERENCE:
                findings += backend_against_eager(runs, platform, backend)
        document.bullets(findings)
    return document


def write_deployment(summary: str | Path, markdown: str | Path, html: str | Path) -> Document:
    document = deployment_document(read_runs(summary))
    atomic.write_text(markdown, document.to_markdown())
    atomic.write_text(html, document.to_html())
    return document
