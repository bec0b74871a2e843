"""The report's section "Waiting and allocation": what a platform costs beyond the run.

From results/summary.csv (detbench.cluster.efficiency's columns, detbench.training.target's)
and the evaluate and profile jobs' Snakemake benchmark files beside the cells:

- queue wait per platform, its distribution, labelled Slurm or local;
- efficiency per rule (CPU, memory, GPU, time limit used), medians with n;
- per platform: makespan, total queue wait, GPU-hours allocated against busy;
- time and cost to the target mAP@0.5 per cell, mean and 95% interval over the repeats;
- findings that hold the 2020 study's claims on waiting and allocation against these numbers.
"""

from __future__ import annotations

import csv
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.cluster.efficiency import PlatformTotals, platform_totals
from detbench.cluster.rightsizing import read_benchmark
from detbench.report.document import Document
from detbench.summary.stats import describe

TITLE = "Waiting and allocation"
NA = "NA"
# What the 2020 study said on waiting and allocation, quoted.
CLAIM_AVAILABILITY = (
    '"availability of GPU due to multiple active users is a problem" (bare metal); "additional '
    'GPU can be easily provisioned" (cloud)'
)
CLAIM_IDLING = (
    '"fixed resource allocation like memory and disk ... causes waste of resources due to '
    'idling" (bare metal)'
)
CLAIM_RESERVATION = (
    '"Cloud provides access to the latest and faster GPU but BareMetal provides better '
    'reservation of resources"'
)


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if number != number else number


def _values(rows: Sequence[Mapping[str, Any]], column: str) -> list[float]:
    return [v for v in (_number(row.get(column)) for row in rows) if v is not None]


