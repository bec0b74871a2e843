"""The inference web app: upload an image, count blood cells or detect common objects.

``detbench serve`` (see :mod:`detbench.cli`) builds the app with :func:`create_app`. The names
below are imported on first use, so that the command line can read
:mod:`detbench.web.settings` without loading torch and Flask.
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
