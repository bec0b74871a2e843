"""The Snakemake workflow, run as a user runs it, in a copy of the workflow under tmp_path.

Planning (dry runs of the real study), bad input stopped early with one clear line, and, marked
slow, the tiny study end to end: every cell, a no-op rerun, and another platform's cells copied
in and summarised without retraining.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

CELL_OUTPUT = re.compile(r"output: results/([^/\s]+)/([^/\s]+)/b(\d+)_e(\d+)/weights\.pt")


def _planned_cells(output: str) -> list[tuple[str, str, int, int]]:
    """(platform, model, batch, epochs) of every train job in Snakemake's job listing."""
    return [(p, m, int(b), int(e)) for p, m, b, e in CELL_OUTPUT.findall(output)]


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


# --------------------------------------------------------------------------- planning


@pytest.fixture(scope="module")
def study_config(repo_root: Path) -> dict[str, Any]:
    return yaml.safe_load((repo_root / "config/config.yaml").read_text(encoding="utf-8"))


def test_study_plans_the_full_grid(
    snakemake: Callable[..., Any], workflow_copy: Path, study_config: dict[str, Any]
) -> None:
    run = snakemake(workflow_copy, "-n", "--configfile", "config/config.yaml")
    assert run.returncode == 0, run.describe()
    stats = run.job_stats()
    # Later stages (the report) may add jobs of their own; these are the spine's.
    spine = {
        key: stats.get(key) for key in ("download", "convert", "train", "evaluate", "aggregate")
    }
    assert spine == {"download": 1, "convert": 1, "train": 32, "evaluate": 32, "aggregate": 1}, (
        run.describe()
    )
    cells = _planned_cells(run.output)
    platform = study_config["platform"]
    expected = {
        (platform, model, batch, epochs)
        for model, batch, epochs in itertools.product(
            ["yolov3", "yolov3-tiny"], [4, 8, 16, 32], [1, 5, 10, 20]
        )
    }
    assert len(cells) == 32 and set(cells) == expected
    assert sum(model == "yolov3" for _, model, _, _ in cells) == 16
    assert not (workflow_copy / "results").exists(), "a dry run wrote results"


def test_repeats_plan_every_cell_that_many_times(
    snakemake: Callable[..., Any], workflow_copy: Path
) -> None:
    config = ("--configfile", "config/config.yaml", "--config", "repeats=3")
    run = snakemake(workflow_copy, "-n", *config)
    assert run.returncode == 0, run.describe()
    stats = run.job_stats()
    assert (stats.get("train"), stats.get("evaluate"), stats.get("profile")) == (96, 96, 8)
    assert "b32_e20_r2/weights.pt" in run.output and "_r3/" not in run.output


def test_one_cell_target_plans_one_train_and_one_evaluate(
    snakemake: Callable[..., Any], workflow_copy: Path, study_config: dict[str, Any]
) -> None:
    target = f"results/{study_config['platform']}/yolov3-tiny/b8_e5/metrics.json"
    run = snakemake(workflow_copy, "-n", target, "--configfile", "config/config.yaml")
    assert run.returncode == 0, run.describe()
    # The study starts from COCO weights: the cell's model's file is fetched first.
    stats = {"download": 1, "download_weights": 1, "convert": 1, "train": 1, "evaluate": 1}
    assert run.job_stats() == stats
    assert _planned_cells(run.output) == [(study_config["platform"], "yolov3-tiny", 8, 5)]


def test_platform_from_the_command_line_moves_the_cells(
    snakemake: Callable[..., Any], workflow_copy: Path, study_config: dict[str, Any]
) -> None:
    run = snakemake(
        workflow_copy, "-n", "--configfile", "config/config.yaml", "--config", "platform=cloud-t4"
    )
    assert run.returncode == 0, run.describe()
    cells = _planned_cells(run.output)
    assert len(cells) == 32
    assert {platform for platform, *_ in cells} == {"cloud-t4"}
    assert f"results/{study_config['platform']}/" not in run.output


def test_cells_of_another_platform_are_never_built(
    snakemake: Callable[..., Any], workflow_copy: Path, study_config: dict[str, Any]
) -> None:
    target = f"results/{study_config['platform']}/yolov3-tiny/b8_e5/metrics.json"
    run = snakemake(
        workflow_copy, "-n", target, "--configfile", "config/config.yaml", "--config", "platform=x"
    )
    assert run.returncode != 0, run.describe()
    assert "No rule to produce" in run.output and target in run.output


