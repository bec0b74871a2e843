"""Exporting cells to MLflow and TensorBoard (config key tracking, rule track).

The end-to-end tests export the session's tiny study (conftest.tiny_study_run) from a clone
into a local MLflow store and read it back with MlflowClient and tensorboard's event reader.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from detbench.errors import DetbenchError
from detbench.study import cells
from detbench.study.config import validate_config
from detbench.tracking import settings as tracking_settings
from detbench.tracking.record import (
    CELL_TAG,
    PARAM_COLUMNS,
    PROFILE_COLUMNS,
    TAG_COLUMNS,
    read_history,
)
from detbench.tracking.settings import TrackingSettings

STORE = "results/mlruns"
EXPERIMENT = "detbench/synthetic-tiny/test-cpu"
HISTORY_LOSSES = ("train_box_loss", "train_obj_loss", "train_cls_loss", "train_total_loss")


def _tiny_config(tiny_config: Path, tracking: dict[str, Any] | None) -> dict[str, Any]:
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    if tracking is not None:
        config["tracking"] = tracking
    return config


def _write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _client(workdir: Path) -> Any:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=tracking_settings.tracking_uri(str(workdir / STORE)))


def _runs_by_cell(client: Any) -> dict[str, list[Any]]:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert experiment is not None, f"no experiment {EXPERIMENT!r}"
    runs: dict[str, list[Any]] = {}
    for run in client.search_runs([experiment.experiment_id]):
        runs.setdefault(run.data.tags[CELL_TAG], []).append(run)
    return runs


def _cell_id(row: dict[str, str]) -> str:
    numbers = (int(row[key]) for key in ("batch", "epochs", "repeat"))
    return cells.Cell(row["platform"], row["model"], *numbers).label()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- settings


def test_unset_section_exports_nothing(tiny_config: Path) -> None:
    config = validate_config(_tiny_config(tiny_config, None))
    assert TrackingSettings.from_config(config) is None


def test_empty_section_is_a_local_store_named_after_study_and_platform(
    tiny_config: Path, tmp_path: Path
) -> None:
    config = validate_config(_tiny_config(tiny_config, {}))
    settings = TrackingSettings.from_config(config)
    assert settings == TrackingSettings(
        mlflow="results/mlruns", experiment=EXPERIMENT, tensorboard=False, log_weights=False
    )
    assert settings.local_store() == Path("results/mlruns")
    store = tmp_path / "store"
    assert tracking_settings.tracking_uri(str(store)) == f"sqlite:///{store}/mlflow.db"
    assert tracking_settings.tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    server = TrackingSettings("http://mlflow:5000", "x", tensorboard=False, log_weights=False)
    assert server.local_store() is None and server.artifact_location() is None


def test_unknown_tracking_key_fails_in_one_line(tiny_config: Path) -> None:
    with pytest.raises(DetbenchError, match=r"key tracking: unknown key 'tensorbord'"):
        validate_config(_tiny_config(tiny_config, {"tensorbord": True}))


def test_missing_package_fails_before_any_job(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = TrackingSettings("results/mlruns", "x", tensorboard=True, log_weights=False)
    tracking_settings.check_installed(settings, "c.yaml")  # both installed here
    real_find_spec = tracking_settings.importlib.util.find_spec
    monkeypatch.setattr(
        tracking_settings.importlib.util,
        "find_spec",
        lambda name: None if name == "tensorboard" else real_find_spec(name),
    )
    with pytest.raises(DetbenchError, match=r"c\.yaml: key tracking: .*tensorboard.*\[tracking\]"):
        tracking_settings.check_installed(settings, "c.yaml")


# --------------------------------------------------------------------------- planning


def _tripwire(tmp_path: Path) -> Path:
    """Packages named mlflow and tensorboard that fail when imported, first on the path."""
    root = tmp_path / "tripwire"
    for name in ("mlflow", "tensorboard"):
        (root / name).mkdir(parents=True)
        (root / name / "__init__.py").write_text(f"raise ImportError('{name} imported')\n")
    return root


@pytest.mark.parametrize(
    ("tracking", "track_jobs"),
    [(None, 0), ({"tensorboard": True}, 8)],
    ids=["unset", "set"],
)
def test_planning_imports_neither_tool(
    tracking: dict[str, Any] | None,
    track_jobs: int,
    workflow_copy: Path,
    tiny_config: Path,
    tmp_path: Path,
    snakemake: Callable[..., Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without the key no track job is planned; with it, one per cell. Either way the
    workflow imports neither tool while planning (they would fail here if it did)."""
    path = [str(_tripwire(tmp_path)), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    config = _write_config(workflow_copy / "c.yaml", _tiny_config(tiny_config, tracking))

    run = snakemake(workflow_copy, "-n", "--configfile", config)

    assert run.returncode == 0, run.describe()
    assert run.job_stats().get("track", 0) == track_jobs, run.describe()
    assert "imported" not in run.output


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tracked_study(
    tiny_study_run: Any,
    tiny_config: Path,
    tmp_path_factory: pytest.TempPathFactory,
    tree_cloner: Callable[[Path, Path], Path],
    snakemake: Callable[..., Any],
) -> dict[str, Any]:
    """A clone of the tiny study exported with tracking {tensorboard: true} (the default local
    MLflow store), then exported a second time with every track job forced."""
    workdir = tree_cloner(tiny_study_run.workdir, tmp_path_factory.mktemp("tracked") / "wf")
    tracking = _tiny_config(tiny_config, {"tensorboard": True})
    config = _write_config(workdir / "tracking.yaml", tracking)
    # The track outputs as targets: a clone's report jobs rerun anyway (their reference table's
    # path is absolute), and they are not what this exports.
    targets = [
        path.relative_to(workdir).with_name(name)
        for path in sorted(workdir.glob(f"results/test-cpu/*/*/{cells.METRICS}"))
        for name in (cells.TRACKING_RECORD, cells.TENSORBOARD_EVENTS)
    ]
    first = snakemake(workdir, *targets, "--cores", "2", "--configfile", config)
    if first.returncode != 0:
        pytest.fail(f"the tracked tiny study failed:\n{first.describe()}")
    client = _client(workdir)
    first_runs = _runs_by_cell(client)
    second = snakemake(
        workdir, *targets, "--cores", "2", "--forcerun", "track", "--configfile", config
    )
    if second.returncode != 0:
        pytest.fail(f"the second export failed:\n{second.describe()}")
    return {
        "workdir": workdir,
        "config": config,
        "first": first,
        "first_runs": first_runs,
        "second": second,
        "summary": _read_csv(workdir / "results" / "summary.csv"),
    }


@pytest.mark.slow
def test_only_track_jobs_run_on_a_finished_study(tracked_study: dict[str, Any]) -> None:
    assert tracked_study["first"].job_stats() == {"track": 8}
    assert tracked_study["second"].job_stats() == {"track": 8}


@pytest.mark.slow
def test_mlflow_holds_one_run_per_cell_equal_to_the_summary(
    tracked_study: dict[str, Any],
) -> None:
    client = _client(tracked_study["workdir"])
    runs = _runs_by_cell(client)
    summary = tracked_study["summary"]
    assert sorted(runs) == sorted(_cell_id(row) for row in summary)
    for row in summary:
        (run,) = runs[_cell_id(row)]
        params = run.data.params
        for key in PARAM_COLUMNS:
            assert params[key] == row[key], (key, run.info.run_name)
        assert float(params["lr0"]) == 0.01  # train.lr0's default
        metrics = run.data.metrics
        not_metrics = {*PARAM_COLUMNS, *TAG_COLUMNS, *PROFILE_COLUMNS}
        numeric = {
            key: float(text)
            for key, text in row.items()
            if key not in not_metrics and _is_number(text)
        }
        assert {"map50", "map50_95", "train_time_s", "wall_time_s", "max_rss_kb"} <= set(numeric)
        for key, value in numeric.items():
            assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-9), key
        tags = run.data.tags
        assert tags["git_commit"] == row["git_commit"]
        assert tags["cpu_model"] == row["cpu_model"]
        assert tags["torch_version"].startswith("2.")
        cell_folder = Path(run.info.run_name)
        assert tags["weights_file"].endswith(f"{cell_folder}/{cells.WEIGHTS}")
        artifacts = {item.path for item in client.list_artifacts(run.info.run_id)}
        assert artifacts == {"run.json", "metrics.json", "history.csv"}
        assert run.info.status == "FINISHED"


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@pytest.mark.slow
def test_mlflow_history_is_one_step_per_epoch(tracked_study: dict[str, Any]) -> None:
    client = _client(tracked_study["workdir"])
    results = tracked_study["workdir"] / "results"
    for cell_id, (run,) in _runs_by_cell(client).items():
        history = read_history(results / cell_id / cells.HISTORY)
        for key in (*HISTORY_LOSSES, "lr", "eval_map50"):
            logged = client.get_metric_history(run.info.run_id, key)
            assert [(m.step, m.value) for m in sorted(logged, key=lambda m: m.step)] == [
                (row.epoch, row.values[key]) for row in history
            ], (cell_id, key)


