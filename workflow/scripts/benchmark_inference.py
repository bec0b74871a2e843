"""Rule benchmark_inference: one cell served by every backend available (detbench.deploy.stage)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.deploy.stage import DeploySettings, benchmark_cell
from detbench.study.cells import cell_of
from detbench.study.config import EvalSettings
from detbench.workflow.runner import run_rule


def main() -> None:
    config = snakemake.params.config
    benchmark_cell(
        snakemake.input.weights,
        snakemake.input.model,
        Path(snakemake.input.dataset) / "manifest.json",
        config["dataset"]["eval_split"],
        DeploySettings.from_dict(config["deploy"]),
        EvalSettings.from_dict(config["evaluate"]),
        snakemake.output[0],
        cell=cell_of(snakemake.output[0]),
        threads=snakemake.threads,
        device=snakemake.config["train"].get("device", "auto"),
    )


run_rule(snakemake, main)
