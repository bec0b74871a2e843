"""The Snakemake profiles (profiles/local, profiles/slurm) and the Colab notebook, offline.

Each profile is read the way Snakemake reads it (its own argument parser) and used for a dry
run in a copy of the workflow: the plan shows which jobs hold the GPU, what a scheduler would be
asked for, and where the cells land. The Slurm profile against a running Slurm is
tests/test_slurm.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nbformat
import pytest
import yaml
from snakemake.cli import parse_args

REPO = Path(__file__).resolve().parents[1]
GPU_RULES = {"train", "evaluate"}  # at least these hold a GPU (the profiles may name more)
TINY_CELLS = 2 * 2 * 2  # tests/configs/tiny.yaml: models x batch sizes x epochs


def profile_args(*profiles: str):  # type: ignore[no-untyped-def]
    """Snakemake's parsed command line for `snakemake --profile P ...` (no run)."""
    argv = []
    for profile in profiles:
        argv += ["--profile", str(REPO / profile)]
    _parser, args = parse_args(argv)
    return args


def resource_value(resources: dict, name: str) -> object:
    return resources[name].value


def dry_run_output(workdir: Path, *args: str) -> str:
    """What `snakemake -n ARGS` in workdir prints."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def dry_run(workdir: Path, *args: str) -> list[dict[str, str]]:
    """The jobs of `snakemake -n ARGS` in workdir: rule, wildcards and resources of each."""
    return planned_jobs(dry_run_output(workdir, *args))


def planned_jobs(output: str) -> list[dict[str, str]]:
    """Rule, wildcards and resources of each job of a dry run's output."""
    jobs = []
    # A job of a group (rules/train.smk's "cell") is listed indented under "Group job".
    for block in re.split(r"\n(?=[ \t]*(?:local)?rule \w+:)", output):
        match = re.match(r"[ \t]*(?:local)?rule (\w+):", block)
        if not match:
            continue
        job = {"rule": match.group(1)}
        for key in ("wildcards", "resources", "output"):
            found = re.search(rf"^\s+{key}: (.*)$", block, re.MULTILINE)
            job[key] = found.group(1) if found else ""
        jobs.append(job)
    return jobs


def resources_of(job: dict[str, str]) -> dict[str, str]:
    return dict(item.split("=", 1) for item in job["resources"].split(", ") if "=" in item)


def gpu_rules(args) -> set[str]:  # type: ignore[no-untyped-def]
    """The rules a profile's set-resources gives a GPU."""
    return {rule for rule, resources in args.set_resources.items() if "gpu" in resources}


@pytest.fixture(scope="module")
def workdir(
    tmp_path_factory: pytest.TempPathFactory, workflow_copier: Callable[[Path], Path]
) -> Path:
    return workflow_copier(tmp_path_factory.mktemp("profiles") / "workflow")


# --------------------------------------------------------------------------- profiles/local


def test_local_profile_settings() -> None:
    args = profile_args("profiles/local")
    # One `gpu` unit for the whole run: at most one GPU-holding job at a time.
    assert {name: resource_value(args.resources, name) for name in args.resources} == {"gpu": 1}
    assert gpu_rules(args) >= GPU_RULES
    for rule in gpu_rules(args):
        assert resource_value(args.set_resources[rule], "gpu") == 1
    assert args.config == ["platform=cloud-t4"]
    assert args.rerun_incomplete and args.keep_going
    assert args.cores >= 1  # `all`: every core of the machine
    assert args.executor in (None, "local")


def test_local_profile_plans_each_gpu_job_holding_the_one_gpu(workdir: Path) -> None:
    holders = gpu_rules(profile_args("profiles/local"))
    jobs = dry_run(
        workdir,
        "--profile",
        str(REPO / "profiles" / "local"),
        "--configfile",
        str(REPO / "tests" / "configs" / "tiny.yaml"),
    )
    gpu_jobs = [job for job in jobs if job["rule"] in GPU_RULES]
    assert len(gpu_jobs) == 2 * TINY_CELLS
    for job in jobs:
        expected = "1" if job["rule"] in holders else None
        assert resources_of(job).get("gpu") == expected, job
    # The profile's platform label, not the config file's (test-cpu).
    assert all("platform=cloud-t4" in job["wildcards"] for job in gpu_jobs)