def test_local_dataset_directory_is_accepted(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path, bccd_dir: Path
) -> None:
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    config["dataset"].update(name="bccd-local", source=str(bccd_dir))
    _write_config(workflow_copy / "local.yaml", config)
    run = snakemake(workflow_copy, "-n", "--configfile", "local.yaml")
    assert run.returncode == 0, run.describe()
    assert run.job_stats()["train"] == 8
    assert "results/datasets/bccd-local/voc" in run.output


# --------------------------------------------------------------------------- bad input


def test_missing_dataset_directory_fails_before_any_job(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-voc"
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    config["dataset"]["source"] = str(missing)
    _write_config(workflow_copy / "missing.yaml", config)
    run = snakemake(workflow_copy, "--cores", "1", "--configfile", "missing.yaml")
    assert run.returncode != 0, run.describe()
    assert run.job_stats() == {}, run.describe()
    assert not (workflow_copy / "results").exists()
    lines = [
        line
        for line in run.output.splitlines()
        if "dataset.source" in line and str(missing) in line and "missing.yaml" in line
    ]
    assert lines, f"no line names dataset.source, the path and the config:\n{run.describe()}"


@pytest.fixture
def voc_source(synthetic_voc: Path, tmp_path: Path) -> Path:
    """A user's local VOC folder, writable, outside the workflow."""
    return shutil.copytree(synthetic_voc, tmp_path / "voc-source")


def _local_source_config(workflow_copy: Path, tiny_config: Path, source: Path, name: str) -> str:
    """The tiny study on ``source`` as dataset ``name``; returns the config's file name."""
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    config["dataset"].update(name=name, source=str(source))
    return _write_config(workflow_copy / f"{name}.yaml", config).name


def test_unparseable_xml_fails_in_convert_and_keeps_the_download(
    snakemake: Callable[..., Any],
    workflow_copy: Path,
    tiny_config: Path,
    synthetic_voc: Path,
    voc_source: Path,
) -> None:
    source = voc_source
    broken = sorted((source / "Annotations").glob("*.xml"))[3]
    broken.write_text("<annotation>\n  <object>\n", encoding="utf-8")
    _local_source_config(workflow_copy, tiny_config, source, "broken")

    run = snakemake(workflow_copy, "--cores", "1", "--configfile", "broken.yaml")

    assert run.returncode != 0, run.describe()
    assert "Error in rule convert" in run.output, run.describe()
    assert "rule train" not in run.output, "training started on a dataset that did not convert"
    error_lines = [line for line in run.stderr.splitlines() if broken.name in line]
    assert error_lines, f"stderr does not name {broken.name}:\n{run.describe()}"
    assert any("XML" in line for line in error_lines), error_lines
    # The error names the user's file (the one to fix), not the workflow's copy of it.
    assert any(str(broken) in line for line in error_lines), error_lines
    dataset = workflow_copy / "results/datasets/broken"
    log = (dataset / "logs/convert.log").read_text(encoding="utf-8")
    assert broken.name in log and "Traceback" not in log, log
    # What the download stage computed is kept; only the failed stage's output is absent.
    assert (dataset / "voc/Annotations" / broken.name).is_file()
    assert len(list((dataset / "voc/JPEGImages").iterdir())) == len(
        list((source / "JPEGImages").iterdir())
    )
    assert not (dataset / "yolo").exists()

    # Fixing the source file and running again is enough: the edit reruns the copy.
    shutil.copy(synthetic_voc / "Annotations" / broken.name, broken)
    rerun = snakemake(
        workflow_copy, "results/datasets/broken/yolo", "--cores", "1", "--configfile", "broken.yaml"
    )
    assert rerun.returncode == 0, rerun.describe()
    assert rerun.job_stats() == {"download": 1, "convert": 1}, rerun.describe()
    assert (dataset / "yolo/manifest.json").is_file()


def test_deleted_source_image_after_conversion_refuses_the_dataset(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path, voc_source: Path
) -> None:
    source = voc_source
    config_name = _local_source_config(workflow_copy, tiny_config, source, "local")
    target = ("results/datasets/local/yolo", "--cores", "1", "--configfile", config_name)
    assert snakemake(workflow_copy, *target).returncode == 0

    deleted = sorted((source / "JPEGImages").glob("*.jpg"))[2]
    deleted.unlink()
    run = snakemake(workflow_copy, *target)
    assert run.returncode != 0, run.describe()
    # The copy refuses, naming the user's image, not the workflow's copy or another image.
    lines = [line for line in run.stderr.splitlines() if deleted.stem in line]
    assert any(str(source) in line and "missing" in line for line in lines), run.describe()
    # Not "Nothing to be done": the converted dataset is still planned for a rebuild.
    plan = snakemake(workflow_copy, "-n", *target)
    assert plan.returncode == 0 and "Nothing to be done" not in plan.output, plan.describe()
    assert {"download", "convert"} <= set(plan.job_stats()), plan.describe()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_study(tiny_study_run: Any, tiny_config: Path) -> dict[str, Any]:
    """tests/configs/tiny.yaml run to completion once; tests read it, and write only clones."""
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    workdir = tiny_study_run.workdir
    return {
        "workdir": workdir,
        "run": tiny_study_run.run,
        "config": config,
        "summary": _read_csv(workdir / "results/summary.csv"),
    }


def _grid(config: dict[str, Any]) -> set[tuple[str, int, int]]:
    return set(itertools.product(config["models"], config["batch_sizes"], config["epochs"]))


@pytest.mark.slow
def test_tiny_study_summary_has_every_cell(tiny_study: dict[str, Any]) -> None:
    config, rows = tiny_study["config"], tiny_study["summary"]
    assert tiny_study["run"].job_stats()["train"] == len(_grid(config)) == 8
    assert len(rows) == 8
    assert {(r["model"], int(r["batch"]), int(r["epochs"])) for r in rows} == _grid(config)
    for row in rows:
        assert row["platform"] == config["platform"] == "test-cpu"
        assert row["eval_split"] == "test"
        assert float(row["train_time_s"]) > 0
        assert float(row["train_images_per_s"]) > 0
        assert 0.0 <= float(row["map50"]) <= 1.0
        assert 0.0 <= float(row["map50_95"]) <= float(row["map50"]) + 1e-9
        assert int(row["segments"]) == 1
        assert int(row["train_images"]) == config["dataset"]["synthetic"]["train"]
        assert int(row["eval_images"]) == config["dataset"]["synthetic"]["test"]
        for name in config["dataset"]["classes"]:
            assert f"ap50_{name}" in row
    columns = json.loads(
        (tiny_study["workdir"] / "results/summary.columns.json").read_text(encoding="utf-8")
    )
    assert set(rows[0]) <= set(columns)


@pytest.mark.slow
def test_tiny_study_cell_folders_are_complete(tiny_study: dict[str, Any]) -> None:
    results = tiny_study["workdir"] / "results"
    for model, batch, epochs in _grid(tiny_study["config"]):
        cell = results / "test-cpu" / model / f"b{batch}_e{epochs}"
        for name in (
            "weights.pt",
            "history.csv",
            "run.json",
            "metrics.json",
            "detections.json",
            "logs/train.log",
            "logs/evaluate.log",
            "logs/train.benchmark.tsv",
            "logs/evaluate.benchmark.tsv",
        ):
            assert (cell / name).is_file(), f"{cell / name} is missing"
        history = _read_csv(cell / "history.csv")
        assert [int(row["epoch"]) for row in history] == list(range(1, epochs + 1))
        record = json.loads((cell / "run.json").read_text(encoding="utf-8"))
        assert (record["model"], record["batch"], record["epochs"]) == (model, batch, epochs)
        assert record["segments"] == 1
        metrics = json.loads((cell / "metrics.json").read_text(encoding="utf-8"))
        # eval_interval_epochs 1: every epoch evaluated on the test split, the last as the
        # evaluate job did.
        assert all(row["eval_seconds"] != "" for row in history)
        assert history[-1]["eval_total_loss"] == f"{sum(metrics['val_loss'].values()):.6g}"
        assert metrics["split"] == "test"
        assert metrics["cell"] == {
            "platform": "test-cpu",
            "model": model,
            "batch": batch,
            "epochs": epochs,
            "repeat": 0,
        }
        assert isinstance(json.loads((cell / "detections.json").read_text(encoding="utf-8")), list)
        assert "epoch 1/" in (cell / "logs/train.log").read_text(encoding="utf-8")
    assert not list(results.rglob("checkpoints")), "checkpoints were left behind"
    assert not list(results.rglob("*.tmp")), "temporary files were left behind"
    for stage in ("download", "convert"):
        assert (results / "datasets/synthetic-tiny/logs" / f"{stage}.log").is_file()


@pytest.mark.slow
def test_tiny_study_rerun_does_nothing(
    tiny_study: dict[str, Any], snakemake: Callable[..., Any], tiny_config: Path
) -> None:
    run = snakemake(tiny_study["workdir"], "--cores", "2", "--configfile", str(tiny_config))
    assert run.returncode == 0, run.describe()
    assert "Nothing to be done" in run.output, run.describe()
    assert run.job_stats() == {}


@pytest.mark.slow
def test_changing_evaluation_settings_does_not_retrain(
    tiny_study: dict[str, Any], snakemake: Callable[..., Any]
) -> None:
    config = json.loads(json.dumps(tiny_study["config"]))
    config["evaluate"]["batch_size"] = 2  # changes how cells are evaluated, not trained
    workdir = tiny_study["workdir"]
    _write_config(workdir / "eval-change.yaml", config)
    run = snakemake(workdir, "-n", "--configfile", "eval-change.yaml")
    assert run.returncode == 0, run.describe()
    stats = run.job_stats()
    assert stats.get("evaluate") == 8, run.describe()
    assert "train" not in stats, f"evaluation settings retrain every cell: {stats}"


@pytest.mark.slow
def test_changing_how_cells_run_retrains_nothing(
    tiny_study: dict[str, Any], snakemake: Callable[..., Any]
) -> None:
    """Device and speed settings (RUNTIME_TRAIN_KEYS) change how a cell runs, not its result."""
    config = json.loads(json.dumps(tiny_study["config"]))
    workdir = tiny_study["workdir"]
    config["train"]["checkpoint_interval_s"] = 1234
    config["train"]["eval_interval_epochs"] = 3
    _write_config(workdir / "checkpoint-change.yaml", config)
    run = snakemake(workdir, "-n", "--configfile", "checkpoint-change.yaml")
    assert run.returncode == 0, run.describe()
    assert run.job_stats() == {}, run.describe()  # not even a profile job

    config["train"].update(workers=1, device="cpu", channels_last=False, compile=True)
    _write_config(workdir / "runtime-change.yaml", config)
    run = snakemake(workdir, "-n", "--configfile", "runtime-change.yaml")
    assert run.returncode == 0, run.describe()
    stats = run.job_stats()
    assert "train" not in stats and "evaluate" not in stats, run.describe()
    # The profiles do rerun: channels_last and compile change the kernels they record.
    assert stats.get("profile") == 4, run.describe()

    config["train"]["lr0"] = 0.005  # what a cell computes: every cell retrains
    _write_config(workdir / "lr-change.yaml", config)
    run = snakemake(workdir, "-n", "--configfile", "lr-change.yaml")
    assert run.returncode == 0, run.describe()
    assert run.job_stats().get("train") == 8, run.describe()


@pytest.mark.slow
def test_other_platform_is_summarised_without_retraining(
    tiny_study: dict[str, Any],
    tmp_path: Path,
    tree_cloner: Callable[[Path, Path], Path],
    snakemake: Callable[..., Any],
    tiny_config: Path,
) -> None:
    workdir = tree_cloner(tiny_study["workdir"], tmp_path / "workflow")
    results = workdir / "results"
    # As if another platform's folder had been copied in from elsewhere.
    tree_cloner(results / "test-cpu", results / "other-cpu")

    run = snakemake(
        workdir, "results/summary.csv", "--cores", "2", "--configfile", str(tiny_config)
    )

    assert run.returncode == 0, run.describe()
    assert run.job_stats() == {"aggregate": 1}, run.describe()
    assert "rule train" not in run.output and "rule evaluate" not in run.output
    rows = _read_csv(results / "summary.csv")
    assert len(rows) == 16
    by_platform: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_platform.setdefault(row["platform"], []).append(row)
    assert set(by_platform) == {"test-cpu", "other-cpu"}
    original = sorted(tiny_study["summary"], key=_cell_key)
    for platform, platform_rows in by_platform.items():
        assert len(platform_rows) == 8
        copied = sorted(({**row, "platform": "test-cpu"} for row in platform_rows), key=_cell_key)
        assert copied == original, f"{platform} rows differ from the cells they were copied from"


def _cell_key(row: dict[str, str]) -> tuple[str, int, int]:
    return row["model"], int(row["batch"]), int(row["epochs"])


@pytest.mark.slow
def test_raising_repeats_trains_only_the_new_repeats(
    tiny_study: dict[str, Any], snakemake: Callable[..., Any], tiny_config: Path
) -> None:
    run = snakemake(
        tiny_study["workdir"], "-n", "--configfile", str(tiny_config), "--config", "repeats=3"
    )
    assert run.returncode == 0, run.describe()
    stats = run.job_stats()
    assert (stats.get("train"), stats.get("evaluate")) == (16, 16), run.describe()
    assert "profile" not in stats and "convert" not in stats, run.describe()
    pattern = r"output: results/test-cpu/[^/]+/(b\d+_e\d+\S*)/weights\.pt"
    planned = set(re.findall(pattern, run.output))
    assert planned and all(name.endswith(("_r1", "_r2")) for name in planned), planned


@pytest.mark.slow
def test_repeats_end_to_end_with_a_second_platform(
    tiny_study: dict[str, Any],
    tmp_path: Path,
    tree_cloner: Callable[[Path, Path], Path],
    snakemake: Callable[..., Any],
) -> None:
    """One cell, 3 repeats with a fixed seed (identical weights on a CPU), copied as a second
    platform: summary_stats.csv has n = 3, the comparison carries intervals, findings say n."""
    workdir = tree_cloner(tiny_study["workdir"], tmp_path / "workflow")
    config = json.loads(json.dumps(tiny_study["config"]))
    config.update(
        models={"yolov3-tiny": {"weights": "scratch"}}, batch_sizes=[4], epochs=[1],
        repeats=3, repeat_seed="fixed",
    )
    _write_config(workdir / "repeats.yaml", config)
    targets = ["results/summary.csv", "results/report/comparison/comparison.md"]
    run = snakemake(workdir, *targets, "--cores", "2", "--configfile", "repeats.yaml")
    assert run.returncode == 0, run.describe()
    assert run.job_stats().get("train") == 2, run.describe()  # repeats 1 and 2 only
    cell = workdir / "results" / "test-cpu" / "yolov3-tiny"
    weights = [torch.load(cell / name / "weights.pt")["state_dict"] for name in
               ("b4_e1", "b4_e1_r1", "b4_e1_r2")]
    for other in weights[1:]:
        assert all(torch.equal(weights[0][k], other[k]) for k in weights[0])
    records = [json.loads((cell / n / "run.json").read_text()) for n in ("b4_e1", "b4_e1_r2")]
    assert [(r["repeat"], r["seed"]) for r in records] == [(0, 0), (2, 0)]
    assert set(records[1]["time_breakdown"]) >= {"startup_s", "first_epoch_s", "checkpoint_s"}
    assert records[1]["time_breakdown"]["startup_s"] > 0

    results = workdir / "results"
    tree_cloner(results / "test-cpu", results / "other-cpu")
    run = snakemake(workdir, *targets, "results/report/findings.md", "--cores", "2",
                    "--configfile", "repeats.yaml", "--forcerun", "aggregate")
    assert run.returncode == 0, run.describe()
    stats_rows = [r for r in _read_csv(results / "summary_stats.csv")
                  if (r["model"], r["batch"], r["epochs"]) == ("yolov3-tiny", "4", "1")]
    assert sorted(r["platform"] for r in stats_rows) == ["other-cpu", "test-cpu"]
    assert all(r["n"] == "3" and r["train_time_s_ci_low"] != "NA" for r in stats_rows)
    assert all(r["map50_std"] == "0" for r in stats_rows)  # identical weights, same mAP
    comparison = (results / "report/comparison/comparison.md").read_text(encoding="utf-8")
    assert "Over the repeats: is the difference real?" in comparison
    assert "| yolov3-tiny | 4 | 1 | 3 | 3 |" in comparison
    findings = (results / "report/findings.md").read_text(encoding="utf-8")
    assert "n = 3 and 3 runs per cell" in findings