@pytest.mark.slow
def test_second_export_makes_no_duplicates(tracked_study: dict[str, Any]) -> None:
    runs = _runs_by_cell(_client(tracked_study["workdir"]))
    first = tracked_study["first_runs"]
    assert {cell: [r.info.run_id for r in rs] for cell, rs in runs.items()} == {
        cell: [r.info.run_id for r in rs] for cell, rs in first.items()
    }
    receipts = tracked_study["workdir"].glob(f"results/test-cpu/*/*/{cells.TRACKING_RECORD}")
    actions = {json.loads(path.read_text())["mlflow"]["action"] for path in receipts}
    assert actions == {"unchanged"}


@pytest.mark.slow
def test_tensorboard_events_hold_the_history(tracked_study: dict[str, Any]) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = tracked_study["workdir"] / "results"
    folders = [path.parent for path in results.glob(f"test-cpu/*/*/{cells.TENSORBOARD_EVENTS}")]
    assert len(folders) == 8
    for folder in folders:
        history = read_history(folder / cells.HISTORY)
        events = EventAccumulator(str(folder))
        events.Reload()
        for key in HISTORY_LOSSES:
            scalars = events.Scalars(f"loss/{key}")
            assert [s.step for s in scalars] == [row.epoch for row in history]
            assert [s.value for s in scalars] == pytest.approx(
                [row.values[key] for row in history], rel=1e-6
            ), (folder, key)