def _fmt(value: float | None, digits: int = 2) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def _minutes(seconds: float | None) -> str:
    return NA if seconds is None else f"{seconds / 60:.2f}"


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _by_platform(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    grouped: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        grouped.setdefault(str(row["platform"]), []).append(row)
    return grouped


def _kind(rows: Sequence[Mapping[str, Any]]) -> str:
    kinds = sorted({str(row.get("job_scheduler")) for row in rows if row.get("job_scheduler")})
    return "/".join(kinds) or NA


# --------------------------------------------------------------------------- tables


def queue_wait_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["platform", "wait measured as", "n", "min (min)", "25% (min)", "median (min)"]
    headers += ["75% (min)", "max (min)", "total (min)"]
    table = []
    for platform, members in _by_platform(rows).items():
        waits = sorted(_values(members, "queue_wait_s"))
        if not waits:
            continue
        quartiles = (
            statistics.quantiles(waits, n=4, method="inclusive")
            if len(waits) > 1
            else [waits[0]] * 3
        )
        table.append(
            [
                platform,
                _kind(members),
                str(len(waits)),
                _minutes(waits[0]),
                _minutes(quartiles[0]),
                _minutes(quartiles[1]),
                _minutes(quartiles[2]),
                _minutes(waits[-1]),
                _minutes(sum(waits)),
            ]
        )
    return headers, table


def benchmark_uses(results_dir: Path, platform: str, rule: str) -> list[Any]:
    """The Snakemake benchmark files of ``platform``'s evaluate or profile jobs."""
    pattern = {
        "evaluate": "*/b*_e*/logs/evaluate.benchmark.tsv",
        "profile": "*/profile_b*/logs/profile.benchmark.tsv",
    }[rule]
    uses = [read_benchmark(path, rule) for path in sorted((results_dir / platform).glob(pattern))]
    return [use for use in uses if use is not None and use.wall_s > 0]


def efficiency_table(
    rows: Sequence[Mapping[str, Any]], results_dir: Path
) -> tuple[list[str], list[list[str]]]:
    headers = ["platform", "rule", "n", "CPU efficiency", "memory efficiency", "GPU util. (%)"]
    headers += ["GPU memory share", "time limit used", "peak memory (MB)", "longest (min)"]
    table = []
    for platform, members in _by_platform(rows).items():
        table.append(
            [
                platform,
                "train",
                str(len(members)),
                _fmt(_median(_values(members, "cpu_efficiency"))),
                _fmt(_median(_values(members, "mem_efficiency"))),
                _fmt(_median(_values(members, "gpu_mean_utilization_percent")), 1),
                _fmt(_median(_values(members, "gpu_memory_fraction"))),
                _fmt(_median(_values(members, "time_limit_used"))),
                _fmt(_peak_mb(members), 0),
                _minutes(max(_values(members, "wall_time_s"), default=None)),
            ]
        )
        for rule in ("evaluate", "profile"):
            uses = benchmark_uses(results_dir, platform, rule)
            if not uses:
                continue
            cores = [(use.cpu_s or 0.0) / use.wall_s for use in uses]
            table.append(
                [
                    platform,
                    rule,
                    str(len(uses)),
                    f"{_fmt(_median(cores))} cores",
                    NA,
                    NA,
                    NA,
                    NA,
                    _fmt(max(use.peak_mb or 0.0 for use in uses), 0),
                    _minutes(max(use.wall_s for use in uses)),
                ]
            )
    return headers, table


def _peak_mb(rows: Sequence[Mapping[str, Any]]) -> float | None:
    """The largest peak summed resident set of the rows' train jobs (MB)."""
    peaks = _values(rows, "max_tree_rss_kb")
    return max(peaks) / 1024 if peaks else None


def totals_table(totals: Sequence[PlatformTotals]) -> tuple[list[str], list[list[str]]]:
    headers = ["platform", "cells", "makespan (min)", "total queue wait (min)"]
    headers += ["GPU-hours allocated", "GPU-hours busy", "busy share"]
    table = [
        [
            t.platform,
            str(t.cells),
            _minutes(t.makespan_s),
            _minutes(t.total_queue_wait_s),
            _fmt(t.gpu_hours_allocated, 3),
            _fmt(t.gpu_hours_busy, 3),
            _fmt(t.busy_share),
        ]
        for t in totals
    ]
    return headers, table


def target_table(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["platform", "model", "batch", "epochs", "target mAP@0.5", "reached (of n)"]
    headers += ["first epoch (median)", "time to target (s, mean [95% CI])", "cost to target"]
    groups: dict[tuple[str, ...], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("target_map50") in (None, ""):
            continue
        key = tuple(str(row[k]) for k in ("platform", "model", "batch", "epochs"))
        groups.setdefault(key, []).append(row)
    table = []
    for key, members in groups.items():
        reached = [row for row in members if row.get("target_reached") == "yes"]
        times = describe(_values(reached, "time_to_target_s"))
        costs = describe(_values(reached, "cost_to_target"))
        table.append(
            [
                *key,
                str(members[0]["target_map50"]),
                f"{len(reached)} of {len(members)}",
                _fmt(_median(_values(reached, "target_epoch")), 0) if reached else "not reached",
                _interval(times) if reached else "not reached",
                _interval(costs, 4) if costs is not None else NA,
            ]
        )
    return headers, table


def _interval(summary: Any, digits: int = 1) -> str:
    if summary is None:
        return NA
    if summary.ci_low is None:
        return f"{summary.mean:.{digits}f} (n = 1)"
    return (
        f"{summary.mean:.{digits}f} [{summary.ci_low:.{digits}f}, {summary.ci_high:.{digits}f}]"
        f" (n = {summary.n})"
    )


# --------------------------------------------------------------------------- findings


def findings(rows: Sequence[Mapping[str, Any]], totals: Sequence[PlatformTotals]) -> list[str]:
    """Sentences holding the 2020 claims against the measured numbers; each gives its n."""
    grouped = _by_platform(rows)
    sentences = []
    waits = []
    for platform, members in grouped.items():
        values = _values(members, "queue_wait_s")
        if not values:
            continue
        median = statistics.median(values)
        waits.append((platform, _kind(members), median, len(values)))
    slurm = [w for w in waits if w[1] == "slurm"]
    local = [w for w in waits if w[1] != "slurm"]
    if slurm:
        parts = "; ".join(
            f"on {platform} train jobs waited a median of {median / 60:.2f} min in the Slurm "
            f"queue (n = {n})"
            for platform, _, median, n in slurm
        )
        sentences.append(f"Against {CLAIM_AVAILABILITY}: {parts}.")
    if local:
        parts = "; ".join(
            f"{platform}: median {median / 60:.2f} min (n = {n})"
            for platform, _, median, n in local
        )
        sentences.append(
            "Local runs have no queue: their waits are for the run's own earlier jobs on the "
            f"same machine, counted from the Snakemake run's start ({parts}), not for other users."
        )
    if not slurm:
        sentences.append(
            f"No cell here ran under Slurm, so neither {CLAIM_AVAILABILITY} nor "
            f"{CLAIM_RESERVATION} is tested by this report: run the study with profiles/slurm "
            "to measure the queue."
        )
    idling = []
    for platform, members in grouped.items():
        cpu = _values(members, "cpu_efficiency")
        memory = _values(members, "mem_efficiency")
        if not cpu and not memory:
            continue
        total = next((t for t in totals if t.platform == platform), None)
        busy = (
            f", and their GPUs were busy for {total.busy_share:.0%} of the "
            f"{total.gpu_hours_allocated:.3f} GPU-hours allocated to them"
            if total is not None and total.busy_share is not None
            else " (no GPU utilisation measured: a CPU, or no NVML)"
        )
        idling.append(
            f"on {platform} train jobs used a median {_fmt(_median(cpu))} of the CPU time "
            f"allocated (n = {len(cpu)}) and {_fmt(_median(memory))} of the memory requested "
            f"(n = {len(memory)}){busy}"
        )
    if idling:
        sentences.append(f"Against {CLAIM_IDLING}: " + "; ".join(idling) + ".")
    if len(slurm) >= 2:
        ordered = sorted(slurm, key=lambda w: w[2])
        (low, _, low_wait, low_n), (high, _, high_wait, high_n) = ordered[0], ordered[-1]
        sentences.append(
            f"Against {CLAIM_RESERVATION}: the shortest median queue wait was on {low} "
            f"({low_wait / 60:.2f} min, n = {low_n}), the longest on {high} "
            f"({high_wait / 60:.2f} min, n = {high_n})."
        )
    return sentences


# --------------------------------------------------------------------------- document


def waiting_document(rows: Sequence[Mapping[str, Any]], results_dir: Path) -> Document:
    document = Document(TITLE)
    totals = platform_totals(rows)
    recorded = [row for row in rows if row.get("job_scheduler") not in (None, "")]
    document.paragraph(
        f"The train jobs of {len(recorded)} of {len(rows)} runs in the summary recorded the job "
        'they ran in (run.json "job"); runs trained before that have no figures here.'
    )
    document.heading("Findings")
    document.bullets(findings(recorded, totals))
    document.heading("Queue wait per platform")
    document.table(*queue_wait_table(recorded))
    document.note(
        "Slurm: StartTime - SubmitTime of each train job's Slurm job (scontrol). Local: from the "
        "Snakemake run's start to the train job's start, the wait for the run's own earlier "
        "jobs; no scheduler was involved. Minutes; quartiles over the platform's train jobs."
    )
    document.heading("Efficiency per rule")
    document.table(*efficiency_table(recorded, results_dir))
    document.note(
        "Medians over the rule's jobs (n). CPU efficiency: CPU seconds / (allocated CPUs x wall "
        "seconds); for evaluate and profile, CPU seconds per wall second (cores used, Snakemake "
        "benchmark). Memory efficiency: peak summed resident set / requested memory. GPU: NVML "
        "mean utilisation and peak memory / the GPU's memory (NA on a CPU). Time limit used: "
        "the train job's time in its job / that job's limit (locally: the runtime a scheduler "
        "would be asked for). `detbench resources` turns these peaks into requests."
    )
    document.heading("Makespan and GPU-hours per platform")
    document.table(*totals_table(totals))
    document.note(
        "Makespan: first submission (locally: the run's start) to the last train job's end. "
        "GPU-hours allocated: GPUs x the train jobs' time in their jobs; busy: that x NVML mean "
        "utilisation. Train jobs only; a cell's evaluation follows in the same job."
    )
    headers, table = target_table(rows)
    document.heading("Time and cost to the target accuracy")
    if table:
        document.table(headers, table)
        document.note(
            "Time to target: training and interim evaluation seconds up to the end of the first "
            "epoch whose mAP@0.5 on the eval split reached the target (start-up excluded); mean "
            "and 95% Student-t interval over the repeats that reached it. Cost: that time x the "
            "platform's gpu_hour_price."
        )
    else:
        document.note("No run had a target (config target_map50): nothing to show here.")
    return document


def write_waiting(
    summary_path: str | Path, results_dir: str | Path, markdown: str | Path, page: str | Path
) -> Document:
    document = waiting_document(read_rows(summary_path), Path(results_dir))
    atomic.write_text(markdown, document.to_markdown())
    atomic.write_text(page, document.to_html())
    return document
