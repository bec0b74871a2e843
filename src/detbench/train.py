"""Train one cell of the study: one model at one batch size for a number of epochs.

Read top to bottom: settings, the data, the model and optimizer, the learning-rate schedule,
the epoch loop, and the checkpoint that makes a killed job resumable.

A run is resumable: at the end of an epoch, at most once per ``checkpoint_interval_s``, the full
training state is written atomically to ``resume_dir`` (outside the Snakemake rule's declared
outputs, which Snakemake deletes before a rerun). A restarted job continues after the last
checkpointed epoch and, because every random draw is a function of (seed, epoch), ends with the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from detbench import atomic
from detbench.config import EvalSettings, TrainHyperparameters, without_runtime_keys
from detbench.data.augment import AugmentSettings
from detbench.data.dataset import Batch, DatasetManifest, DetectionDataset, collate
from detbench.device import Precision, select_device, select_precision, synchronize
from detbench.errors import DetbenchError
from detbench.evaluate import evaluate_model
from detbench.inference import save_trained_model
from detbench.loss import LossItems, YoloLoss
from detbench.models import build_model
from detbench.optim import EagerSGD
from detbench.profiling import GPU_SAMPLES_CSV, TrainMonitor, cell_provenance

log = logging.getLogger("detbench.train")

HISTORY_COLUMNS = (
    "epoch",
    "lr",
    "train_box_loss",
    "train_obj_loss",
    "train_cls_loss",
    "train_total_loss",
    "epoch_seconds",
    "images_per_second",
    # Filled only after the epochs evaluated during training (train.eval_interval_epochs).
    "eval_map50",
    "eval_map50_95",
    "eval_total_loss",
    "eval_seconds",
)
CHECKPOINTS_KEPT = 2


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything that determines one cell's result."""

    model: str
    batch_size: int
    epochs: int
    img_size: int = 416
    seed: int = 0
    weights: str = "scratch"
    train_split: str = "train"
    hyp: TrainHyperparameters = dataclasses.field(default_factory=TrainHyperparameters)

    def fingerprint(self) -> str:
        """Identifies settings a checkpoint may be resumed under (how it runs excluded)."""
        values = dataclasses.asdict(self)
        values["hyp"] = without_runtime_keys(values["hyp"])
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class InterimEvaluation:
    """Where and how to evaluate during training, every ``train.eval_interval_epochs``: the
    cell's evaluation split and settings, so the last point is the evaluate job's figure."""

    split: str
    settings: EvalSettings


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
            weights=folder / "weights.pt",
            history=folder / "history.csv",
            record=folder / "run.json",
            resume_dir=folder / "checkpoints",
        )


# --------------------------------------------------------------------------- data


class EpochBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of (epoch, index) keys for ``epochs`` epochs from ``first_epoch`` on, each epoch
    in its own seeded random order; a batch never spans two epochs (an epoch's last batch may
    be smaller).

    One sampler for all of a job's epochs, so that one DataLoader iterator runs through them:
    the workers start on the next epoch while the current one ends, instead of the prefetch
    starting empty at every epoch (one worker building a whole batch first: ~0.17 s per epoch
    at batch 32 on an H100 node). The epoch travels with every index, so the workers augment
    each sample the same way whatever their number.
    """

    def __init__(
        self, size: int, batch_size: int, seed: int, *, first_epoch: int, epochs: int
    ) -> None:
        self.size = size
        self.batch_size = batch_size
        self.seed = seed
        self.first_epoch = first_epoch
        self.epochs = epochs

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.size / self.batch_size)

    def epoch_order(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.size, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for epoch in range(self.first_epoch, self.first_epoch + self.epochs):
            order = self.epoch_order(epoch)
            for start in range(0, self.size, self.batch_size):
                yield [(epoch, index) for index in order[start : start + self.batch_size]]

    def __len__(self) -> int:
        return self.epochs * self.steps_per_epoch


class TrainingDataset(torch.utils.data.Dataset):
    """Adapts DetectionDataset to (epoch, index) keys."""

    def __init__(self, dataset: DetectionDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):  # type: ignore[no-untyped-def]
        epoch, index = key
        return self.dataset.sample(index, epoch=epoch)


def resolve_workers(workers: int | str, device: torch.device) -> int:
    if workers != "auto":
        return int(workers)
    if device.type != "cuda":
        # On a CPU the model step dwarfs loading (cached images, cheap augmentation), and worker
        # processes would compete with it for the same cores.
        return 0
    # The CPUs this process may use (a Slurm job's allocation), not the whole node's.
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return min(8, usable or 1)


def make_train_loader(
    manifest: DatasetManifest,
    settings: TrainSettings,
    device: torch.device,
    *,
    first_epoch: int = 0,
    epochs: int | None = None,
) -> DataLoader:
    """The training batches of epochs ``first_epoch`` .. ``first_epoch + epochs - 1`` (default:
    up to ``settings.epochs``), in order, from one iterator (see EpochBatchSampler)."""
    hyp = settings.hyp
    augment = AugmentSettings(
        hsv_h=hyp.hsv_h,
        hsv_s=hyp.hsv_s,
        hsv_v=hyp.hsv_v,
        flip_lr=hyp.flip_lr,
        flip_ud=hyp.flip_ud,
        translate=hyp.translate,
        scale=hyp.scale,
        mosaic=hyp.mosaic,
    )
    records = manifest.records(settings.train_split)
    if not records:
        raise DetbenchError(f"{manifest.path}: split {settings.train_split!r} has no images")
    dataset = DetectionDataset(records, settings.img_size, augment=augment, seed=settings.seed)
    workers = resolve_workers(hyp.workers, device)
    if workers > 0:
        # OpenCV's thread pool off before the workers fork, as YOLOv5 does: otherwise every
        # worker runs a thread per core (8 x 16 on a 16-core node), all fighting for the same
        # cores. Measured on an H100 node, 8 workers, batch 32: 1278 -> 1528 images/s
        # (benchmarks/data_pipeline.py). Set in the parent: calling it in a forked worker
        # whose parent had used the pool hung here.
        cv2.setNumThreads(0)
    sampler = EpochBatchSampler(
        len(dataset),
        settings.batch_size,
        settings.seed,
        first_epoch=first_epoch,
        epochs=settings.epochs - first_epoch if epochs is None else epochs,
    )
    return DataLoader(
        TrainingDataset(dataset),
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        pin_memory=device.type == "cuda",
        # Keeps the iterator on the loader, where shutdown_loader_workers finds the workers.
        persistent_workers=workers > 0,
    )


def steps_per_epoch(loader: DataLoader) -> int:
    return loader.batch_sampler.steps_per_epoch  # type: ignore[union-attr]


# --------------------------------------------------------------------------- model


def param_groups(
    model: nn.Module,
) -> tuple[list[nn.Parameter], list[nn.Parameter], list[nn.Parameter]]:
    """(batch-norm weights, conv weights, biases): only conv weights get weight decay."""
    bn_weights, conv_weights, biases = [], [], []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            bn_weights.append(module.weight)
            biases.append(module.bias)
        elif isinstance(module, nn.Conv2d):
            conv_weights.append(module.weight)
            if module.bias is not None:
                biases.append(module.bias)
    return bn_weights, conv_weights, biases


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.SGD:
    hyp = settings.hyp
    bn_weights, conv_weights, biases = param_groups(model)
    # The loss is summed over the batch, so gradients grow with the batch size; decay scales
    # with it to keep the same balance (the 2020 recipe's nominal batch is 64).
    weight_decay = hyp.weight_decay * settings.batch_size / 64
    # torch.optim.SGD's arithmetic without its import of torch._dynamo (see detbench.optim).
    optimizer = EagerSGD(
        [
            {"params": bn_weights, "weight_decay": 0.0, "name": "bn_weights"},
            {"params": conv_weights, "weight_decay": weight_decay, "name": "weights"},
            {"params": biases, "weight_decay": 0.0, "name": "biases"},
        ],
        lr=hyp.lr0,
        momentum=hyp.momentum,
        nesterov=hyp.nesterov,
    )
    for group in optimizer.param_groups:
        group["initial_lr"] = hyp.lr0
    return optimizer


class ModelEMA:
    """Exponential moving average of the weights (parameters and BN statistics)."""

    def __init__(self, model: nn.Module, decay: float, ramp_updates: float) -> None:
        self.model = copy.deepcopy(model).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.ramp_updates = ramp_updates
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = self.decay * (1 - math.exp(-self.updates / self.ramp_updates))
        source = model.state_dict()
        averaged, averaged_sources, copied, copied_sources = [], [], [], []
        for name, value in self.model.state_dict().items():
            if value.dtype.is_floating_point:
                averaged.append(value)
                averaged_sources.append(source[name].detach())
            else:
                copied.append(value)
                copied_sources.append(source[name])
        # One multi-tensor kernel per operation instead of two launches per tensor (yolov3:
        # ~370 tensors, a GPU step's worth of launch overhead); the arithmetic is the same.
        torch._foreach_mul_(averaged, decay)
        torch._foreach_add_(averaged, averaged_sources, alpha=1 - decay)
        if copied:
            torch._foreach_copy_(copied, copied_sources)


def cosine_factor(epoch: int, epochs: int, lrf: float) -> float:
    """Cosine decay from 1 at epoch 0 towards lrf at the last epoch."""
    return ((1 + math.cos(math.pi * epoch / epochs)) / 2) * (1 - lrf) + lrf


def set_learning_rate(
    optimizer: torch.optim.SGD,
    hyp: TrainHyperparameters,
    step: int,
    warmup_steps: int,
    epoch: int,
    epochs: int,
) -> None:
    """Warm-up (linear, per step) into the per-epoch cosine schedule."""
    target = hyp.lr0 * cosine_factor(epoch, epochs, hyp.lrf)
    for group in optimizer.param_groups:
        if step < warmup_steps:
            start = hyp.warmup_bias_lr if group["name"] == "biases" else 0.0
            fraction = step / warmup_steps
            group["lr"] = start + (target - start) * fraction
            group["momentum"] = (
                hyp.warmup_momentum + (hyp.momentum - hyp.warmup_momentum) * fraction
            )
        else:
            group["lr"] = target
            group["momentum"] = hyp.momentum


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_path(resume_dir: Path, epoch: int) -> Path:
    return resume_dir / f"epoch-{epoch:05d}.pt"


class CheckpointClock:
    """When to write a resume checkpoint: once ``interval_s`` seconds have passed since the
    last one (or the job's start); every epoch when 0. Also adds up what writing them cost."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.written = 0
        self.seconds = 0.0

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.interval_s

    @contextlib.contextmanager
    def timing(self) -> Iterator[None]:
        start = time.monotonic()
        yield
        self.last = time.monotonic()
        self.written += 1
        self.seconds += self.last - start


def save_checkpoint(resume_dir: Path, state: dict[str, Any]) -> None:
    """Write the state atomically, with its sha256 beside it, and keep the last two."""
    path = _checkpoint_path(resume_dir, state["epoch"])
    atomic.torch_save(state, path)
    atomic.write_text(path.with_suffix(".sha256"), _sha256(path) + "\n")
    checkpoints = sorted(resume_dir.glob("epoch-*.pt"))
    for old in checkpoints[:-CHECKPOINTS_KEPT]:
        old.unlink(missing_ok=True)
        old.with_suffix(".sha256").unlink(missing_ok=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_latest_checkpoint(resume_dir: Path, fingerprint: str) -> dict[str, Any] | None:
    """The newest intact checkpoint written under the same settings, if any.

    A checkpoint whose bytes do not match its recorded sha256, or that does not load, is
    reported and skipped in favour of the one before it.
    """
    for path in sorted(resume_dir.glob("epoch-*.pt"), reverse=True):
        recorded = path.with_suffix(".sha256")
        try:
            if not recorded.exists():
                log.warning("checkpoint %s has no sha256 recorded; trying an older one", path)
                continue
            if recorded.read_text().strip() != _sha256(path):
                log.warning("checkpoint %s is damaged (sha256 mismatch); trying an older one", path)
                continue
            state = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # a damaged file may fail in many ways
            log.warning("checkpoint %s does not load (%s); trying an older one", path, exc)
            continue
        if state.get("fingerprint") != fingerprint:
            log.warning("checkpoint %s was written under other settings; starting afresh", path)
            return None
        return state
    return None


def _rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


# --------------------------------------------------------------------------- the loop


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_training_model(
    settings: TrainSettings, num_classes: int, weights_file: Path | None = None
) -> nn.Module:
    """The model with its starting weights: random (seeded), or Darknet's where configured."""
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, num_classes=num_classes)
    model.initialize_biases()
    if settings.weights != "scratch":
        from detbench.models.pretrained import load_pretrained

        if weights_file is None:
            raise DetbenchError(
                f"models.{settings.model}.weights: {settings.weights!r} needs a Darknet file"
            )
        load_pretrained(model, settings.weights, weights_file)
    return model


def _progress(total: int, epoch: int, epochs: int) -> Any:
    from tqdm import tqdm

    # A bar on a terminal; in a Snakemake log file the per-epoch lines say the same.
    return tqdm(
        total=total,
        desc=f"epoch {epoch + 1}/{epochs}",
        disable=not sys.stderr.isatty(),
        leave=False,
        unit="batch",
    )


@dataclasses.dataclass
class TrainingState:
    """What a checkpoint restores: the trainable pieces and the progress so far."""

    model: nn.Module
    optimizer: torch.optim.SGD
    scaler: torch.amp.GradScaler
    ema: ModelEMA | None
    next_epoch: int = 0
    history: list[dict[str, float]] = dataclasses.field(default_factory=list)
    train_seconds: float = 0.0
    segments: int = 1
    channels_last: bool = False  # feed images in NHWC, as the model's weights are laid out
    forward: Callable[[torch.Tensor], list[torch.Tensor]] | None = None  # torch.compile'd model

    @classmethod
    def create(
        cls,
        model: nn.Module,
        settings: TrainSettings,
        precision: Precision,
        device: torch.device,
    ) -> TrainingState:
        """The optimizer, scaler and EMA for ``model`` (already on ``device``), with the
        device's speed settings applied."""
        hyp = settings.hyp
        channels_last = hyp.channels_last
        if channels_last:
            model.to(memory_format=torch.channels_last)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = hyp.cudnn_benchmark
        return cls(
            model=model,
            optimizer=make_optimizer(model, settings),
            scaler=torch.amp.GradScaler("cuda", enabled=precision.use_scaler),
            ema=ModelEMA(model, hyp.ema_decay, hyp.ema_ramp_updates) if hyp.ema else None,
            channels_last=channels_last,
            # Compiling the forward only keeps the module (and its state_dict keys) untouched.
            forward=torch.compile(model) if hyp.compile else None,
        )

    def checkpoint(self, fingerprint: str, accounting: dict[str, Any]) -> dict[str, Any]:
        return {
            "epoch": self.next_epoch,
            "fingerprint": fingerprint,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.model.state_dict() if self.ema is not None else None,
            "ema_updates": self.ema.updates if self.ema is not None else 0,
            "rng": _rng_states(),
            "history": self.history,
            "train_seconds": self.train_seconds,
            "segments": self.segments,
            "accounting": accounting,
        }

    def restore(self, checkpoint: dict[str, Any]) -> None:
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scaler.load_state_dict(checkpoint["scaler"])
        if self.ema is not None:
            self.ema.model.load_state_dict(checkpoint["ema"])
            self.ema.updates = checkpoint["ema_updates"]
        _restore_rng_states(checkpoint["rng"])
        self.next_epoch = checkpoint["epoch"]
        self.history = checkpoint["history"]
        self.train_seconds = checkpoint["train_seconds"]
        self.segments = checkpoint["segments"] + 1


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
) -> dict[str, Any]:
    """Train one cell; write weights, history and the run record; return the record.

    ``weights_file``: the Darknet file to start from when ``settings.weights`` is not scratch.
    ``interim_evaluation``: the split and settings to evaluate on every
    ``settings.hyp.eval_interval_epochs`` epochs (not at all without it, or when that is 0).
    ``platform_label``, ``cell_config``: the platform and the cell's config for the record's
    provenance (see detbench.profiling.cell_provenance for what stands in without them).
    """
    with _sigterm_exits():
        job_start = time.perf_counter()
        if threads:
            torch.set_num_threads(threads)
        device = select_device(settings.hyp.device)
        precision = select_precision(device, settings.hyp.amp)
        monitor = TrainMonitor.start(device)  # time -v's figures and NVML samples, all segments
        manifest = DatasetManifest.load(manifest_path)
        # Built once for all of the job's interim evaluations; a missing split fails here,
        # before the first epoch.
        eval_dataset = (
            DetectionDataset(manifest.records(interim_evaluation.split), settings.img_size)
            if interim_evaluation is not None and settings.hyp.eval_interval_epochs > 0
            else None
        )
        seed_everything(settings.seed)
        model = build_training_model(settings, len(manifest.class_names), weights_file).to(device)
        state = TrainingState.create(model, settings, precision, device)
        loss_fn = YoloLoss(model, settings.hyp)
        fingerprint = settings.fingerprint()
        checkpoint = load_latest_checkpoint(outputs.resume_dir, fingerprint)
        if checkpoint is not None:
            state.restore(checkpoint)
            monitor.resume(checkpoint.get("accounting"))
            log.info(
                "resuming %s after epoch %d (segment %d)",
                outputs.resume_dir,
                state.next_epoch,
                state.segments,
            )
        else:
            _remove_checkpoints(outputs.resume_dir)  # foreign or damaged: they only mislead
        loader = make_train_loader(manifest, settings, device, first_epoch=state.next_epoch)
        epoch_steps = steps_per_epoch(loader)
        warmup_steps = max(
            round(settings.hyp.warmup_epochs * epoch_steps),
            settings.hyp.warmup_min_iterations,
        )

        log.info(
            "training %s b%d e%d on %s (%s), %d images, %d steps/epoch, %d loader workers",
            settings.model,
            settings.batch_size,
            settings.epochs,
            device,
            precision.name,
            len(loader.dataset),
            epoch_steps,
            loader.num_workers,
        )
        checkpoints = CheckpointClock(settings.hyp.checkpoint_interval_s)
        batches = iter(loader)
        for epoch in range(state.next_epoch, settings.epochs):
            row = train_one_epoch(
                state, batches, epoch_steps, loss_fn, settings, precision, device, epoch,
                warmup_steps,
            )
            state.train_seconds += row["epoch_seconds"]
            state.next_epoch = epoch + 1
            log.info(
                "epoch %d/%d  box %.4f  obj %.4f  cls %.4f  lr %.5f  %.1f s  %.1f img/s",
                epoch + 1,
                settings.epochs,
                row["train_box_loss"],
                row["train_obj_loss"],
                row["train_cls_loss"],
                row["lr"],
                row["epoch_seconds"],
                row["images_per_second"],
            )
            if eval_dataset is not None and interim_evaluation_due(settings, epoch):
                row |= evaluate_during_training(
                    state, eval_dataset, manifest, interim_evaluation, settings, device
                )
            state.history.append(row)
            if state.next_epoch < settings.epochs and checkpoints.due():
                with checkpoints.timing():
                    save_checkpoint(
                        outputs.resume_dir,
                        state.checkpoint(fingerprint, monitor.checkpoint_state()),
                    )

        final_model = state.ema.model if state.ema is not None else state.model
        save_trained_model(
            outputs.weights,
            final_model,
            {
                "model": settings.model,
                "class_names": list(manifest.class_names),
                "img_size": settings.img_size,
                "dataset": manifest.dataset,
                "epochs": settings.epochs,
                "batch_size": settings.batch_size,
                "ema": state.ema is not None,
            },
        )
        write_history(outputs.history, state.history)
        record = _run_record(settings, manifest, loader, state, device, precision, fingerprint)
        record["job_seconds_this_segment"] = time.perf_counter() - job_start
        record["checkpoints_written_this_segment"] = checkpoints.written
        record["checkpoint_seconds_this_segment"] = checkpoints.seconds
        record.update(monitor.finish(loader, outputs.record.with_name(GPU_SAMPLES_CSV)))
        record["provenance"] = cell_provenance(
            settings, device, monitor.gpu_info, platform_label, cell_config, outputs.record
        )
        atomic.write_json(outputs.record, record)
        _remove_checkpoints(outputs.resume_dir)
        return record


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
) -> dict[str, float]:
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
    return {
        "eval_map50": evaluation.metrics.map50,
        "eval_map50_95": evaluation.metrics.map50_95,
        "eval_total_loss": total_loss,
        "eval_seconds": evaluation.seconds,
    }


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
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = platform.processor() or platform.machine()
    seconds = state.train_seconds
    return {
        "model": settings.model,
        "batch_size": settings.batch_size,
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


class NonFiniteLoss(ArithmeticError):
    def __init__(self, value: float) -> None:
        super().__init__(f"loss became {value}")
        self.value = value


def train_step(
    state: TrainingState,
    batch: Batch,
    loss_fn: YoloLoss,
    precision: Precision,
    device: torch.device,
) -> LossItems:
    """One optimizer step: forward under autocast, loss, scaled backward, optimizer step, EMA.

    The one place a step is defined: training, the profiler and the throughput benchmark all
    take it. Raises NonFiniteLoss, before any weight changes, when the loss is NaN or infinite.
    """
    images = batch.images.to(device, non_blocking=True).float().div_(255)
    if state.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=precision.dtype, enabled=precision.dtype is not None):
        raw = (state.forward if state.forward is not None else state.model)(images)
    loss, items = loss_fn(raw, batch.targets)
    if not math.isfinite(items.total):
        raise NonFiniteLoss(items.total)
    state.optimizer.zero_grad(set_to_none=True)
    state.scaler.scale(loss).backward()
    state.scaler.step(state.optimizer)
    state.scaler.update()
    if state.ema is not None:
        state.ema.update(state.model)
    return items


