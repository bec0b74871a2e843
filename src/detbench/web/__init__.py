"""The inference web app: upload an image, count blood cells or detect common objects.

``detbench serve`` (see :mod:`detbench.cli`) builds the app with :func:`create_app`. The names
below are imported on first use, so that the command line can read
:mod:`detbench.web.settings` without loading torch and Flask.

Beside the two fixed models (:mod:`~detbench.web.registry`), :mod:`~detbench.web.model_picker`
serves any evaluated cell by its id. Training from the page (``--allow-training``):
:mod:`~detbench.web.train_routes` (page, API, token), :mod:`~detbench.web.runs` (a run's
config, command and progress), :mod:`~detbench.web.training_queue` (the SQLite queue and the
scheduler) and :mod:`~detbench.web.uploads` (dataset zips). They import the study (config,
cells), data (VOC checks) and evaluation (model loading) rooms, never training: a run trains
through the workflow, started as a Snakemake process.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "create_app": "detbench.web.app",
    "WebConfig": "detbench.web.settings",
    "InferenceSettings": "detbench.web.settings",
    "ModelRegistry": "detbench.web.registry",
    "best_bccd_cell": "detbench.web.registry",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
