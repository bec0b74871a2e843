"""Rule train: train one cell {model, batch, epochs}."""

import sys
import time
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.training.allocator import restart_with_lean_allocator

# Before torch is imported: on the CPU, restart once with glibc settings that keep the job's
# peak memory near its live memory (see detbench.training.allocator).
restart_with_lean_allocator(str(snakemake.config["train"].get("device", "auto")))

from detbench.cluster.job_record import current_job_record, machine_memory_mb
from detbench.data.cache_plan import image_caches_of
from detbench.study.cells import repeat_from_suffix
from detbench.study.config import EvalSettings, train_settings_from_config, with_runtime_keys
from detbench.telemetry.resources import process_age_s
from detbench.training.launch import train_cell
from detbench.training.segment_log import keeping_segments, restore_segments
from detbench.training.train import InterimEvaluation, TrainOutputs
from detbench.workflow.runner import run_rule


def job_record() -> dict:
    """The Slurm job this runs in (scontrol), or locally what Snakemake gave the job (no
    mem_mb: the machine's memory)."""
    resources = snakemake.resources
    requested = {
        "cpus": snakemake.threads,
        "mem_mb": getattr(resources, "mem_mb", None) or machine_memory_mb(),
        "gpus": getattr(resources, "gpu", None),
        "runtime": getattr(resources, "runtime", None),
    }
    return current_job_record(requested, time.time() - (process_age_s() or 0.0))


def main() -> None:
    job = job_record()  # first: a Slurm job is asked about while it runs
    # The run's device and speed settings come from the workflow config, not the params:
    # changing them must not retrain the cell (see detbench.study.config.RUNTIME_TRAIN_KEYS).
    config = dict(snakemake.params.config)
    config["train"] = with_runtime_keys(config["train"], snakemake.config)
    target = snakemake.config.get("target_map50")
    if target is not None and not config["train"].get("eval_interval_epochs"):
        # A target is found by evaluating during training: every epoch unless set otherwise.
        config["train"] = {**config["train"], "eval_interval_epochs": 1}
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
    with keeping_segments(LOG, outputs.resume_dir):
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
                    target_map50=target,
                ),
                repeat=repeat_from_suffix(snakemake.wildcards.repeat_suffix),
                image_caches=image_caches_of(snakemake.input),
                job=job,
            ),
            ranks=settings.hyp.ranks,
            nodes=settings.hyp.nodes,
            threads=snakemake.threads,
            log_path=LOG,
        )


LOG = snakemake.log[0] if len(snakemake.log) else None
# Before logging starts: a resumed job's earlier segments head its log, which then appends.
restore_segments(LOG, Path(snakemake.params.resume_dir))
run_rule(snakemake, main, log_mode="a")
