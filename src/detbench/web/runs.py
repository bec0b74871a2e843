"""A training run started from the web page: its config, its Snakemake command, its progress.

A run is the workflow itself. Run ``N`` lives in ``<train dir>/run-N/`` (a study folder of its
own): ``config.yaml`` (the server's base config with the form's values, validated by the config
schema), ``snakemake.log`` (Snakemake's output), ``dataset/`` (an uploaded VOC zip, unpacked)
and ``results/`` (Snakemake's working directory's results; its ``datasets/`` and ``weights/``
are links to folders every run shares, so each is prepared once). Its one cell lands under the
platform label ``web-N``: ``results/web-N/{model}/b{batch}_e{epochs}/``, an ordinary cell that
the summary, the report, a resume and the model picker read as any other.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from detbench.atomic import write_text
from detbench.errors import DetbenchError
from detbench.study.cells import WEIGHTS, Cell
from detbench.study.config import validate_config

FORM_FIELDS = ("model", "weights", "batch", "epochs", "lr0", "img_size", "dataset")
# The config key a form field sets -> the field (how a schema error is named back to the form).
_KEY_TO_FIELD = (
    (re.compile(r"^models\.[^.]+\.weights"), "weights"),
    (re.compile(r"^models"), "model"),
    (re.compile(r"^batch_sizes"), "batch"),
    (re.compile(r"^train\.ranks"), "batch"),
    (re.compile(r"^epochs"), "epochs"),
    (re.compile(r"^train\.lr0"), "lr0"),
    (re.compile(r"^img_size"), "img_size"),
    (re.compile(r"^dataset"), "dataset"),
)
_SCHEMA_ERROR = re.compile(r"^form: key (?P<key>\S+): (?P<problem>.*)$")


class FieldError(DetbenchError):
    """A form value the config schema refuses; ``field`` is the form field's name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclasses.dataclass(frozen=True)
class RunRequest:
    """What the form asks for (strings as typed; the schema decides what they may be)."""

    model: str
    weights: str
    batch: str
    epochs: str
    lr0: str
    img_size: str
    dataset: str  # "configured" or "upload"

    @classmethod
    def from_form(cls, form: Mapping[str, str], defaults: Mapping[str, Any]) -> RunRequest:
        values = {}
        for name in FORM_FIELDS:
            raw = form.get(name)
            text = str(raw).strip() if raw is not None else ""
            values[name] = text if text else str(defaults.get(name, ""))
        return cls(**values)

    def to_json(self) -> dict[str, str]:
        return dataclasses.asdict(self)


def platform_label(run_id: int) -> str:
    return f"web-{run_id}"


def run_folder(runs_dir: Path, run_id: int) -> Path:
    return runs_dir / f"run-{run_id}"


def form_defaults(base: Mapping[str, Any]) -> dict[str, Any]:
    """The form's initial values: the base config's first model, batch and epochs."""
    model = next(iter(base["models"]))
    return {
        "model": model,
        "weights": base["models"][model].get("weights", "scratch"),
        "batch": base["batch_sizes"][0],
        "epochs": base["epochs"][0],
        "lr0": base.get("train", {}).get("lr0", 0.01),
        "img_size": base.get("img_size", 416),
        "dataset": "configured",
    }


def load_base_config(path: Path) -> dict[str, Any]:
    """The server's base config for runs (``--train-config``), validated."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DetbenchError(f"--train-config {path}: does not exist") from None
    config = yaml.safe_load(text) or {}
    validate_config(config, source=f"--train-config {path}")
    return config


def run_config(
    base: Mapping[str, Any],
    request: RunRequest,
    run_id: int,
    dataset: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config of run ``run_id``: the base config with the form's values (and the uploaded
    dataset's section, when there is one), validated; FieldError names the form field."""
    config: dict[str, Any] = yaml.safe_load(yaml.safe_dump(dict(base)))  # a deep copy
    config["platform"] = platform_label(run_id)
    config["models"] = {request.model: {"weights": request.weights}}
    config["batch_sizes"] = [request.batch]
    config["epochs"] = [request.epochs]
    config["img_size"] = request.img_size
    config["repeats"] = 1
    config.setdefault("train", {})["lr0"] = request.lr0
    if request.dataset not in ("configured", "upload"):
        raise FieldError("dataset", f"'configured' or 'upload', not {request.dataset[:40]!r}")
    if dataset is not None:
        config["dataset"] = dict(dataset)
    try:
        return validate_config(config, source="form")
    except DetbenchError as error:
        raise _field_error(str(error), request) from None


