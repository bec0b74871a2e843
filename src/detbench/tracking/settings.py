"""The ``tracking`` config section as typed settings, and whether its packages are installed.

Standard library only: the workflow reads this at parse time, where neither tool is imported.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError

EXTRA_HINT = "pip install -e '.[tracking]'"
# The local store's database, inside the configured folder.
LOCAL_DATABASE = "mlflow.db"
LOCAL_ARTIFACTS = "artifacts"


@dataclasses.dataclass(frozen=True)
class TrackingSettings:
    """What the track rule exports. ``mlflow`` as configured: a folder, a URL or a URI."""

    mlflow: str | None
    experiment: str
    tensorboard: bool
    log_weights: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrackingSettings | None:
        """The validated config's tracking settings, or None when the section is unset."""
        section = config.get("tracking")
        if section is None:
            return None
        experiment = section.get("experiment") or default_experiment(
            config["dataset"]["name"], config["platform"]
        )
        return cls(
            mlflow=section.get("mlflow"),
            experiment=experiment,
            tensorboard=bool(section.get("tensorboard", False)),
            log_weights=bool(section.get("log_weights", False)),
        )

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> TrackingSettings:
        return cls(**dict(params))

    def to_params(self) -> dict[str, Any]:
        """A plain mapping for the rule's params (a change reruns the track jobs)."""
        return dataclasses.asdict(self)

    @property
    def exports_anything(self) -> bool:
        return self.mlflow is not None or self.tensorboard

    def tracking_uri(self) -> str | None:
        return tracking_uri(self.mlflow) if self.mlflow is not None else None

    def local_store(self) -> Path | None:
        """The folder of a local store (a folder configured), else None (a URI)."""
        return None if self.mlflow is None or is_uri(self.mlflow) else Path(self.mlflow)

    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its artifacts: in the local store's folder, or the
        server's or database's own default (None)."""
        store = self.local_store()
        return (store / LOCAL_ARTIFACTS).resolve().as_uri() if store is not None else None

    def required_modules(self) -> list[str]:
        modules = []
        if self.mlflow is not None:
            modules.append("mlflow")
        if self.tensorboard:
            modules.append("tensorboard")
        return modules


def default_experiment(dataset: str, platform: str) -> str:
    return f"detbench/{dataset}/{platform}"


def is_uri(value: str) -> bool:
    """A tracking URI or server URL (``scheme://...``), as opposed to a local folder."""
    return "://" in value


def is_server(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def tracking_uri(value: str) -> str:
    """The MLflow tracking URI of a configured value. A folder is a local SQLite store in it:
    MLflow 3 keeps runs in a database by default and refuses its older file store unless told
    to, and SQLite needs no server, so an offline cluster can export too."""
    if is_uri(value):
        return value
    return "sqlite:///" + str((Path(value) / LOCAL_DATABASE).resolve())


def check_installed(settings: TrackingSettings, source: str) -> None:
    """Fail before any job when the config asks for a tool that is not installed (looked up
    without importing it)."""
    for module in settings.required_modules():
        if importlib.util.find_spec(module) is None:
            raise DetbenchError(
                f"{source}: key tracking: needs the Python package {module}, which is not "
                f"installed ({EXTRA_HINT})"
            )
