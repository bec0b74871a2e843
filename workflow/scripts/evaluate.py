"""Rule evaluate: metrics of one trained cell on the held-out split."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.cells import cell_of
from detbench.config import EvalSettings, TrainHyperparameters, with_runtime_keys
from detbench.evaluate import evaluate_cell
from detbench.workflow import run_rule


def main() -> None:
    config = snakemake.params.config
    evaluate_cell(
        snakemake.input.weights,
        Path(snakemake.input.dataset) / "manifest.json",
        config["dataset"]["eval_split"],
        EvalSettings.from_dict(config["evaluate"]),
        # Device and speed settings from the workflow config: see RUNTIME_TRAIN_KEYS.
        TrainHyperparameters.from_dict(with_runtime_keys(config["train"], snakemake.config)),
        snakemake.output.metrics,
        snakemake.output.detections,
        cell=cell_of(snakemake.output.metrics),
        threads=snakemake.threads,
    )


run_rule(snakemake, main)