def _field_error(message: str, request: RunRequest) -> FieldError:
    match = _SCHEMA_ERROR.match(message)
    if match is None:
        return FieldError("form", message)
    key, problem = match["key"], match["problem"]
    if key == "(top level)" and request.model in problem:
        return FieldError("model", problem)
    for pattern, field in _KEY_TO_FIELD:
        if pattern.match(key):
            return FieldError(field, problem)
    return FieldError("form", f"key {key}: {problem}")


def run_cell(config: Mapping[str, Any]) -> Cell:
    """The one cell a run's config trains."""
    model = next(iter(config["models"]))
    return Cell(config["platform"], model, config["batch_sizes"][0], config["epochs"][0])


def write_run_config(folder: Path, config: Mapping[str, Any]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.yaml"
    write_text(path, yaml.safe_dump(dict(config), sort_keys=False))
    return path


@dataclasses.dataclass(frozen=True)
class WorkflowCommand:
    """How the server runs Snakemake for a run."""

    snakemake: Path
    snakefile: Path
    profile: Path
    cores: int | None = None

    def args(self, folder: Path, config: Mapping[str, Any], *, unlock: bool = False) -> list[str]:
        cell = run_cell(config)
        target = f"{cell.file('metrics.json', 'results')}"
        command = [
            str(self.snakemake),
            "--snakefile", str(self.snakefile.resolve()),
            "--directory", str(folder.resolve()),
            "--configfile", str((folder / "config.yaml").resolve()),
            "--profile", str(self.profile.resolve()),
            # A profile may set a platform of its own (profiles/local does): the run's wins.
            "--config", f"platform={config['platform']}",
        ]  # fmt: skip
        if self.cores is not None:
            command += ["--cores", str(self.cores)]
        return command + (["--unlock"] if unlock else [target])


# --------------------------------------------------------------------------------------------
# Progress, read from the run's logs
# --------------------------------------------------------------------------------------------

_EPOCH = re.compile(
    r"epoch (?P<epoch>\d+)/(?P<epochs>\d+)\s+box (?P<box>\S+)\s+obj (?P<obj>\S+)\s+"
    r"cls (?P<cls>\S+).*?\s(?P<seconds>[\d.]+) s\s"
)
_EVAL = re.compile(r"mAP@0\.5 (?P<map50>[\d.]+)\s+mAP@0\.5:0\.95 (?P<map50_95>[\d.]+)")
_RULE = re.compile(r"^\s*(?:local)?rule (?P<rule>\w+):")
LOG_TAIL_LINES = 15


def _tail(path: Path, lines: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def failure_line(folder: Path, config: Mapping[str, Any], returncode: int | None) -> str:
    """The line that says why a run failed: a detbench error, else Snakemake's error, else
    the exit status."""
    cell = run_cell(config)
    texts = [_read(folder / "snakemake.log")]
    texts += [_read(cell.folder(folder / "results") / "logs" / f"{r}.log") for r in ("train",)]
    for text in texts:
        found = [line for line in text.splitlines() if "detbench error:" in line]
        if found:
            return found[-1].strip()
    for text in texts:
        found = [
            line.strip()
            for line in text.splitlines()
            if re.search(r"\b\w*(Error|Exception)\b", line) and "Logging" not in line
        ]
        if found:
            return found[-1]
    return f"snakemake exited with status {returncode}"


def progress(folder: Path, config: Mapping[str, Any]) -> dict[str, Any]:
    """What the page shows while a run trains: stage, epoch / epochs, the last losses, the
    interim mAP, an ETA, and the last lines of Snakemake's and the train job's logs."""
    cell = run_cell(config)
    cell_dir = cell.folder(folder / "results")
    train_log = _read(cell_dir / "logs" / "train.log")
    epochs = [m for m in _EPOCH.finditer(train_log)]
    evaluations = list(_EVAL.finditer(train_log))
    snakemake_log = _read(folder / "snakemake.log")
    rules = [m["rule"] for line in snakemake_log.splitlines() if (m := _RULE.match(line))]
    body: dict[str, Any] = {
        "stage": rules[-1] if rules else None,
        "epoch": 0,
        "epochs": cell.epochs,
        "losses": None,
        "interim_map50": None,
        "eta_s": None,
        "log_tail": _tail(folder / "snakemake.log", LOG_TAIL_LINES),
        "train_log_tail": _tail(cell_dir / "logs" / "train.log", LOG_TAIL_LINES),
        "weights_ready": (cell_dir / WEIGHTS).is_file(),
    }
    if epochs:
        last = epochs[-1]
        done = int(last["epoch"])
        seconds = [float(m["seconds"]) for m in epochs]
        body["epoch"] = done
        body["losses"] = {k: float(last[k]) for k in ("box", "obj", "cls")}
        body["eta_s"] = round(sum(seconds) / len(seconds) * (cell.epochs - done), 1)
    if evaluations:
        body["interim_map50"] = float(evaluations[-1]["map50"])
    return body
