"""Train one cell of the study: one model at one batch size for a number of epochs.

Read top to bottom: what a job is given (settings, outputs), ``train()`` (device, data, model,
resume, the epoch loop, the final outputs) and the run record. The parts live beside it: the
batches in ``data/loader.py``, the optimizer, EMA and schedule in ``optim.py``, one step and one
epoch in ``engine.py``, the resume checkpoints in ``checkpoint.py``. Every random draw is a
function of (seed, epoch), so a job killed and resumed ends with an uninterrupted run's weights.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from detbench import atomic
from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.data.loader import make_train_loader, steps_per_epoch
from detbench.evaluation.evaluate import SplitEvaluation, evaluate_model, save_final_evaluation
from detbench.evaluation.inference import save_trained_model
from detbench.models.flops import ModelFlops
from detbench.study.cells import (
    CHECKPOINTS,
    FINAL_EVALUATION,
    GPU_SAMPLES,
    HISTORY,
    RUN_RECORD,
    WEIGHTS,
)
from detbench.study.config import EvalSettings, TrainSettings
from detbench.telemetry import TrainMonitor, cell_provenance
from detbench.telemetry.provenance import cpu_model_name
from detbench.telemetry.resources import process_age_s
from detbench.training import distributed
from detbench.training.checkpoint import (
    CheckpointClock,
    load_latest_checkpoint,
    remove_checkpoints,
    save_checkpoint,
    sigterm_exits,
)
from detbench.training.device import Precision, select_device, select_precision
from detbench.training.engine import (
    EpochPlan,
    TrainingState,
    build_training_model,
    seed_everything,
    train_one_epoch,
)
from detbench.training.loss import YoloLoss
from detbench.training.target import ENERGY_SO_FAR, time_to_target
from detbench.training.timing import time_breakdown

log = logging.getLogger("detbench.training.train")

HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_box_loss",
    "train_obj_loss",
    "train_cls_loss",
    "train_total_loss",
    "epoch_seconds",
    "images_per_second",
    # Model FLOP/s achieved over the epoch (detbench.models.flops) and MFU, its fraction of the
    # GPU's datasheet peak (empty on a CPU or a GPU without a known peak).
    "model_tflops_per_s",
    "mfu",
    # Filled only after the epochs evaluated during training (train.eval_interval_epochs).
    "eval_map50",
    "eval_map50_95",
    "eval_total_loss",
    "eval_seconds",
)


@dataclasses.dataclass(frozen=True)
class InterimEvaluation:
    """Where and how to evaluate during training, every ``train.eval_interval_epochs``: the
    cell's evaluation split and settings, so the last point is the evaluate job's figure."""

    split: str
    settings: EvalSettings
    target_map50: float | None = None  # mAP@0.5 to record the time to (detbench.training.target)


@dataclasses.dataclass(frozen=True)
class TrainOutputs:
    weights: Path
    history: Path
    record: Path
    resume_dir: Path

    @classmethod
    def in_folder(cls, folder: Path) -> TrainOutputs:
        """A cell's outputs under ``folder``, named as rules/train.smk names them."""
        return cls(
            weights=folder / WEIGHTS,
            history=folder / HISTORY,
            record=folder / RUN_RECORD,
            resume_dir=folder / CHECKPOINTS,
        )


