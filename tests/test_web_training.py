"""Training from the web page: the token and CSRF checks, the form validated by the config
schema, the bounded queue, uploaded VOC zips, and (slow) real Snakemake runs: one to the end,
one cancelled, one whose server is killed mid-run and restarted."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from test_web import IMG_SIZE, encode, free_port, post_image, smear_image, write_bccd_weights

from detbench.web.runs import WorkflowCommand
from detbench.web.settings import TrainingSettings
from detbench.web.train_routes import CSRF_COOKIE, training_blueprint
from detbench.web.training_queue import TrainingQueue, group_alive

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TOKEN = "test-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TIMEOUT_S = 300  # a tiny run takes ~30 s alone; the CPU is shared

# The smallest study a run can be: 4 synthetic training images of 128x96 at 64 px, 1 epoch.
BASE_CONFIG = {
    "platform": "base",
    "dataset": {
        "name": "synthetic-web",
        "source": "synthetic",
        "classes": ["RBC", "WBC", "Platelets"],
        "synthetic": {"train": 4, "val": 2, "test": 2, "width": 128, "height": 96},
    },
    "models": {"yolov3-tiny": {"weights": "scratch"}},
    "batch_sizes": [2],
    "epochs": [1],
    "img_size": 64,
    "train": {"workers": 0, "eval_interval_epochs": 1, "checkpoint_interval_s": 0},
    "evaluate": {"batch_size": 2},
}
FORM = {"model": "yolov3-tiny", "weights": "scratch", "batch": "2", "epochs": "1",
        "lr0": "0.01", "img_size": "64", "dataset": "configured"}  # fmt: skip


def training_settings(tmp_path: Path, **overrides: Any) -> TrainingSettings:
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(BASE_CONFIG))
    values: dict[str, Any] = {
        "token": TOKEN,
        "runs_dir": tmp_path / "runs",
        "base_config": base,
        "snakefile": REPO / "Snakefile",
        "profile": REPO / "profiles" / "local",
        "snakemake": SNAKEMAKE,
        "cores": 1,
        "max_waiting": 2,
    }
    values.update(overrides)
    return TrainingSettings(**values)


@pytest.fixture
def routes(tmp_path: Path) -> Iterator[tuple[Any, TrainingQueue]]:
    """The training routes over a queue whose scheduler is not started: runs only wait."""
    from detbench.web.runs import load_base_config

    settings = training_settings(tmp_path)
    command = WorkflowCommand(SNAKEMAKE, settings.snakefile, settings.profile, 1)
    queue = TrainingQueue(settings.runs_dir, command, max_waiting=settings.max_waiting)
    app = Flask("detbench.web.app")
    app.register_blueprint(
        training_blueprint(settings, queue, load_base_config(settings.base_config))
    )
    try:
        yield app.test_client(), queue
    finally:
        queue.close()


def form_client(client: Any) -> str:
    """Open the Train page (sets the CSRF cookie) and return the CSRF token it embeds."""
    page = client.get("/train").get_data(as_text=True)
    marker = 'name="csrf_token" id="csrf-token" value="'
    return page.split(marker, 1)[1].split('"', 1)[0]


def submit(client: Any, fields: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return client.post(
        "/api/train/runs", data=fields, headers=headers or {}, content_type="multipart/form-data"
    )


def one_line_error(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert isinstance(body["error"], str) and "\n" not in body["error"]
    return body


# --------------------------------------------------------------------------------------------
# Token, CSRF, validation, queue bound
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("how", "expected"),
    [
        ("none", "missing or wrong token"),
        ("wrong form token", "missing or wrong token"),
        ("wrong bearer", "wrong token"),
        ("right token, no CSRF", "CSRF token is missing or stale"),
        ("right token, wrong CSRF", "CSRF token is missing or stale"),
    ],
)
def test_no_or_wrong_token_is_403_and_nothing_queued(
    routes: tuple[Any, TrainingQueue], how: str, expected: str
) -> None:
    client, queue = routes
    csrf = form_client(client)
    fields: dict[str, Any] = dict(FORM)
    headers: dict[str, str] = {}
    if how == "wrong form token":
        fields.update(token="x" * len(TOKEN), csrf_token=csrf)
    elif how == "wrong bearer":
        headers = {"Authorization": "Bearer nope"}
    elif how == "right token, no CSRF":
        fields["token"] = TOKEN
    elif how == "right token, wrong CSRF":
        fields.update(token=TOKEN, csrf_token=csrf[::-1])
    assert expected in one_line_error(submit(client, fields, headers), 403)["error"]
    assert queue.runs() == [] and not list(queue.runs_dir.glob("run-*"))
    assert one_line_error(client.get("/api/train/runs"), 403)


def test_form_with_token_and_csrf_queues_a_run(routes: tuple[Any, TrainingQueue]) -> None:
    client, queue = routes
    csrf = form_client(client)
    assert client.get_cookie(CSRF_COOKIE).value == csrf
    response = submit(client, {**FORM, "token": TOKEN, "csrf_token": csrf, "lr0": "0.002"})
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert (run["state"], run["cell"]) == ("queued", f"web-{run['id']}/yolov3-tiny/b2_e1")
    config = yaml.safe_load((queue.runs_dir / f"run-{run['id']}" / "config.yaml").read_text())
    assert config["platform"] == f"web-{run['id']}" and config["train"]["lr0"] == 0.002
    assert config["dataset"]["name"] == "synthetic-web"  # the configured dataset
    shown = client.get(f"/api/train/runs/{run['id']}", headers=BEARER).get_json()
    assert shown["state"] == "queued" and shown["progress"]["epoch"] == 0


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("lr0", "-1", "lr0: -1"),
        ("lr0", "fast", "lr0: 'fast'"),
        ("batch", "0", "batch: 0 is less than the minimum of 1"),
        ("epochs", "many", "epochs: 'many'"),
        ("img_size", "100", "img_size: 100 is not a multiple of 32"),
        ("model", "yolo9000", "model: 'yolo9000'"),
        ("weights", "imagenet", "weights: 'imagenet' is not one of"),
        ("dataset", "mine", "dataset: 'configured' or 'upload'"),
    ],
)
def test_bad_field_is_400_naming_it(
    routes: tuple[Any, TrainingQueue], field: str, value: str, problem: str
) -> None:
    client, queue = routes
    body = one_line_error(submit(client, {**FORM, field: value}, BEARER), 400)
    assert body["field"] == field and body["error"].startswith(problem), body
    assert queue.runs() == []


def test_full_queue_is_429(routes: tuple[Any, TrainingQueue]) -> None:
    client, queue = routes
    for _ in range(queue.max_waiting):
        assert submit(client, FORM, BEARER).status_code == 202
    response = submit(client, FORM, BEARER)
    assert "training queue is full: 2 runs waiting" in one_line_error(response, 429)["error"]
    assert response.headers["Retry-After"]
    assert queue.waiting() == 2 and len(queue.runs()) == 2
    # A waiting run can be cancelled, which makes room again.
    first = queue.runs()[-1].id
    cancelled = client.post(f"/api/train/runs/{first}/cancel", headers=BEARER).get_json()
    assert cancelled["state"] == "cancelled"
    assert submit(client, FORM, BEARER).status_code == 202


def test_training_is_off_without_allow_training(tmp_path: Path) -> None:
    from detbench.web import WebConfig, create_app

    app = create_app(WebConfig(bccd_model=write_bccd_weights(tmp_path / "w.pt"), device="cpu"))
    client = app.test_client()
    assert client.get("/train").status_code == 404
    assert one_line_error(submit(client, FORM, BEARER), 404)
    assert 'href="/train"' not in client.get("/").get_data(as_text=True)


@pytest.mark.parametrize("token", [None, "short"])
def test_allow_training_needs_a_token(
    token: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from detbench.cli import main

    monkeypatch.delenv("DETBENCH_TRAIN_TOKEN", raising=False)
    if token is not None:
        monkeypatch.setenv("DETBENCH_TRAIN_TOKEN", token)
    assert main(["serve", "--coco-weights", "x.weights", "--allow-training"]) == 1
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("detbench error: --allow-training: set DETBENCH_TRAIN_TOKEN to a")


# --------------------------------------------------------------------------------------------
# Uploaded VOC zips
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from detbench.data.synthetic import generate_synthetic_voc

    root = tmp_path_factory.mktemp("voc") / "mydata"
    generate_synthetic_voc(
        root, num_images={"train": 4, "val": 1, "test": 2}, image_size=(128, 96), seed=1
    )
    return root


def zip_of(folder: Path, extra: dict[str, bytes] | None = None, prefix: str = "mydata/") -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, prefix + str(path.relative_to(folder)))
        for name, data in (extra or {}).items():
            archive.writestr(name, data)
    return buffer.getvalue()


def submit_zip(client: Any, data: bytes) -> Any:
    fields = {**FORM, "dataset": "upload", "dataset_zip": (io.BytesIO(data), "data.zip")}
    return submit(client, fields, BEARER)


def test_good_zip_is_queued_with_its_classes(
    routes: tuple[Any, TrainingQueue], voc_folder: Path
) -> None:
    client, queue = routes
    response = submit_zip(client, zip_of(voc_folder))
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]
    folder = queue.runs_dir / f"run-{run_id}"
    dataset = yaml.safe_load((folder / "config.yaml").read_text())["dataset"]
    assert dataset["name"] == f"upload-{run_id}"
    assert dataset["classes"] == ["Platelets", "RBC", "WBC"]
    assert Path(dataset["source"]) == (folder / "dataset" / "mydata").resolve()
    assert (Path(dataset["source"]) / "ImageSets" / "Main" / "train.txt").is_file()
    assert not list((queue.runs_dir / ".staging").glob("*"))
    # Datasets and Darknet weights are prepared once for all runs.
    for name in ("datasets", "weights"):
        link = folder / "results" / name
        assert link.is_symlink() and link.resolve() == (queue.runs_dir / "shared" / name).resolve()


def corrupt_jpeg_zip(folder: Path) -> bytes:
    first = sorted((folder / "JPEGImages").glob("*.jpg"))[0]
    broken = first.read_bytes()[: len(first.read_bytes()) // 3]  # cut off mid-scan
    return _replace_member(folder, first, broken)


def _replace_member(folder: Path, member: Path, data: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                name = "mydata/" + str(path.relative_to(folder))
                archive.writestr(name, data if path == member else path.read_bytes())
    return buffer.getvalue()


def bomb_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mydata/JPEGImages/bomb.jpg", b"\0" * (64 << 20))  # 64 MiB -> ~64 kB
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("slip", "dataset_zip: zip member '../evil.txt': path leaves the folder ('..')"),
        ("absolute", "dataset_zip: zip member '/etc/evil': absolute path"),
        ("bomb", "dataset_zip: zip member 'mydata/JPEGImages/bomb.jpg': unpacks"),
        ("corrupt jpeg", "dataset_zip: the zip: 1 bad image or annotation file(s)"),
        ("not a zip", "dataset_zip: not a zip file"),
        ("no voc", "dataset_zip: no Pascal VOC dataset in the zip"),
    ],
)
def test_bad_zips_are_refused_with_one_line(
    routes: tuple[Any, TrainingQueue], voc_folder: Path, kind: str, expected: str
) -> None:
    client, queue = routes
    data = {
        "slip": lambda: zip_of(voc_folder, {"../evil.txt": b"x"}),
        "absolute": lambda: zip_of(voc_folder, {"/etc/evil": b"x"}),
        "bomb": bomb_zip,
        "corrupt jpeg": lambda: corrupt_jpeg_zip(voc_folder),
        "not a zip": lambda: b"PK\x03\x04 not really",
        "no voc": lambda: zip_of(voc_folder / "JPEGImages", prefix=""),
    }[kind]()
    body = one_line_error(submit_zip(client, data), 400)
    assert body["error"].startswith(expected) and body["field"] == "dataset_zip", body
    if kind == "corrupt jpeg":
        assert "(s): JPEGImages/Synth_00000.jpg: damaged image" in body["error"], body
    assert queue.runs() == [] and not list(queue.runs_dir.glob("run-*"))
    assert not (queue.runs_dir.parent / "evil.txt").exists()
    assert not list((queue.runs_dir / ".staging").glob("*"))


def test_zip_limits_on_members_and_unpacked_size(tmp_path: Path, voc_folder: Path) -> None:
    from detbench.web.uploads import UploadRejected, ZipLimits, unpack_zip

    data = zip_of(voc_folder)
    with pytest.raises(UploadRejected, match=r"^zip has \d+ members, at most 5$"):
        unpack_zip(data, tmp_path / "a", ZipLimits(max_members=5))
    with pytest.raises(UploadRejected, match=r"^zip unpacks to .* MiB, at most 0 MiB$"):
        unpack_zip(data, tmp_path / "b", ZipLimits(max_unpacked_bytes=1000))


# --------------------------------------------------------------------------------------------
# Real runs: Snakemake trains the cell (slow)
# --------------------------------------------------------------------------------------------


def wait_until(check: Any, what: str, timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def training_app(tmp_path: Path) -> Iterator[Any]:
    """The whole app with training on and its scheduler running."""
    from detbench.web import WebConfig, create_app

    config = WebConfig(
        bccd_model=write_bccd_weights(tmp_path / "weights.pt"),
        device="cpu",
        training=training_settings(tmp_path),
    )
    app = create_app(config)
    try:
        yield app
    finally:
        app.extensions["detbench"]["training_queue"].close()


def run_state(client: Any, run_id: int) -> dict[str, Any]:
    return client.get(f"/api/train/runs/{run_id}", headers=BEARER).get_json()


@pytest.mark.slow
def test_cancel_ends_the_process_group_and_leaves_no_finished_looking_cell(
    training_app: Any,
) -> None:
    client = training_app.test_client()
    queue = training_app.extensions["detbench"]["training_queue"]
    run = submit(client, {**FORM, "epochs": "12"}, BEARER).get_json()
    run_id, cell = run["id"], run["cell"]
    cell_dir = queue.runs_dir / f"run-{run_id}" / "results" / cell
    wait_until(lambda: run_state(client, run_id)["progress"]["epoch"] >= 2, "epoch 2")
    pgid = run_state(client, run_id)["pgid"]
    assert group_alive(pgid)

    client.post(f"/api/train/runs/{run_id}/cancel", headers=BEARER)
    final = wait_until(
        lambda: (body := run_state(client, run_id))["state"] != "running" and body, "cancelled"
    )
    assert (final["state"], final["reason"]) == ("cancelled", "cancelled")
    assert not group_alive(pgid)
    assert not (cell_dir / "weights.pt").exists() and not (cell_dir / "metrics.json").exists()
    assert list((cell_dir / "checkpoints").glob("*")), "the checkpoint stays"
    ids = [m["id"] for m in client.get("/api/models").get_json()["models"]]
    assert cell not in ids

    # The same run resumes from its checkpoint and finishes.
    assert client.post(f"/api/train/runs/{run_id}/resume", headers=BEARER).status_code == 200
    final = wait_until(
        lambda: (body := run_state(client, run_id))["state"] in ("done", "failed") and body, "done"
    )
    assert final["state"] == "done", final
    assert "resuming" in (cell_dir / "logs" / "train.log").read_text()
    assert final["test_url"] == f"/?model={cell}"
    assert cell in [m["id"] for m in client.get("/api/models").get_json()["models"]]


def start_server(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    weights = tmp_path / "weights.pt"
    if not weights.exists():
        write_bccd_weights(weights)
    settings = training_settings(tmp_path)
    command = [
        sys.executable, "-m", "detbench.cli", "serve", "--bccd-model", str(weights),
        "--port", str(port), "--device", "cpu", "--allow-training",
        "--train-dir", str(settings.runs_dir), "--train-config", str(settings.base_config),
        "--workflow", str(REPO / "Snakefile"), "--train-profile", str(REPO / "profiles/local"),
        "--train-cores", "1",
    ]  # fmt: skip
    log = (tmp_path / f"server-{time.monotonic_ns()}.log").open("w")
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "DETBENCH_TRAIN_TOKEN": TOKEN},
    )  # fmt: skip
    return process


def http_json(url: str, data: bytes | None = None) -> dict[str, Any]:
    headers = dict(BEARER)
    if data is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_healthy(url: str, process: subprocess.Popen[str]) -> None:
    def healthy() -> bool:
        assert process.poll() is None, "the server exited"
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=5).close()
            return True
        except OSError:
            return False

    wait_until(healthy, "the server to answer", 120)


@pytest.mark.slow
def test_server_killed_mid_run_resumes_it_exactly_once(tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_server(tmp_path, port)
    try:
        wait_healthy(url, first)
        # Long enough that the orphaned run still trains when the next server has started.
        form = urllib.parse.urlencode({**FORM, "epochs": "15"}).encode()
        run = http_json(f"{url}/api/train/runs", form)
        run_id = run["id"]
        checkpoints = tmp_path / "runs" / f"run-{run_id}" / "results" / run["cell"] / "checkpoints"
        wait_until(lambda: list(checkpoints.glob("*")), "the first checkpoint")
        orphan = http_json(f"{url}/api/train/runs/{run_id}")["pgid"]
    finally:
        first.kill()  # no clean shutdown: the run's Snakemake is left running, orphaned
        first.wait(timeout=30)
    assert group_alive(orphan)

    second = start_server(tmp_path, port)
    try:
        wait_healthy(url, second)
        assert not group_alive(orphan)  # ended by the new server before it resumed the run
        final = wait_until(
            lambda: (
                (body := http_json(f"{url}/api/train/runs/{run_id}"))["state"]
                in ("done", "failed", "cancelled")
                and body
            ),
            "the run to end",
        )
        runs = http_json(f"{url}/api/train/runs")["runs"]
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    assert final["state"] == "done", final
    assert final["attempts"] == 2 and [r["id"] for r in runs] == [run_id]
    folder = tmp_path / "runs" / f"run-{run_id}"
    assert (folder / "results" / final["cell"] / "metrics.json").is_file()
    assert "--- resuming" in (folder / "snakemake.log").read_text()
    # The cell's own train job was run again from the workflow's resume.
    assert "resuming" in (folder / "results" / final["cell"] / "logs" / "train.log").read_text()


RENAMED = {"RBC": "erythrocyte", "WBC": "leukocyte", "Platelets": "thrombocyte"}


@pytest.mark.slow
def test_run_on_an_uploaded_zip_trains_on_its_classes(
    training_app: Any, voc_folder: Path, tmp_path: Path
) -> None:
    import shutil

    renamed = shutil.copytree(voc_folder, tmp_path / "mydata")
    for xml in (renamed / "Annotations").glob("*.xml"):
        text = xml.read_text()
        for old, new in RENAMED.items():
            text = text.replace(f"<name>{old}</name>", f"<name>{new}</name>")
        xml.write_text(text)
    client = training_app.test_client()
    run = submit_zip(client, zip_of(renamed)).get_json()
    assert run["state"] in ("queued", "running"), run
    final = wait_until(
        lambda: (
            (body := run_state(client, run["id"]))["state"] not in ("queued", "running") and body
        ),
        "the run to end",
    )
    assert final["state"] == "done", final
    models = client.get("/api/models").get_json()["models"]
    (cell,) = [m for m in models if m["id"] == run["cell"]]
    assert cell["dataset"] == f"upload-{run['id']}" and cell["eval_split"] == "test"
    image = encode(smear_image(IMG_SIZE, IMG_SIZE))
    body = post_image(client, image, model=run["cell"], confidence="0.001").get_json()
    assert body["detections"] and {d["class"] for d in body["detections"]} <= set(RENAMED.values())


@pytest.mark.slow
def test_failed_run_says_why(routes: tuple[Any, TrainingQueue]) -> None:
    client, queue = routes
    run = submit(client, FORM, BEARER).get_json()
    config_file = queue.runs_dir / f"run-{run['id']}" / "config.yaml"
    # Broken after it was queued (by hand, say): Snakemake refuses it when the run starts.
    config_file.write_text(config_file.read_text().replace("img_size: 64", "img_size: 33"))
    queue.start()
    final = wait_until(
        lambda: (
            (body := run_state(client, run["id"]))["state"] not in ("queued", "running") and body
        ),
        "the run to fail",
    )
    assert final["state"] == "failed" and final["test_url"] is None
    assert final["reason"].startswith("detbench error: "), final["reason"]
    assert "key img_size: 33 is not a multiple of 32" in final["reason"]