# --------------------------------------------------------------------------- profiles/slurm


def test_slurm_profile_settings() -> None:
    args = profile_args("profiles/slurm")
    assert args.executor == "slurm"
    defaults = args.default_resources
    for name in ("slurm_partition", "runtime", "mem_mb", "cpus_per_task"):
        assert name in defaults, name
    # A train job asks for one GPU per rank from the rule (rules/train.smk, train.ranks).
    assert gpu_rules(args) >= GPU_RULES - {"train"}
    assert "gpu" not in args.set_resources.get("train", {})
    for rule in gpu_rules(args):
        assert resource_value(args.set_resources[rule], "gpu") == 1
    assert args.config == ["platform=baremetal-p40"]
    assert args.retries >= 1
    assert args.slurm_requeue is True
    # squeue works with and without Slurm accounting (profiles/slurm/README.md).
    assert args.slurm_status_command == "squeue"
    assert args.rerun_incomplete and args.keep_going
    assert int(args.latency_wait) >= 30
    # One Slurm job per cell: its train and evaluate jobs form one group (rules/*.smk).
    assert args.group_components == {"cell": 1}


def test_slurm_profile_groups_each_cell_into_one_submission(workdir: Path) -> None:
    plan = subprocess.run(
        [sys.executable, "-m", "snakemake", "--dry-run", "--profile", str(REPO / "profiles/slurm")],
        cwd=workdir, capture_output=True, text=True, timeout=300, check=True,
    ).stdout
    cells = len(re.findall(r"^\s+rule train:", plan, re.MULTILINE))
    profiles = len(re.findall(r"^\s+rule profile:", plan, re.MULTILINE))
    assert cells == 32 and profiles > 0, plan[-3000:]
    # A group job per cell (train + evaluate) and per profile; nothing else is grouped.
    assert plan.count("Group job cell") == cells + profiles, plan[-3000:]


def test_slurm_test_profile_replaces_only_cluster_keys() -> None:
    # tests/test_slurm.py layers this profile on profiles/slurm; a later profile replaces whole
    # top-level keys, so the GPU requests and the status command must still be profiles/slurm's.
    args = profile_args("profiles/slurm", "tests/profiles/slurm-test")
    assert args.default_resources["slurm_partition"].raw == "detbench"
    assert gpu_rules(args) == gpu_rules(profile_args("profiles/slurm"))
    assert args.slurm_status_command == "squeue"
    assert args.slurm_requeue is True
    assert args.config == ["platform=baremetal-p40"]
    assert int(args.slurm_init_seconds_before_status_checks) == 1