def train_one_epoch(
    state: TrainingState,
    batches: Iterator[Batch],
    steps_per_epoch: int,
    loss_fn: YoloLoss,
    settings: TrainSettings,
    precision: Precision,
    device: torch.device,
    epoch: int,
    warmup_steps: int,
) -> dict[str, float]:
    """One epoch: the next ``steps_per_epoch`` batches of ``batches`` (all of them this epoch's:
    see EpochBatchSampler)."""
    state.model.train()
    optimizer = state.optimizer
    sums = np.zeros(3)
    images_seen = 0
    start = time.perf_counter()
    with _progress(steps_per_epoch, epoch, settings.epochs) as bar:
        for step_in_epoch in range(steps_per_epoch):
            batch = next(batches)
            step = epoch * steps_per_epoch + step_in_epoch
            set_learning_rate(optimizer, settings.hyp, step, warmup_steps, epoch, settings.epochs)
            try:
                items = train_step(state, batch, loss_fn, precision, device)
            except NonFiniteLoss as error:
                raise DetbenchError(
                    f"training {settings.model} b{settings.batch_size}: loss became {error.value} "
                    f"at epoch {epoch + 1}, step {step_in_epoch + 1}; lower train.lr0"
                ) from None
            sums += (items.box, items.obj, items.cls)
            images_seen += len(batch.images)
            bar.update(1)
            bar.set_postfix(loss=f"{items.total:.3f}")
    synchronize(device)
    seconds = time.perf_counter() - start
    means = sums / max(steps_per_epoch, 1)
    return {
        "epoch": epoch + 1,
        "lr": optimizer.param_groups[1]["lr"],
        "train_box_loss": float(means[0]),
        "train_obj_loss": float(means[1]),
        "train_cls_loss": float(means[2]),
        "train_total_loss": float(means.sum()),
        "epoch_seconds": seconds,
        "images_per_second": images_seen / seconds if seconds > 0 else float("nan"),
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


@contextlib.contextmanager
def _sigterm_exits() -> Iterator[None]:
    """Turn SIGTERM (Slurm's scancel and wall-time limit, a notebook's stop) into SystemExit
    while training, so a checkpoint being written is abandoned cleanly (its temporary file
    removed) and the previous complete one remains to resume from."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _remove_checkpoints(resume_dir: Path) -> None:
    """Delete the resume state: after the final outputs are written, or when what is there
    cannot be resumed. A job killed hard while writing may have left a temporary file
    (.epoch-N.pt.XXXX.tmp) too."""
    for path in [*resume_dir.glob("epoch-*"), *resume_dir.glob(".epoch-*.tmp")]:
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # not empty: something else lives there
        resume_dir.rmdir()


def train_settings_from_config(
    config: dict[str, Any], *, model: str, batch_size: int, epochs: int
) -> TrainSettings:
    """Settings of one cell from the workflow's per-cell config (see rules/common.smk)."""
    return TrainSettings(
        model=model,
        batch_size=batch_size,
        epochs=epochs,
        img_size=int(config["img_size"]),
        seed=int(config["seed"]),
        weights=str(config.get("weights", "scratch")),
        train_split=str(config["dataset"]["train_split"]),
        hyp=TrainHyperparameters.from_dict(config["train"]),
    )
