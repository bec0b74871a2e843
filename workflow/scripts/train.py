"""Rule train: train one cell {model, batch, epochs}."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.training.allocator import restart_with_lean_allocator

# Before torch is imported: on the CPU, restart once with glibc settings that keep the job's
# peak memory near its live memory (see detbench.training.allocator).
restart_with_lean_allocator(str(snakemake.config["train"].get("device", "auto")))

from detbench.data.cache_plan import image_caches_of
from detbench.study.cells import repeat_from_suffix
from detbench.study.config import EvalSettings, train_settings_from_config, with_runtime_keys
from detbench.training.launch import train_cell
from detbench.training.train import InterimEvaluation, TrainOutputs
from detbench.workflow.runner import run_rule


def main() -> None:
    # The run's device and speed settings come from the workflow config, not the params:
    # changing them must not retrain the cell (see detbench.study.config.RUNTIME_TRAIN_KEYS).
    config = dict(snakemake.params.config)
    config["train"] = with_runtime_keys(config["train"], snakemake.config)
    settings = train_settings_from_config(
        config,
        model=snakemake.wildcards.model,
        batch=int(snakemake.wildcards.batch),
        epochs=int(snakemake.wildcards.epochs),
    )
    outputs = TrainOutputs(
        weights=Path(snakemake.output.weights),
        history=Path(snakemake.output.history),
        record=Path(snakemake.output.record),
        resume_dir=Path(snakemake.params.resume_dir),
    )
    manifest = Path(snakemake.input.dataset) / "manifest.json"
    weights_file = Path(snakemake.input.weights) if snakemake.input.get("weights") else None
    # One process, or train.ranks of them (detbench.training.launch), each threads / ranks threads.
    train_cell(
        dict(
            settings=settings,
            manifest_path=manifest,
            outputs=outputs,
            weights_file=weights_file,
            platform_label=snakemake.wildcards.platform,
            cell_config=config,
            # Read from the run's config like the runtime keys: evaluating during training
            # changes no weights, so its settings are no part of what retrains a cell.
            interim_evaluation=InterimEvaluation(
                split=snakemake.config["dataset"]["eval_split"],
                settings=EvalSettings.from_dict(snakemake.config["evaluate"]),
            ),
            repeat=repeat_from_suffix(snakemake.wildcards.repeat_suffix),
            image_caches=image_caches_of(snakemake.input),
        ),
        ranks=settings.hyp.ranks,
        nodes=settings.hyp.nodes,
        threads=snakemake.threads,
        log_path=snakemake.log[0] if len(snakemake.log) else None,
    )


run_rule(snakemake, main)