def test_slurm_profile_plans_gpu_requests_and_train_wall_times(workdir: Path) -> None:
    # A dry run needs no Slurm: the plan shows what each job would ask sbatch for.
    holders = gpu_rules(profile_args("profiles/slurm")) | {"train"}  # train: the rule's
    # The study (config/config.yaml), as a user runs it.
    output = dry_run_output(workdir, "--profile", str(REPO / "profiles" / "slurm"))
    jobs = planned_jobs(output)
    # Snakemake's own lines show the one core of a dry run (cpus_per_task=1); detbench's list
    # shows what sbatch will get: the rules' threads.
    requests = output.split("detbench: Slurm jobs will ask sbatch for\n", 1)[1]
    lines = dict(line.strip().split(": ", 1) for line in requests.splitlines()[:8])
    assert {rule: line.split("  (")[0] for rule, line in lines.items()} == {
        "convert": "-p gpu --cpus-per-task=1 --mem 16000",
        # In the study's plan only with dataset.image_cache disk; no GPU either way.
        "image_cache": "-p gpu --cpus-per-task=1 --mem 16000",
        "train": "-p gpu --cpus-per-task=4 --mem 16000 --gpus=1",
        "profile": "-p gpu --cpus-per-task=4 --mem 16000 --gpus=1",
        "evaluate": "-p gpu --cpus-per-task=4 --mem 16000 --gpus=1",
        "aggregate": "-p gpu --cpus-per-task=1 --mem 16000",
        # The deploy stage, in the cell's group: the benchmark on the cell's GPU.
        "export_onnx": "-p gpu --cpus-per-task=2 --mem 16000",
        "benchmark_inference": "-p gpu --cpus-per-task=2 --mem 16000 --gpus=1",
    }
    runtimes: dict[tuple[str, int, int], int] = {}
    for job in jobs:
        resources = resources_of(job)
        assert resources.get("gpu") == ("1" if job["rule"] in holders else None), job
        if job["rule"] in ("train", "evaluate"):
            assert "platform=baremetal-p40" in job["wildcards"]
        if job["rule"] == "train":
            wildcards = dict(item.split("=") for item in job["wildcards"].split(", "))
            key = (wildcards["model"], int(wildcards["batch"]), int(wildcards["epochs"]))
            runtimes[key] = int(resources["runtime"])
        elif job["rule"] == "evaluate":
            assert resources["runtime"] == "15", job  # set-resources: it runs after train
    study = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    batches, epochs = sorted(study["batch_sizes"]), sorted(study["epochs"])
    assert set(runtimes) == {
        (model, batch, epoch) for model in study["models"] for batch in batches for epoch in epochs
    }
    # Wall time grows with epochs, with the model's size, and as the batch shrinks.
    for model in study["models"]:
        for batch in batches:
            times = [runtimes[model, batch, epoch] for epoch in epochs]
            assert times == sorted(times) and times[0] < times[-1], (model, batch, times)
    small, large, most = batches[0], batches[-1], epochs[-1]
    assert runtimes["yolov3", small, most] > runtimes["yolov3-tiny", small, most]
    assert runtimes["yolov3", small, most] >= runtimes["yolov3", large, most]


# --------------------------------------------------------------------------- the notebook


def test_colab_notebook_is_valid_and_runs_the_local_profile() -> None:
    path = REPO / "notebooks" / "colab.ipynb"
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    assert "snakemake --profile profiles/local" in code
    assert "--report" in code
    assert "pip install" in code
    # Valid JSON on disk as well (nbformat tolerates some things a plain reader would not).
    json.loads(path.read_text())
    # The Python of every code cell compiles once IPython's `!` and `%` lines are set aside.
    for cell in notebook.cells:
        if cell.cell_type == "code":
            python = re.sub(r"^(\s*)[!%].*$", r"\1pass", cell.source, flags=re.MULTILINE)
            compile(python, f"colab.ipynb cell {cell.get('id')}", "exec")


# --------------------------------------------------------------------------- profiles/default


def test_a_plain_snakemake_target_runs_without_cores(
    tmp_path: Path, workflow_copier: Callable[[Path], Path], tiny_config: Path
) -> None:
    """`snakemake results/summary.csv` as the docs write it: the workflow profile gives the
    cores Snakemake 9 otherwise refuses to run without."""
    workdir = workflow_copier(tmp_path / "workflow")
    shutil.copytree(REPO / "profiles" / "default", workdir / "profiles" / "default")
    target = "results/datasets/synthetic-tiny/voc"
    command = [sys.executable, "-m", "snakemake", target, "--configfile", str(tiny_config)]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (workdir / target / "ImageSets" / "Main" / "train.txt").is_file()

    shutil.rmtree(workdir / "profiles")
    refused = subprocess.run(
        [*command, "--forceall"], cwd=workdir, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode != 0
    assert "cores have to be specified" in refused.stdout + refused.stderr
