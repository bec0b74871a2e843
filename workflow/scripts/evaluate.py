"""Rule evaluate: metrics of one trained cell on the held-out split."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.data.cache_plan import image_caches_of
from detbench.evaluation import final_evaluation
from detbench.study.cells import FINAL_EVALUATION, cell_of
from detbench.study.config import EvalSettings, TrainHyperparameters, with_runtime_keys
from detbench.workflow.runner import run_rule


def main() -> None:
    config = snakemake.params.config
    split = config["dataset"]["eval_split"]
    settings = EvalSettings.from_dict(config["evaluate"])
    # Device and speed settings from the workflow config: see RUNTIME_TRAIN_KEYS.
    hyp = TrainHyperparameters.from_dict(with_runtime_keys(config["train"], snakemake.config))
    manifest = Path(snakemake.input.dataset) / "manifest.json"
    weights = Path(snakemake.input.weights)
    key = final_evaluation.evaluation_key(split, settings, hyp, manifest, weights)
    output, cell = snakemake.output, cell_of(snakemake.output.metrics)
    saved = weights.with_name(FINAL_EVALUATION)
    if final_evaluation.reuse(saved, key, output.metrics, output.detections, cell):
        return
    # Imported only here: torch and the model are what reusing the train job's result saves.
    from detbench.evaluation.evaluate import evaluate_cell

    evaluate_cell(
        weights, manifest, split, settings, hyp, output.metrics, output.detections,
        cell=cell, threads=snakemake.threads, image_caches=image_caches_of(snakemake.input),
    )


run_rule(snakemake, main)
