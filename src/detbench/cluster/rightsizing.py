"""Right-sizing: what a finished study's jobs should ask for, from what they used.

Per rule (train, evaluate, profile) the measured peaks of its jobs on one platform:
memory from the jobs' peak resident set (Snakemake's benchmark ``max_rss``; for train also
run.json's summed resident set of the job's processes), CPUs from the CPU seconds per wall
second of the busiest job, wall time from the longest job; each with ``headroom`` on top. The
train jobs' wall time comes from the wall-time model (detbench.cluster.walltime), whose
constants are fitted to the measured cells: per model the steady epoch time against the steps
per epoch, and the time outside epochs as the start-up.

The result is profile YAML: ``set-threads``, ``set-resources`` and ``config: walltime`` merged
into the profile's own, so it can replace those keys of profiles/<name>/config.yaml or be
layered after it as a second ``--profile``.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from detbench.cluster.walltime import WALL_TIME, WallTimeModel
from detbench.errors import DetbenchError
from detbench.study import cells
from detbench.study.cells import RUN_RECORD, Cell

RULES = ("train", "evaluate", "profile")


@dataclasses.dataclass(frozen=True)
class JobUse:
    """What one job used: wall seconds, CPU seconds, peak memory (MB)."""

    rule: str
    wall_s: float
    cpu_s: float | None
    peak_mb: float | None


@dataclasses.dataclass(frozen=True)
class CellTiming:
    """One train job's timing, for the wall-time model's fit."""

    model: str
    batch: int
    images: int
    img_size: int
    steady_epoch_s: float  # median epoch (the only one with a single epoch)
    outside_epochs_s: float  # job wall time less the epochs: start-up, evaluation, saving


def read_benchmark(path: Path, rule: str) -> JobUse | None:
    """A Snakemake ``benchmark:`` file (s, max_rss in MB, cpu_time), its first row."""
    if not path.exists():
        return None
    with path.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    if not rows:
        return None
    row = rows[0]
    return JobUse(
        rule=rule,
        wall_s=_float(row.get("s")) or 0.0,
        cpu_s=_float(row.get("cpu_time")),
        peak_mb=_float(row.get("max_rss")),
    )


def _float(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _history_epochs(path: Path) -> list[float]:
    if not path.exists():
        return []
    with path.open(encoding="utf-8") as handle:
        return [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]


def study_usage(
    results_dir: Path, platform: str
) -> tuple[dict[str, list[JobUse]], list[CellTiming]]:
    """Every measured job of ``platform`` under ``results_dir`` by rule, and the train jobs'
    timings."""
    uses: dict[str, list[JobUse]] = {rule: [] for rule in RULES}
    timings = []
    for cell in cells.find_cells(results_dir, having=RUN_RECORD):
        if cell.platform != platform:
            continue
        folder = cell.folder(results_dir)
        run = json.loads((folder / RUN_RECORD).read_text(encoding="utf-8"))
        uses["train"].append(
            _train_use(run, read_benchmark(folder / "logs/train.benchmark.tsv", "train"))
        )
        evaluate = read_benchmark(folder / "logs/evaluate.benchmark.tsv", "evaluate")
        if evaluate is not None:
            uses["evaluate"].append(evaluate)
        timing = _timing(cell, run, _history_epochs(folder / cells.HISTORY))
        if timing is not None:
            timings.append(timing)
    for path in cells.find_profile_files(results_dir, "summary.json"):
        if path.parents[2].name == platform:
            profile = read_benchmark(path.parent / "logs/profile.benchmark.tsv", "profile")
            if profile is not None:
                uses["profile"].append(profile)
    return uses, timings


def _train_use(run: Mapping[str, Any], benchmark: JobUse | None) -> JobUse:
    resources = run.get("resources") or {}
    wall = resources.get("wall_time_s") or (benchmark.wall_s if benchmark else 0.0)
    cpu = None
    if resources.get("user_time_s") is not None:
        cpu = resources["user_time_s"] + (resources.get("system_time_s") or 0.0)
    peaks = [resources.get("max_tree_rss_kb", 0) / 1024]
    if benchmark is not None and benchmark.peak_mb is not None:
        peaks.append(benchmark.peak_mb)
    return JobUse("train", wall_s=wall, cpu_s=cpu, peak_mb=max(peaks) or None)


def _timing(cell: Cell, run: Mapping[str, Any], epochs: list[float]) -> CellTiming | None:
    wall = (run.get("resources") or {}).get("wall_time_s")
    if not epochs or wall is None or not run.get("train_images"):
        return None
    return CellTiming(
        model=cell.model,
        batch=cell.batch,
        images=int(run["train_images"]),
        img_size=int(run.get("img_size") or 416),
        steady_epoch_s=statistics.median(epochs[1:] or epochs),
        outside_epochs_s=max(0.0, wall - sum(epochs)),
    )


def fit_wall_time(timings: Sequence[CellTiming], headroom: float) -> WallTimeModel:
    """The wall-time model's constants from measured cells: per model, epoch seconds =
    a + seconds_per_step x steps (a least-squares line where the cells have two or more step
    counts; else the current seconds_per_step), a = images x pixels x seconds_per_image."""
    if not timings:
        raise DetbenchError("no train job with run.json and history.csv to fit the wall time to")
    slopes = []
    by_model: dict[str, list[CellTiming]] = {}
    for timing in timings:
        by_model.setdefault(timing.model, []).append(timing)
    for members in by_model.values():
        steps = [math.ceil(t.images / t.batch) for t in members]
        if len(set(steps)) >= 2:
            fit = statistics.linear_regression(steps, [t.steady_epoch_s for t in members])
            slopes.append(max(0.0, fit.slope))
    per_step = statistics.median(slopes) if slopes else WALL_TIME.seconds_per_step
    per_image = {}
    for model, members in by_model.items():
        rates = [
            max(0.0, t.steady_epoch_s - math.ceil(t.images / t.batch) * per_step)
            / (t.images * (t.img_size / 416) ** 2)
            for t in members
        ]
        per_image[model] = _round(max(rates))
    startup = max(t.outside_epochs_s for t in timings) / 60 * (1 + headroom)
    return WallTimeModel(
        seconds_per_image={**WALL_TIME.seconds_per_image, **per_image},
        seconds_per_step=_round(per_step),
        startup_minutes=_round(max(startup, 1.0)),
        margin=_round(1 + headroom),
    )


def _round(value: float) -> float:
    """Four significant digits: enough for minutes of wall time."""
    return float(f"{value:.4g}")


@dataclasses.dataclass(frozen=True)
class RuleRequest:
    """What one rule should ask for, and from how many jobs."""

    rule: str
    jobs: int
    threads: int
    mem_mb: int
    runtime_min: int


def rule_requests(uses: Mapping[str, Sequence[JobUse]], headroom: float) -> list[RuleRequest]:
    """Per rule with measured jobs: CPUs, memory (rounded up to 100 MB) and minutes, each the
    busiest job's with ``headroom`` on top."""
    requests = []
    for rule in RULES:
        jobs = [job for job in uses.get(rule, []) if job.wall_s > 0]
        if not jobs:
            continue
        cores = max((job.cpu_s or 0.0) / job.wall_s for job in jobs)
        peak = max((job.peak_mb or 0.0) for job in jobs)
        wall = max(job.wall_s for job in jobs)
        requests.append(
            RuleRequest(
                rule=rule,
                jobs=len(jobs),
                threads=max(1, math.ceil(cores * (1 + headroom))),
                mem_mb=max(100, math.ceil(peak * (1 + headroom) / 100) * 100),
                runtime_min=max(1, math.ceil(wall * (1 + headroom) / 60)),
            )
        )
    return requests


