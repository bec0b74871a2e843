"""The Train page and its JSON API (only with ``detbench serve --allow-training``).

* ``GET /train``: the form (model, starting weights, batch, epochs, lr0, img_size, dataset).
* ``POST /api/train/runs``: queue a run (202), ``GET /api/train/runs`` and
  ``GET /api/train/runs/<id>``: state and progress, ``POST /api/train/runs/<id>/cancel`` and
  ``.../resume``.

Every API request carries the token from ``DETBENCH_TRAIN_TOKEN``, compared in constant time:
as ``Authorization: Bearer <token>`` (API clients), or as the form's ``token`` field, which
browsers send with cookies, so that path also needs the form's CSRF token to match its cookie
(double submit: another site can make a browser post a form, but cannot read the cookie to
copy it into the form). A missing or wrong token is 403 before anything is queued.
"""

from __future__ import annotations

import hmac
import json
import secrets
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Flask, jsonify, make_response, render_template, request
from werkzeug.exceptions import HTTPException

from detbench.errors import DetbenchError
from detbench.study.cells import METRICS
from detbench.study.config import load_schema
from detbench.web.runs import (
    FieldError,
    RunRequest,
    form_defaults,
    progress,
    run_cell,
    run_config,
    run_folder,
    write_run_config,
)
from detbench.web.settings import TrainingSettings
from detbench.web.training_queue import QueueFull, Run, TrainingQueue
from detbench.web.uploads import UploadRejected, ZipLimits, receive_voc_zip

CSRF_COOKIE = "detbench_csrf"
SHARED_RESULTS = ("datasets", "weights")


class TrainApiError(Exception):
    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _same(supplied: str, expected: str) -> bool:
    return hmac.compare_digest(supplied.encode("utf-8"), expected.encode("utf-8"))


def schema_choices() -> tuple[list[str], list[str]]:
    """The models and starting weights the config schema allows (the form's choices)."""
    models = load_schema()["properties"]["models"]
    weights = models["additionalProperties"]["properties"]["weights"]["enum"]
    return sorted(models["propertyNames"]["enum"], reverse=True), list(weights)


def run_body(queue: TrainingQueue, run: Run) -> dict[str, Any]:
    """A run as the API shows it: its record, its progress and, once done, its model."""
    folder = run_folder(queue.runs_dir, run.id)
    body = run.to_json()
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    except OSError:
        return body
    body["progress"] = progress(folder, config)
    metrics_file = run_cell(config).file(METRICS, folder / "results")
    done = run.state == "done" and metrics_file.is_file()
    body["test_url"] = f"/?model={run.cell}" if done else None
    body["evaluation"] = None
    if done:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        body["evaluation"] = {
            "map50": metrics["metrics"]["map50"],
            "map50_95": metrics["metrics"]["map50_95"],
            "split": metrics["split"],
            "num_images": metrics["num_images"],
        }
    return body


