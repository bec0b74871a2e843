"""A track job: one cell into the tools the config names, and a receipt of what went where.

Each tool's module is imported only when the config asks for it, so a study exporting to
TensorBoard alone needs no mlflow.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detbench import atomic
from detbench.tracking.record import cell_export
from detbench.tracking.settings import TrackingSettings

log = logging.getLogger("detbench.tracking")


def export_tracked_cell(
    folder: str | Path,
    settings: TrackingSettings,
    receipt: str | Path,
    *,
    events: str | Path | None = None,
    prices: Mapping[str, float] | None = None,
    currency: str = "USD",
) -> dict[str, Any]:
    """Export the cell in ``folder``: its TensorBoard events to ``events`` (when given and
    configured), its MLflow run (when configured); write the receipt JSON and return it."""
    export = cell_export(folder, prices, currency)
    record: dict[str, Any] = {
        "cell": export.cell_id,
        "fingerprint": export.fingerprint(log_weights=settings.log_weights),
        "mlflow": None,
        "tensorboard": None,
    }
    if settings.tensorboard and events is not None:
        from detbench.tracking.tensorboard_export import write_events

        write_events(export, events)
        record["tensorboard"] = str(events)
        log.info("%s: TensorBoard events in %s", export.cell_id, events)
    if settings.mlflow is not None:
        from detbench.tracking.mlflow_export import export_cell

        run = export_cell(export, settings)
        record["mlflow"] = run.to_dict()
        log.info(
            "%s: MLflow run %s %s in experiment %r at %s",
            export.cell_id, run.run_id, run.action, run.experiment, run.tracking_uri,
        )
    atomic.write_json(receipt, record)
    return record
