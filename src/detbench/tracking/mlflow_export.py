"""One MLflow run per cell, in the study's experiment.

A cell's run carries the tag ``detbench.cell`` (its id, ``platform/model/cell``), by which the
next export finds it: an unchanged cell leaves its run as it is, a changed one (retrained,
re-evaluated) gets a fresh run in place of the old, which is deleted. MLflow keeps params
immutable and appends metric values, so replacing the run is the one way to replace its figures;
the cell never has two active runs. The tag ``detbench.fingerprint`` is written last, so a run
whose export broke off is replaced next time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError
from detbench.tracking.record import CELL_TAG, FINGERPRINT_TAG, CellExport
from detbench.tracking.settings import TrackingSettings, is_server

# MLflow's REST limits per log_batch call.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_TAGS_PER_BATCH = 100
_SERVER_TIMEOUT_S = 10
_LOCK_FILE = ".detbench.lock"


@dataclasses.dataclass(frozen=True)
class ExportedRun:
    """Where a cell's run is, and what this export did to it."""

    tracking_uri: str
    experiment: str
    experiment_id: str
    run_id: str
    action: str  # "created", "replaced" or "unchanged"
    replaced_run_ids: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "replaced_run_ids": list(self.replaced_run_ids)}


def export_cell(export: CellExport, settings: TrackingSettings) -> ExportedRun:
    """Log ``export`` into its experiment as described above."""
    uri = settings.tracking_uri()
    if uri is None:
        raise ValueError("tracking.mlflow is null: no MLflow export configured")
    _quiet_mlflow_environment()
    if is_server(uri):
        check_server(uri)
    with _store_lock(settings.local_store()), _mlflow_errors(uri):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, settings)
        fingerprint = export.fingerprint(log_weights=settings.log_weights)
        found = find_cell_runs(client, experiment_id, export.cell_id)
        if len(found) == 1 and found[0].data.tags.get(FINGERPRINT_TAG) == fingerprint:
            run_id, action = found[0].info.run_id, "unchanged"
        else:
            run_id = _log_run(client, experiment_id, export, settings, fingerprint)
            for run in found:
                client.delete_run(run.info.run_id)
            action = "replaced" if found else "created"
        replaced = tuple(run.info.run_id for run in found if run.info.run_id != run_id)
        return ExportedRun(uri, settings.experiment, experiment_id, run_id, action, replaced)


def find_cell_runs(client: Any, experiment_id: str, cell_id: str) -> list[Any]:
    """The active runs of a cell in the experiment (one, or none before its first export)."""
    from mlflow.entities import ViewType

    # Backticks quote a tag name holding a dot; cell ids hold no quote (detbench.study.cells).
    query = f"tags.`{CELL_TAG}` = '{cell_id}'"
    return list(
        client.search_runs([experiment_id], filter_string=query, run_view_type=ViewType.ACTIVE_ONLY)
    )


def check_server(uri: str) -> None:
    """Fail in one line naming the server when it does not answer its health check."""
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=_SERVER_TIMEOUT_S) as response:
            response.read()
    except urllib.error.HTTPError as error:
        raise DetbenchError(
            f"MLflow tracking server {uri} answers its health check with HTTP {error.code} "
            f"(key tracking.mlflow)"
        ) from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DetbenchError(
            f"MLflow tracking server {uri} does not answer ({reason}): start it or change "
            f"tracking.mlflow; cells and summary are unchanged"
        ) from None


def _log_run(
    client: Any,
    experiment_id: str,
    export: CellExport,
    settings: TrackingSettings,
    fingerprint: str,
) -> str:
    from mlflow.entities import Metric, Param, RunTag

    tags = {**export.tags}
    if "git_commit" in tags:
        tags["mlflow.source.git.commit"] = tags["git_commit"]
    run = client.create_run(
        experiment_id,
        start_time=export.start_time_ms,
        tags={CELL_TAG: export.cell_id},
        run_name=export.cell.label(),
    )
    run_id = run.info.run_id
    metrics = [
        Metric(key, value, time_ms, row.epoch)
        for row, time_ms in zip(export.history, export.epoch_times_ms(), strict=True)
        for key, value in row.values.items()
    ]
    final_step = export.history[-1].epoch if export.history else export.cell.epochs
    metrics += [
        Metric(key, value, export.end_time_ms, final_step) for key, value in export.metrics.items()
    ]
    params = [Param(key, value) for key, value in export.params.items()]
    run_tags = [RunTag(key, value) for key, value in tags.items()]
    for chunk in _chunks(params, _MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=chunk)
    for chunk in _chunks(run_tags, _MAX_TAGS_PER_BATCH):
        client.log_batch(run_id, tags=chunk)
    for chunk in _chunks(metrics, _MAX_METRICS_PER_BATCH):
        client.log_batch(run_id, metrics=chunk)
    for path in export.artifacts:
        client.log_artifact(run_id, str(path))
    if settings.log_weights:
        client.log_artifact(run_id, str(export.weights), artifact_path="weights")
    client.set_terminated(run_id, "FINISHED", end_time=export.end_time_ms)
    client.set_tag(run_id, FINGERPRINT_TAG, fingerprint)
    return run_id


def _experiment_id(client: Any, settings: TrackingSettings) -> str:
    """The experiment's id, created (or restored from MLflow's trash) when needed."""
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        try:
            return client.create_experiment(
                settings.experiment, artifact_location=settings.artifact_location()
            )
        except MlflowException:
            # Another track job against the same server created it meanwhile.
            experiment = client.get_experiment_by_name(settings.experiment)
            if experiment is None:
                raise
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _quiet_mlflow_environment() -> None:
    """No usage telemetry from a benchmark job (clusters are often offline), and a server that
    stops answering mid-export fails the job in seconds rather than after minutes of retries.
    Variables the user set win."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


@contextlib.contextmanager
def _store_lock(store: Path | None) -> Iterator[None]:
    """One track job at a time in a local store: SQLite takes one writer, and the first job
    creates the database's tables."""
    if store is None:
        yield
        return
    store.mkdir(parents=True, exist_ok=True)
    with (store / _LOCK_FILE).open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def _mlflow_errors(uri: str) -> Iterator[None]:
    """MLflow's own failures as one line naming the tracking URI."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as error:
        first_line = (str(error.message).strip().splitlines() or ["failed"])[0]
        raise DetbenchError(f"MLflow at {uri}: {first_line}") from None