def training_blueprint(
    settings: TrainingSettings, queue: TrainingQueue, base: dict[str, Any]
) -> Blueprint:
    blueprint = Blueprint("training", __name__)
    defaults = form_defaults(base)
    models, starting_weights = schema_choices()
    limits = ZipLimits(
        max_members=settings.max_zip_members,
        max_unpacked_bytes=int(settings.max_unpacked_mb * 1024 * 1024),
    )

    def authorise() -> None:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            if not _same(header[len("Bearer ") :].strip(), settings.token):
                raise TrainApiError(403, "training: wrong token")
            return
        supplied = request.form.get("token", "")
        if not supplied or not _same(supplied, settings.token):
            raise TrainApiError(403, "training: missing or wrong token")
        cookie = request.cookies.get(CSRF_COOKIE, "")
        field = request.form.get("csrf_token", "")
        if not cookie or not field or not _same(cookie, field):
            raise TrainApiError(
                403, "training: the form's CSRF token is missing or stale; reload the Train page"
            )

    def found(run_id: int) -> Run:
        run = queue.get(run_id)
        if run is None:
            raise TrainApiError(404, f"no training run {run_id}")
        return run

    @blueprint.get("/train")
    def page() -> Any:
        token = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
        response = make_response(
            render_template(
                "train.html",
                csrf_token=token,
                defaults=defaults,
                models=models,
                starting_weights=starting_weights,
                dataset=base["dataset"],
                settings=settings,
                max_waiting=queue.max_waiting,
                concurrency=queue.concurrency,
            )
        )
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    @blueprint.post("/api/train/runs")
    def submit() -> Any:
        request.max_content_length = max(settings.max_zip_bytes, 1024 * 1024)
        authorise()
        run_request = RunRequest.from_form(request.form, defaults)
        try:
            run_config(base, run_request, 0)  # the form's values, before any upload is read
        except FieldError as error:
            raise TrainApiError(400, str(error), error.field) from None
        staging: Path | None = None
        dataset: dict[str, Any] | None = None
        if run_request.dataset == "upload":
            upload = request.files.get("dataset_zip")
            if upload is None or not upload.filename:
                raise TrainApiError(400, "dataset_zip: no zip file uploaded", "dataset_zip")
            staging = queue.runs_dir / ".staging" / uuid.uuid4().hex
            splits = base["dataset"]["train_split"], base["dataset"]["eval_split"]
            try:
                uploaded = receive_voc_zip(upload.read(), staging, limits, *splits)
            except UploadRejected as error:
                raise TrainApiError(400, f"dataset_zip: {error}", "dataset_zip") from None
            dataset = {
                "classes": list(uploaded.classes),
                "train_split": uploaded.train_split,
                "eval_split": uploaded.eval_split,
                "relative_root": str(uploaded.root.relative_to(staging)),
            }

        def prepare(run_id: int, folder: Path) -> str:
            try:
                folder.mkdir(parents=True)
                share_downloads(queue.runs_dir, folder)
                section = None
                if staging is not None and dataset is not None:
                    staging.rename(folder / "dataset")
                    section = {
                        "name": f"upload-{run_id}",
                        "source": str((folder / "dataset" / dataset["relative_root"]).resolve()),
                        "classes": dataset["classes"],
                        "train_split": dataset["train_split"],
                        "eval_split": dataset["eval_split"],
                    }
                config = run_config(base, run_request, run_id, section)
                write_run_config(folder, config)
                return run_cell(config).label()
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise

        try:
            run = queue.submit(run_request.to_json(), prepare)
        except QueueFull as error:
            raise TrainApiError(429, str(error)) from None
        except FieldError as error:
            raise TrainApiError(400, str(error), error.field) from None
        finally:
            if staging is not None:
                shutil.rmtree(staging, ignore_errors=True)
        response = jsonify(run_body(queue, run))
        response.status_code = 202
        response.headers["Location"] = f"/api/train/runs/{run.id}"
        return response

    @blueprint.get("/api/train/runs")
    def list_runs() -> Any:
        authorise()
        return jsonify({"runs": [run_body(queue, run) for run in queue.runs()]})

    @blueprint.get("/api/train/runs/<int:run_id>")
    def show(run_id: int) -> Any:
        authorise()
        return jsonify(run_body(queue, found(run_id)))

    @blueprint.post("/api/train/runs/<int:run_id>/cancel")
    def cancel(run_id: int) -> Any:
        authorise()
        found(run_id)
        run = queue.cancel(run_id)
        assert run is not None
        return jsonify(run_body(queue, run))

    @blueprint.post("/api/train/runs/<int:run_id>/resume")
    def resume(run_id: int) -> Any:
        authorise()
        found(run_id)
        try:
            run = queue.resume(run_id)
        except QueueFull as error:
            raise TrainApiError(429, str(error)) from None
        assert run is not None
        return jsonify(run_body(queue, run))

    @blueprint.errorhandler(TrainApiError)
    def api_error(error: TrainApiError) -> Any:
        body: dict[str, Any] = {"error": error.message}
        if error.field is not None:
            body["field"] = error.field
        response = jsonify(body)
        if error.status == 429:
            response.headers["Retry-After"] = "60"
        return response, error.status

    @blueprint.errorhandler(DetbenchError)
    def detbench_error(error: DetbenchError) -> Any:
        return jsonify({"error": str(error).splitlines()[0]}), 400

    @blueprint.errorhandler(413)
    def too_large(error: HTTPException) -> Any:
        message = (
            f"upload too large: a dataset zip may be at most {settings.max_zip_mb:g} MiB "
            f"({settings.max_zip_bytes:,} bytes)"
        )
        return jsonify({"error": message, "field": "dataset_zip"}), 413

    return blueprint


def share_downloads(runs_dir: Path, folder: Path) -> None:
    """Point a run's results/datasets and results/weights at folders all runs share, so a
    dataset is downloaded and converted, and Darknet's weights fetched, once, not per run."""
    results = folder / "results"
    results.mkdir(parents=True, exist_ok=True)
    for name in SHARED_RESULTS:
        shared = runs_dir / "shared" / name
        shared.mkdir(parents=True, exist_ok=True)
        (results / name).symlink_to(shared.resolve(), target_is_directory=True)


def add_training(app: Flask, settings: TrainingSettings) -> TrainingQueue:
    """Start the queue and add the Train page and its API to ``app``."""
    queue, base = start_training(settings)
    app.register_blueprint(training_blueprint(settings, queue, base))
    return queue


def start_training(settings: TrainingSettings) -> tuple[TrainingQueue, dict[str, Any]]:
    """The queue (its scheduler started, runs a previous server left resumed) and the base
    config for ``--allow-training``."""
    from detbench.web.runs import WorkflowCommand, load_base_config

    if not settings.snakefile.is_file():
        raise DetbenchError(f"--workflow: {settings.snakefile} does not exist")
    if not (settings.profile / "config.yaml").is_file():
        raise DetbenchError(f"--train-profile {settings.profile}: no config.yaml there")
    base = load_base_config(settings.base_config)
    command = WorkflowCommand(
        snakemake=settings.snakemake,
        snakefile=settings.snakefile,
        profile=settings.profile,
        cores=settings.cores,
    )
    queue = TrainingQueue(
        settings.runs_dir,
        command,
        max_waiting=settings.max_waiting,
        concurrency=settings.concurrency,
    )
    queue.start()
    return queue, base
