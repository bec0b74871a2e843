"""SGD without the import of torch._dynamo that torch.optim brings into every training job.

torch.optim.Optimizer wraps ``add_param_group``, ``zero_grad``, ``state_dict`` and
``load_state_dict`` in ``torch._disable_dynamo`` and each optimizer's ``step`` in
``_use_grad_for_differentiable``; both import ``torch._dynamo`` when first called (about 900
modules: sympy, triton, torch.distributed, inductor). A train job that never compiles pays for
it in start-up time (1.0 s on 2 CPU cores) and resident memory (0.12-0.15 GiB of the CPU train
job's 1.7 GiB peak; benchmarks/RESULTS.md, "Memory of a train job"). Outside torch.compile the
wrappers only call the function they wrap, ``step`` with gradients off, so calling the wrapped
functions directly computes exactly the same (tested bit for bit against torch.optim.SGD).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch

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
