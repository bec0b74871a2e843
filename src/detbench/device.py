"""Choosing the compute device and the mixed-precision mode for it."""

from __future__ import annotations

import dataclasses

import torch

from detbench.errors import DetbenchError


@dataclasses.dataclass(frozen=True)
class Precision:
    """Autocast settings: ``dtype`` None means full float32."""

    dtype: torch.dtype | None
    use_scaler: bool

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.dtype]


def select_device(requested: str = "auto") -> torch.device:
    """'auto' -> the first CUDA device when present, else the CPU."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DetbenchError(f"config: key train.device: {requested!r} asked for, but no CUDA")
        check_cuda_device_supported(device)
    return device


def check_cuda_device_supported(device: torch.device) -> None:
    """Fail at once, naming the GPU, when this torch build carries no kernels for it.

    Otherwise the first convolution dies deep inside the first step with "no kernel image is
    available for execution on the device".
    """
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    built_for = torch.cuda.get_arch_list()  # e.g. ['sm_75', 'sm_80', ..., 'compute_120']
    if not built_for:
        return
    name = torch.cuda.get_device_name(index)
    if not device_capability_supported((major, minor), built_for):
        raise DetbenchError(
            f"GPU {index} ({name}) has compute capability {major}.{minor}, but this torch "
            f"{torch.__version__} (CUDA {torch.version.cuda}) was built for "
            f"{', '.join(built_for)}; install a torch build for sm_{major}{minor} "
            "(see README, 'GPU generations')"
        )


def device_capability_supported(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether kernels for ``capability`` are in ``arch_list``.

    A binary ``sm_XY`` runs on devices of the same major version and minor >= Y; a PTX
    ``compute_XY`` entry can be JIT-compiled for any device of capability >= X.Y.
    """
    major, minor = capability
    for arch in arch_list:
        kind, _, digits = arch.partition("_")
        if not digits.isdigit():
            continue
        arch_major, arch_minor = int(digits[:-1]), int(digits[-1])
        if kind == "sm" and arch_major == major and arch_minor <= minor:
            return True
        if kind == "compute" and (arch_major, arch_minor) <= (major, minor):
            return True
    return False


def select_precision(device: torch.device, amp: bool) -> Precision:
    if device.type != "cuda" or not amp:
        return Precision(dtype=None, use_scaler=False)
    if torch.cuda.get_device_capability(device)[0] < 7:
        # Pascal (P40, P4: sm_61) runs fp16 arithmetic at a small fraction of its fp32 rate and
        # has no tensor cores: mixed precision would only slow it down.
        return Precision(dtype=None, use_scaler=False)
    if torch.cuda.is_bf16_supported():
        return Precision(dtype=torch.bfloat16, use_scaler=False)
    return Precision(dtype=torch.float16, use_scaler=True)


def synchronize(device: torch.device) -> None:
    """Wait until the device has run what was queued on it (a no-op on the CPU), so that a
    clock read next includes that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
