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
            "(see docs/local.md, 'GPU generations')"
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


# Dense peak arithmetic rates (FLOP/s) from the vendors' datasheets, by GPU name fragment and
# training precision, for model FLOP utilisation. fp32 on Ampere and later counts TF32, which
# cuDNN's convolutions use by default. Longest fragment first: "H100 PCIe" before "H100".
DATASHEET_PEAK_FLOPS: dict[str, dict[str, float]] = {
    "H100 PCIe": {"bf16": 756e12, "fp16": 756e12, "fp32": 378e12},
    "H100": {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12},
    "H200": {"bf16": 989e12, "fp16": 989e12, "fp32": 495e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "fp32": 156e12},
    "A10": {"bf16": 125e12, "fp16": 125e12, "fp32": 62.5e12},
    "L4": {"bf16": 121e12, "fp16": 121e12, "fp32": 60e12},
    "V100": {"fp16": 125e12, "fp32": 15.7e12},
    "T4": {"fp16": 65e12, "fp32": 8.1e12},
    "P40": {"fp32": 11.8e12},
}


def datasheet_peak_flops(gpu_name: str | None, precision: str) -> float | None:
    """The datasheet peak of ``gpu_name`` (as CUDA names it) in ``precision``; None for a CPU
    or a GPU not in DATASHEET_PEAK_FLOPS."""
    if not gpu_name:
        return None
    for fragment in sorted(DATASHEET_PEAK_FLOPS, key=len, reverse=True):
        if fragment in gpu_name:
            return DATASHEET_PEAK_FLOPS[fragment].get(precision)
    return None
