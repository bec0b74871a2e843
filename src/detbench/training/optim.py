"""The optimizer of a cell: SGD with its parameter groups, the learning-rate schedule (warm-up
into a cosine decay) and the exponential moving average of the weights.

EagerSGD is SGD without the import of torch._dynamo that torch.optim brings into every training job.

torch.optim.Optimizer wraps ``add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` in ``torch._disable_dynamo`` and each optimizer's ``step`` in
``_use_grad_for_differentiable``; both import ``torch._dynamo`` when first called (the
compiler stack: sympy, triton, torch.distributed, inductor). A train job that never compiles
would pay for it in start-up time and resident memory (figures: benchmarks/RESULTS.md,
"Memory of a train job"). Outside torch.compile the
wrappers only call the function they wrap, ``step`` with gradients off, so calling the wrapped
functions directly computes exactly the same (tested bit for bit against torch.optim.SGD).
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from detbench.study.config import TrainHyperparameters, TrainSettings

_Optimizer = torch.optim.Optimizer


def _unwrapped(function: Callable[..., Any]) -> Callable[..., Any]:
    # The decorators keep the original in __wrapped__ (functools.update_wrapper). Should a torch
    # release stop doing so, this returns the wrapper itself: the import comes back, nothing
    # else changes.
    return inspect.unwrap(function)


class EagerSGD(torch.optim.SGD):
    """torch.optim.SGD, the same arithmetic and state_dict, minus the torch._dynamo import.

    For eager training: the step is not meant to be traced by torch.compile (detbench compiles
    the model's forward only, see TrainingState.create).
    """

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        _unwrapped(_Optimizer.add_param_group)(self, param_group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        _unwrapped(_Optimizer.zero_grad)(self, set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return _unwrapped(_Optimizer.state_dict)(self)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _unwrapped(_Optimizer.load_state_dict)(self, state_dict)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        if self.defaults["differentiable"]:
            raise ValueError("EagerSGD does not support differentiable=True; use torch.optim.SGD")
        return _unwrapped(torch.optim.SGD.step)(self, closure)


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
    weight_decay = hyp.weight_decay * settings.batch / 64
    # torch.optim.SGD's arithmetic without its import of torch._dynamo (see
    # detbench.training.optim).
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
