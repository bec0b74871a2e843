"""The engine of training: the state a checkpoint restores, one optimizer step, one epoch.

``train_step`` is the one place a step is defined: training, the profile stage and the
throughput benchmark all take it.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detbench.data.dataset import Batch
from detbench.errors import DetbenchError
from detbench.evaluation.inference import model_input
from detbench.models import build_model
from detbench.study.config import TrainSettings
from detbench.training import distributed
from detbench.training.checkpoint import restore_rng_states, rng_states
from detbench.training.device import Precision, synchronize
from detbench.training.loss import LossItems, YoloLoss
from detbench.training.optim import ModelEMA, make_optimizer, set_learning_rate


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_training_model(
    settings: TrainSettings,
    num_classes: int,
    weights_file: Path | None = None,
    *,
    class_names: Sequence[str] | None = None,
) -> nn.Module:
    """The model with its starting weights: random (seeded), or Darknet's where configured
    (``class_names`` lets COCO's detection rows seed a label space that holds COCO's 80)."""
    torch.manual_seed(settings.seed)
    model = build_model(settings.model, num_classes=num_classes)
    model.initialize_biases()
    if settings.weights != "scratch":
        from detbench.models.pretrained import load_pretrained

        if weights_file is None:
            raise DetbenchError(
                f"models.{settings.model}.weights: {settings.weights!r} needs a Darknet file"
            )
        load_pretrained(model, settings.weights, weights_file, class_names=class_names)
    return model


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
            "rng": rng_states(),
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
        restore_rng_states(checkpoint["rng"])
        self.next_epoch = checkpoint["epoch"]
        self.history = checkpoint["history"]
        self.train_seconds = checkpoint["train_seconds"]
        self.segments = checkpoint["segments"] + 1


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
    images = model_input(batch.images, device, channels_last=state.channels_last)
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


@dataclasses.dataclass(frozen=True)
class EpochPlan:
    """What every epoch of a job shares: the loss, where and how it runs, the schedule."""

    settings: TrainSettings
    loss_fn: YoloLoss
    precision: Precision
    device: torch.device
    steps_per_epoch: int
    warmup_steps: int

    @classmethod
    def create(
        cls,
        settings: TrainSettings,
        loss_fn: YoloLoss,
        precision: Precision,
        device: torch.device,
        steps_per_epoch: int,
    ) -> EpochPlan:
        """Warm-up over ``train.warmup_epochs`` epochs, at least ``warmup_min_iterations``."""
        hyp = settings.hyp
        warmup = max(round(hyp.warmup_epochs * steps_per_epoch), hyp.warmup_min_iterations)
        return cls(settings, loss_fn, precision, device, steps_per_epoch, warmup)


def train_one_epoch(
    state: TrainingState, batches: Iterator[Batch], plan: EpochPlan, epoch: int
) -> dict[str, float]:
    """One epoch: the next ``plan.steps_per_epoch`` batches of ``batches`` (all of them this
    epoch's: see detbench.data.loader.EpochBatchSampler). Returns the epoch's history row."""
    settings, hyp = plan.settings, plan.settings.hyp
    state.model.train()
    optimizer = state.optimizer
    sums = np.zeros(3)
    images_seen = 0
    start = time.perf_counter()
    with _progress(plan.steps_per_epoch, epoch, settings.epochs) as bar:
        for step_in_epoch in range(plan.steps_per_epoch):
            batch = next(batches)
            step = epoch * plan.steps_per_epoch + step_in_epoch
            set_learning_rate(optimizer, hyp, step, plan.warmup_steps, epoch, settings.epochs)
            try:
                items = train_step(state, batch, plan.loss_fn, plan.precision, plan.device)
            except NonFiniteLoss as error:
                raise DetbenchError(
                    f"training {settings.model} b{settings.batch}: loss became {error.value} "
                    f"at epoch {epoch + 1}, step {step_in_epoch + 1}; lower train.lr0"
                ) from None
            sums += (items.box, items.obj, items.cls)
            images_seen += len(batch.images)
            bar.update(1)
            bar.set_postfix(loss=f"{items.total:.3f}")
    synchronize(plan.device)
    seconds = time.perf_counter() - start
    sums, images_seen = distributed.epoch_means(sums, images_seen)  # over the ranks, if several
    means = sums / max(plan.steps_per_epoch, 1)
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