def train(
    settings: TrainSettings,
    manifest_path: str | Path,
    outputs: TrainOutputs,
    *,
    threads: int | None = None,
    weights_file: Path | None = None,
    platform_label: str | None = None,
    cell_config: Mapping[str, Any] | None = None,
    interim_evaluation: InterimEvaluation | None = None,
    repeat: int = 0,
    image_caches: Mapping[str, Path] | None = None,
    job: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Train one cell; write weights, history and the run record; return the record.

    ``weights_file``: the Darknet file to start from when ``settings.weights`` is not scratch.
    ``interim_evaluation``: the split and settings to evaluate on every
    ``settings.hyp.eval_interval_epochs`` epochs (not at all without it, or when that is 0).
    ``platform_label``, ``cell_config``: the platform and the cell's config for the record's
    provenance (see detbench.telemetry.cell_provenance for what stands in without them).
    ``repeat``: which run of the cell this is (recorded; the seed is in ``settings``).
    ``image_caches``: split -> disk image cache folder to read it from (else decoded in memory).
    ``job``: the job this runs in (detbench.cluster.job_record), recorded with its end time.
    """
    with sigterm_exits():
        job_start = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        device = distributed.rank_device(select_device(settings.hyp.device))
        precision = select_precision(device, settings.hyp.amp)
        monitor = TrainMonitor.start(device)  # time -v's figures and NVML samples, all segments
        manifest = DatasetManifest.load(manifest_path, image_caches)
        eval_dataset = _interim_dataset(manifest, settings, interim_evaluation)
        seed_everything(settings.seed)
        model = build_training_model(
            settings, len(manifest.class_names), weights_file, class_names=manifest.class_names
        ).to(device)
        model = distributed.prepare_model(model, settings.hyp.sync_bn, device)
        state = TrainingState.create(model, settings, precision, device)
        distributed.wrap_forward(state, device)  # DistributedDataParallel with ranks > 1
        fingerprint = settings.fingerprint()
        _resume_if_possible(state, monitor, outputs.resume_dir, fingerprint)
        loader = make_train_loader(
            manifest, settings, device, first_epoch=state.next_epoch, shard=distributed.shard()
        )
        loss_fn = YoloLoss(model, settings.hyp, ranks=distributed.world_size())
        plan = EpochPlan.create(settings, loss_fn, precision, device, steps_per_epoch(loader))
        flops = ModelFlops.of_training(model.layer_specs, settings.img_size, device, precision)
        log.info(
            "training %s b%d e%d on %s (%s), %d images, %d steps/epoch, %d loader workers",
            *(settings.model, settings.batch, settings.epochs, device, precision.name),
            *(len(loader.dataset), plan.steps_per_epoch, loader.num_workers),
        )
        checkpoints = CheckpointClock(settings.hyp.checkpoint_interval_s)
        startup_s = process_age_s()  # the first step starts now
        batches = iter(loader)
        final: SplitEvaluation | None = None  # the last epoch's, if evaluated: the final one
        for epoch in range(state.next_epoch, settings.epochs):
            row = train_one_epoch(state, batches, plan, epoch)
            row |= flops.utilisation(row["images_per_second"])
            state.train_seconds += row["epoch_seconds"]
            state.next_epoch = epoch + 1
            _log_epoch(row, settings)
            if eval_dataset is not None and interim_evaluation_due(settings, epoch):
                final = evaluate_during_training(
                    state, eval_dataset, manifest, interim_evaluation, settings, device
                )
                row |= final.history_columns()
                if interim_evaluation.target_map50 is not None:
                    row[ENERGY_SO_FAR] = monitor.energy_so_far_j()
            state.history.append(row)
            if state.next_epoch < settings.epochs and distributed.agree(checkpoints.due()):
                with checkpoints.timing():
                    if distributed.is_main():  # the one file every rank resumes from
                        checkpoint = state.checkpoint(fingerprint, monitor.checkpoint_state())
                        save_checkpoint(outputs.resume_dir, checkpoint)
                    distributed.barrier()

        # The other ranks end here; rank 0 writes every file, with where each rank ran.
        rank_entries = distributed.gather_ranks(device, monitor, loader, outputs.record)
        if not distributed.is_main():
            return {}

        _save_weights(outputs.weights, state, settings, manifest)
        write_history(outputs.history, state.history)
        record = _run_record(settings, manifest, loader, state, device, precision, fingerprint)
        record |= flops.record(record["images_per_second"]) | {"repeat": repeat}
        if interim_evaluation is not None and interim_evaluation.target_map50 is not None:
            record["target"] = time_to_target(state.history, interim_evaluation.target_map50)
        record["time_breakdown"] = time_breakdown(
            state.history, startup_s=startup_s, checkpoint_s=checkpoints.seconds
        )
        record["job_seconds_this_segment"] = time.perf_counter() - job_start
        record["checkpoints_written_this_segment"] = checkpoints.written
        record["checkpoint_seconds_this_segment"] = checkpoints.seconds
        record.update(monitor.finish(loader, outputs.record.with_name(GPU_SAMPLES)))
        rank_entries[0]["gpu"] = record["gpu"] if device.type == "cuda" else None
        record |= {"world_size": len(rank_entries), "ranks": rank_entries}
        if job is not None:
            record["job"] = {**job, "end_time": time.time()}
        record["provenance"] = cell_provenance(
            settings, device, monitor.gpu_info, platform_label, cell_config, outputs.record
        )
        atomic.write_json(outputs.record, record)
        if eval_dataset is not None:
            final = final or evaluate_during_training(
                state, eval_dataset, manifest, interim_evaluation, settings, device
            )
            save_final_evaluation(
                outputs.weights.with_name(FINAL_EVALUATION), final, eval_dataset, manifest,
                *(interim_evaluation.split, interim_evaluation.settings, settings.hyp, device),
                outputs.weights,
            )
        remove_checkpoints(outputs.resume_dir)
        return record


def _interim_dataset(
    manifest: DatasetManifest, settings: TrainSettings, interim: InterimEvaluation | None
) -> DetectionDataset | None:
    """The split evaluated during training and at its end (the final evaluation), built once
    for all of the job's evaluations; a missing split fails here, before the first epoch."""
    if interim is None or not distributed.is_main():  # rank 0 alone evaluates
        return None
    return DetectionDataset.of_split(manifest, interim.split, settings.img_size)


def _resume_if_possible(
    state: TrainingState, monitor: TrainMonitor, resume_dir: Path, fingerprint: str
) -> None:
    """Continue from the newest intact checkpoint written under the same settings, if any."""
    checkpoint = load_latest_checkpoint(resume_dir, fingerprint)
    if checkpoint is None:
        if distributed.is_main():
            remove_checkpoints(resume_dir)  # foreign or damaged: they only mislead
        return
    state.restore(checkpoint)
    monitor.resume(checkpoint.get("accounting"))
    log.info(
        "resuming %s after epoch %d (segment %d)", resume_dir, state.next_epoch, state.segments
    )


def _log_epoch(row: dict[str, Any], settings: TrainSettings) -> None:
    log.info(
        "epoch %d/%d  box %.4f  obj %.4f  cls %.4f  lr %.5f  %.1f s  %.1f img/s  %.3f TFLOP/s",
        *(row["epoch"], settings.epochs, row["train_box_loss"], row["train_obj_loss"]),
        *(row["train_cls_loss"], row["lr"], row["epoch_seconds"], row["images_per_second"]),
        row["model_tflops_per_s"],
    )


def _save_weights(
    path: Path, state: TrainingState, settings: TrainSettings, manifest: DatasetManifest
) -> None:
    """The cell's final weights: the EMA's where there is one."""
    final_model = state.ema.model if state.ema is not None else state.model
    metadata = {
        "model": settings.model,
        "class_names": list(manifest.class_names),
        "img_size": settings.img_size,
        "dataset": manifest.dataset,
        "epochs": settings.epochs,
        "batch": settings.batch,
        "ema": state.ema is not None,
    }
    save_trained_model(path, final_model, metadata)


def interim_evaluation_due(settings: TrainSettings, epoch: int) -> bool:
    """Whether to evaluate after 0-based ``epoch``: every eval_interval_epochs, and the last."""
    interval = settings.hyp.eval_interval_epochs
    return interval > 0 and ((epoch + 1) % interval == 0 or epoch + 1 == settings.epochs)


def evaluate_during_training(
    state: TrainingState,
    dataset: DetectionDataset,
    manifest: DatasetManifest,
    interim: InterimEvaluation,
    settings: TrainSettings,
    device: torch.device,
) -> SplitEvaluation:
    """The evaluate job's computation on the weights it would get now (the EMA's, if any).

    Leaves training exactly as it was: the evaluation's DataLoader draws a seed from torch's
    global generator, so that generator's state is put back afterwards.
    """
    model = state.ema.model if state.ema is not None else state.model
    with torch.random.fork_rng(devices=[]):
        evaluation = evaluate_model(
            model, dataset, manifest.class_names, interim.settings, settings.hyp, device
        )
    total_loss = sum(evaluation.losses.values())
    log.info(
        "  %s split: mAP@0.5 %.4f  mAP@0.5:0.95 %.4f  loss %.4f  (%.1f s)",
        interim.split,
        evaluation.metrics.map50,
        evaluation.metrics.map50_95,
        total_loss,
        evaluation.seconds,
    )
    return evaluation


def _run_record(
    settings: TrainSettings,
    manifest: DatasetManifest,
    loader: DataLoader,
    state: TrainingState,
    device: torch.device,
    precision: Precision,
    fingerprint: str,
) -> dict[str, Any]:
    num_images = len(loader.dataset)
    cuda = device.type == "cuda"
    device_name = torch.cuda.get_device_name(device) if cuda else cpu_model_name()
    seconds = state.train_seconds
    return {
        "model": settings.model,
        "batch": settings.batch,
        "epochs": settings.epochs,
        "img_size": settings.img_size,
        "seed": settings.seed,
        "weights": settings.weights,
        "dataset": manifest.dataset,
        "train_split": settings.train_split,
        "train_images": num_images,
        "device": str(device),
        "device_name": device_name,
        "precision": precision.name,
        "torch_threads": torch.get_num_threads(),
        "loader_workers": loader.num_workers,
        "train_seconds": seconds,
        "images_per_second": settings.epochs * num_images / seconds if seconds else None,
        "segments": state.segments,
        "settings_fingerprint": fingerprint,
        "hyperparameters": dataclasses.asdict(settings.hyp),
    }


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    """One row per epoch; a column an epoch has no value for (evaluation) is left empty."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in history:
        lines.append(",".join(_format_value(row.get(column)) for column in HISTORY_COLUMNS))
    atomic.write_text(path, "\n".join(lines) + "\n")


def _format_value(value: float | int | None) -> str:
    if value is None:
        return ""
    return str(value) if isinstance(value, int) else f"{value:.6g}"