def profile_yaml(
    profile: Mapping[str, Any],
    requests: Sequence[RuleRequest],
    model: WallTimeModel,
    *,
    platform: str,
    headroom: float,
) -> str:
    """``profile``'s set-threads, set-resources and config: with the right-sized values,
    as YAML with a header saying where the figures come from."""
    threads = dict(profile.get("set-threads") or {})
    resources = {
        rule: dict(values) for rule, values in (profile.get("set-resources") or {}).items()
    }
    for request in requests:
        threads[request.rule] = request.threads
        entry = resources.setdefault(request.rule, {})
        entry["mem_mb"] = request.mem_mb
        if request.rule != "train":  # train's runtime is the wall-time model's, per cell
            entry["runtime"] = request.runtime_min
    config = dict(profile.get("config") or {})
    config["walltime"] = {
        "seconds_per_image": dict(model.seconds_per_image),
        "seconds_per_step": model.seconds_per_step,
        "startup_minutes": model.startup_minutes,
        "margin": model.margin,
    }
    header = [
        f"# detbench resources: right-sized from the finished jobs of platform {platform}, each",
        f"# request the busiest job's use plus {headroom:.0%} headroom (memory: peak resident",
        "# set; CPUs: CPU seconds per wall second; minutes: the longest job). Jobs measured:",
        *(
            f"#   {r.rule}: {r.jobs}, asking {r.threads} CPU{'s' * (r.threads != 1)}, "
            f"{r.mem_mb} MB, {r.runtime_min} min"
            for r in requests
        ),
        "# The train jobs' minutes: the wall-time model with the constants under config:",
        "# walltime, fitted to the measured cells. Paste over these keys of the profile, or",
        "# save as <folder>/config.yaml and add --profile <folder> after the profile.",
    ]
    body = {"set-threads": threads, "set-resources": resources, "config": config}
    return "\n".join(header) + "\n" + yaml.safe_dump(body, sort_keys=False)


def load_profile(folder: Path) -> dict[str, Any]:
    """A Snakemake profile folder's config.yaml (or profile.yaml)."""
    for name in ("config.yaml", "profile.yaml"):
        path = folder / name
        if path.exists():
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            if not isinstance(data, dict):
                raise DetbenchError(f"{path}: expected a mapping of profile keys")
            return data
    raise DetbenchError(f"{folder}: no config.yaml (not a Snakemake profile folder)")


def study_platforms(results_dir: Path) -> list[str]:
    return sorted({cell.platform for cell in cells.find_cells(results_dir, having=RUN_RECORD)})


def right_size(results_dir: Path, profile_dir: Path, platform: str | None, headroom: float) -> str:
    """The whole of ``detbench resources``: profile YAML for ``platform``'s jobs (the only
    platform under ``results_dir`` where it is None)."""
    platforms = study_platforms(results_dir)
    if not platforms:
        raise DetbenchError(f"{results_dir}: no trained cell (run.json) found")
    if platform is None:
        if len(platforms) > 1:
            raise DetbenchError(
                f"{results_dir}: cells of {len(platforms)} platforms ({', '.join(platforms)}); "
                "name one with --platform"
            )
        platform = platforms[0]
    elif platform not in platforms:
        raise DetbenchError(
            f"{results_dir}: no trained cell of platform {platform} "
            f"(platforms: {', '.join(platforms)})"
        )
    uses, timings = study_usage(results_dir, platform)
    profile = load_profile(profile_dir)
    requests = rule_requests(uses, headroom)
    model = fit_wall_time(timings, headroom)
    return profile_yaml(profile, requests, model, platform=platform, headroom=headroom)