@pytest.mark.slow
def test_changed_cell_replaces_its_run(tracked_study: dict[str, Any], tmp_path: Path) -> None:
    """A re-evaluated (or retrained) cell's run is replaced: new figures, still one run."""
    from detbench.tracking.export import export_tracked_cell

    source = tracked_study["workdir"] / "results" / "test-cpu" / "yolov3-tiny" / "b4_e1"
    folder = tmp_path / "results" / "test-cpu" / "yolov3-tiny" / "b4_e1"
    shutil.copytree(source, folder)
    settings = TrackingSettings(str(tmp_path / "mlruns"), "e", tensorboard=False, log_weights=False)
    first = export_tracked_cell(folder, settings, tmp_path / "r1.json")["mlflow"]
    metrics = json.loads((folder / cells.METRICS).read_text())
    metrics["metrics"]["map50"] = 0.625
    (folder / cells.METRICS).write_text(json.dumps(metrics))

    second = export_tracked_cell(folder, settings, tmp_path / "r2.json")["mlflow"]

    assert (first["action"], second["action"]) == ("created", "replaced")
    assert second["replaced_run_ids"] == [first["run_id"]]
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=second["tracking_uri"])
    (run,) = client.search_runs([second["experiment_id"]])
    assert run.info.run_id == second["run_id"]
    assert run.data.metrics["map50"] == 0.625
    assert client.get_run(first["run_id"]).info.lifecycle_stage == "deleted"


@pytest.mark.slow
def test_server_down_fails_the_track_job_in_one_line(
    tracked_study: dict[str, Any],
    tmp_path: Path,
    tree_cloner: Callable[[Path, Path], Path],
    snakemake: Callable[..., Any],
) -> None:
    workdir = tree_cloner(tracked_study["workdir"], tmp_path / "wf")
    uri = f"http://127.0.0.1:{_free_port()}"
    config = yaml.safe_load(tracked_study["config"].read_text())
    config["tracking"] = {"mlflow": uri}
    path = _write_config(workdir / "down.yaml", config)
    results = workdir / "results"
    before = {p: p.read_bytes() for p in results.glob("test-cpu/*/*/*") if p.is_file()}
    summary = (results / "summary.csv").read_bytes()

    targets = [
        path.relative_to(workdir).with_name(cells.TRACKING_RECORD)
        for path in results.glob(f"test-cpu/*/*/{cells.METRICS}")
    ]
    run = snakemake(workdir, *targets, "--cores", "1", "--configfile", path)

    assert run.returncode != 0, run.describe()
    lines = [line for line in run.output.splitlines() if line.startswith("detbench error:")]
    assert lines, run.describe()
    assert lines[0].startswith(f"detbench error: MLflow tracking server {uri} does not answer")
    assert (results / "summary.csv").read_bytes() == summary
    for file, content in before.items():
        if file.name != cells.TRACKING_RECORD:
            assert file.read_bytes() == content, file


@pytest.mark.slow
def test_tensorboard_export_imports_neither_mlflow_nor_torch(
    tracked_study: dict[str, Any], tmp_path: Path
) -> None:
    """The events come from history.csv: a TensorBoard-only track job needs no mlflow, and
    writing them needs no torch."""
    folder = tracked_study["workdir"] / "results" / "test-cpu" / "yolov3" / "b8_e2"
    events = tmp_path / cells.TENSORBOARD_EVENTS
    script = f"""
import sys
from detbench.tracking.export import export_tracked_cell
from detbench.tracking.settings import TrackingSettings
settings = TrackingSettings(None, "e", tensorboard=True, log_weights=False)
export_tracked_cell({str(folder)!r}, settings, {str(tmp_path / "r.json")!r}, events={str(events)!r})
print(sorted(m for m in ("mlflow", "torch", "tensorflow") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert events.read_bytes() == (folder / cells.TENSORBOARD_EVENTS).read_bytes()
