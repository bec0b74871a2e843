"""Shared fixtures: the repository, the real BCCD folder, a small synthetic dataset, and a
runner for Snakemake in a throw-away copy of the workflow (tests never write to results/)."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = REPO_ROOT / "tests" / "configs" / "tiny.yaml"
# What a workflow copy needs; src/ is linked rather than copied (the code under test).
WORKFLOW_ITEMS = ("Snakefile", "rules", "workflow", "config", "envs", "report")
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLASSES = ("RBC", "WBC", "Platelets")
# Files above this size are hard-linked instead of copied when cloning a finished workflow
# (YOLOv3 weights are ~250 MB each); small files, Snakemake's metadata among them, are copied
# so that nothing written in a clone can change the original.
_LINK_ABOVE_BYTES = 1 << 20


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def tiny_config() -> Path:
    """tests/configs/tiny.yaml: the smallest complete study (platform test-cpu, 8 cells)."""
    return TINY_CONFIG


@pytest.fixture(scope="session")
def bccd_dir() -> Path:
    """The real BCCD dataset in VOC layout (read-only); the test is skipped without it."""
    default = REPO_ROOT.parent / "shared" / "data" / "bccd"
    path = Path(os.environ.get("DETBENCH_BCCD_DIR", default))
    if not (path / "Annotations").is_dir():
        pytest.skip(f"real BCCD dataset not found at {path} (set DETBENCH_BCCD_DIR to its folder)")
    return path


# --------------------------------------------------------------------------- synthetic data


@pytest.fixture(scope="session")
def synthetic_voc(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated VOC dataset (8 train, 2 val, 4 test images of 128x96 px)."""
    from detbench.data.synthetic import generate_synthetic_voc

    root = tmp_path_factory.mktemp("synthetic") / "voc"
    generate_synthetic_voc(
        root, num_images={"train": 8, "val": 2, "test": 4}, image_size=(128, 96), seed=0
    )
    return root


@pytest.fixture(scope="session")
def synthetic_manifest(synthetic_voc: Path) -> Path:
    """``manifest.json`` of ``synthetic_voc`` converted to YOLO labels."""
    from detbench.data.voc import convert_voc_to_yolo

    out = synthetic_voc.parent / "yolo"
    convert_voc_to_yolo(
        synthetic_voc,
        out,
        class_names=list(CLASSES),
        splits=["train", "val", "test"],
        dataset_name="synthetic-test",
    )
    return out / "manifest.json"


@pytest.fixture
def torch_threads() -> Iterator[None]:
    """Restore torch's thread count after a test (train() and evaluate_cell() change it)."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_trained_cell(synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """A yolov3-tiny cell trained for 2 epochs at 64 px: (TrainOutputs, run record)."""
    import torch

    from detbench.study.config import TrainHyperparameters, TrainSettings
    from detbench.training.train import TrainOutputs, train

    out = tmp_path_factory.mktemp("tiny_cell")
    outputs = TrainOutputs.in_folder(out)
    settings = TrainSettings(
        model="yolov3-tiny",
        batch=4,
        epochs=2,
        img_size=64,
        seed=0,
        hyp=TrainHyperparameters(workers=0),
    )
    threads = torch.get_num_threads()
    try:
        record = train(settings, synthetic_manifest, outputs, threads=1)
    finally:
        torch.set_num_threads(threads)
    return outputs, record


# --------------------------------------------------------------------------- Snakemake


@dataclasses.dataclass
class SnakemakeRun:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + "\n" + self.stderr

    def job_stats(self) -> dict[str, int]:
        """The "Job stats" table Snakemake prints before running (or dry-running) jobs;
        empty when it planned nothing."""
        lines = self.output.splitlines()
        try:
            start = next(i for i, line in enumerate(lines) if line.strip() == "Job stats:")
        except StopIteration:
            return {}
        stats: dict[str, int] = {}
        for line in lines[start + 1 :]:
            match = re.fullmatch(r"\s*(\S+)\s+(\d+)\s*", line)
            if match is None:
                if stats:  # the blank line after the table
                    break
                continue  # the header and the dashes
            if match[1] == "total":
                break
            stats[match[1]] = int(match[2])
        return stats

    def describe(self) -> str:
        """The command and the tail of its output, for assertion messages."""
        return f"$ {' '.join(self.args)}  (exit {self.returncode})\n{self.output[-4000:]}"


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (with src/ linked) into ``dest``; return ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_ITEMS:
        source = REPO_ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)
    (dest / "src").symlink_to(REPO_ROOT / "src", target_is_directory=True)
    return dest


def _copy_or_link(source: str, target: str) -> None:
    if os.path.getsize(source) > _LINK_ABOVE_BYTES:
        os.link(source, target)
    else:
        shutil.copy2(source, target)


def clone_tree(source: Path, dest: Path) -> Path:
    """Copy a finished workflow folder (or part of it) cheaply: large files are hard links."""
    shutil.copytree(source, dest, symlinks=True, copy_function=_copy_or_link)
    return dest


def run_snakemake(workdir: Path, *args: str | Path, timeout: float = 900) -> SnakemakeRun:
    """Run ``snakemake`` (the one beside this Python) in ``workdir`` and capture its output.

    Put targets before ``--configfile``/``--config``: those options take several values.
    """
    command = [str(SNAKEMAKE), *map(str, args)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SNAKEMAKE")}
    result = subprocess.run(
        command,
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return SnakemakeRun(command, result.returncode, result.stdout, result.stderr)


@pytest.fixture
def workflow_copy(tmp_path: Path) -> Path:
    """A fresh copy of the workflow to run Snakemake in."""
    return copy_workflow(tmp_path / "workflow")


@pytest.fixture(scope="session")
def snakemake() -> Callable[..., SnakemakeRun]:
    """``snakemake(workdir, *args)`` -> SnakemakeRun (see run_snakemake)."""
    if not SNAKEMAKE.exists():
        pytest.fail(f"{SNAKEMAKE} does not exist: install the project with its test extras")
    return run_snakemake


@pytest.fixture(scope="session")
def workflow_copier() -> Callable[[Path], Path]:
    """``copy_workflow(dest)`` for fixtures wider than one test."""
    return copy_workflow


@pytest.fixture(scope="session")
def tree_cloner() -> Callable[[Path, Path], Path]:
    """``clone_tree(source, dest)``: copy with large files hard-linked."""
    return clone_tree


@dataclasses.dataclass
class TinyStudy:
    """tests/configs/tiny.yaml run to completion, then ``--report report.html``."""

    workdir: Path
    run: SnakemakeRun
    report: SnakemakeRun


@pytest.fixture(scope="session")
def tiny_study_run(tmp_path_factory: pytest.TempPathFactory, tiny_config: Path) -> TinyStudy:
    """The tiny study, run once per test session (it is the suite's most expensive step).

    Tests only read it; a test that changes files works on a clone (``tree_cloner``).
    """
    workdir = copy_workflow(tmp_path_factory.mktemp("tiny-study") / "workflow")
    run = run_snakemake(workdir, "--cores", "2", "--configfile", str(tiny_config))
    if run.returncode != 0:
        pytest.fail(f"the tiny study failed:\n{run.describe()}")
    report = run_snakemake(workdir, "--report", "report.html", "--configfile", str(tiny_config))
    if report.returncode != 0:
        pytest.fail(f"snakemake --report failed:\n{report.describe()}")
    return TinyStudy(workdir=workdir, run=run, report=report)
