"""Rule track: one cell into MLflow and/or a TensorBoard events file (config key tracking)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.tracking.export import export_tracked_cell
from detbench.tracking.settings import TrackingSettings
from detbench.workflow.runner import run_rule


def main() -> None:
    settings = TrackingSettings.from_params(snakemake.params.tracking)
    cost = snakemake.params.cost
    export_tracked_cell(
        Path(snakemake.input.run).parent,
        settings,
        snakemake.output.receipt,
        events=snakemake.output.get("events"),
        prices=cost["prices"],
        currency=cost["currency"],
    )


run_rule(snakemake, main)
