"""Shared pieces of the benchmark scripts: data to run on, the device, printing tables."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import torch  # noqa: E402

from detbench.data.prepare import convert_dataset, prepare_voc_dataset  # noqa: E402
from detbench.training.device import Precision, synchronize  # noqa: E402

BCCD_DEFAULT = REPO.parent / "shared" / "data" / "bccd"
# The synthetic stand-in for BCCD when it is absent: BCCD's split sizes and image size.
SYNTHETIC_SIZES = {"train": 205, "val": 87, "test": 72, "width": 640, "height": 480}
SYNTHETIC_SEED = 0
_ISSUE_REFERENCE = re.compile(r"\s*\(issue \d+\)|(?<=\()issue \d+[;:]\s*")


def description(doc: str | None) -> str:
    """A script's --help description: its docstring's first paragraph as one line, without
    the references to the project's issues (they are for its developers)."""
    paragraph = (doc or "").strip().split("\n\n")[0]
    return _ISSUE_REFERENCE.sub("", " ".join(paragraph.split()))


def bccd_directory() -> Path | None:
    """The real BCCD (VOC layout) from DETBENCH_BCCD_DIR or ../shared/data/bccd, if present;
    resolved, so that two spellings of one folder are one source."""
    path = bccd_path()
    return path.resolve() if (path / "Annotations").is_dir() else None


def bccd_path() -> Path:
    """Where BCCD is looked for: DETBENCH_BCCD_DIR, else ../shared/data/bccd."""
    return Path(os.environ.get("DETBENCH_BCCD_DIR", BCCD_DEFAULT))


def source_key(source: Path | None) -> str:
    """The cache folder's name for data prepared from ``source`` (a resolved BCCD folder, or
    None for the synthetic stand-in): one folder per source, so that switching source never
    reuses the other's data. Synthetic: its sizes and seed; BCCD: a hash of its path."""
    if source is None:
        s = SYNTHETIC_SIZES
        return (
            f"synthetic-{s['train']}-{s['val']}-{s['test']}-{s['width']}x{s['height']}"
            f"-seed{SYNTHETIC_SEED}"
        )
    return "bccd-" + hashlib.sha256(str(source).encode()).hexdigest()[:12]


def prepare_data(work: Path, *, synthetic_fallback: bool = True) -> tuple[Path, Path, str]:
    """Convert BCCD (or, without it, a synthetic dataset of BCCD's size) under
    ``work/<source_key>``, unless already there; return that folder (for anything else that
    depends on the data), the manifest path and a description of the data."""
    source = bccd_directory()
    if source is None and not synthetic_fallback:
        raise SystemExit(
            f"BCCD not found at {bccd_path()}: set DETBENCH_BCCD_DIR to a VOC copy of it"
        )
    dataset: dict[str, Any] = {
        "name": "bccd" if source else "synthetic",
        "source": str(source) if source else "synthetic",
        "classes": ["RBC", "WBC", "Platelets"],
        "train_split": "train",
        "eval_split": "test",
        "synthetic": dict(SYNTHETIC_SIZES),
    }
    folder = work / source_key(source)
    voc, yolo = folder / "voc", folder / "yolo"
    if not (yolo / "manifest.json").exists():
        prepare_voc_dataset(dataset, voc, seed=SYNTHETIC_SEED)
        convert_dataset(dataset, voc, yolo)
    label = f"BCCD ({source})" if source else "synthetic, BCCD-sized (BCCD not found)"
    return folder, yolo / "manifest.json", label


def prepare_manifest(work: Path, *, synthetic_fallback: bool = True) -> tuple[Path, str]:
    """`prepare_data` without the folder: the manifest path and a description of the data."""
    _, manifest, label = prepare_data(work, synthetic_fallback=synthetic_fallback)
    return manifest, label


def work_dir(name: str) -> Path:
    path = Path(tempfile.gettempdir()) / "detbench-benchmarks" / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> dict[str, Any]:
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "device": str(device),
        "device_name": device_description(device),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {path}")


def seconds_per_call(operation: Callable[[], object], device: torch.device) -> float:
    """Wall seconds of one call, the device synchronised: 3 untimed calls, then the mean of
    20 on CUDA (5 on the CPU)."""
    for _ in range(3):
        operation()
    synchronize(device)
    repeats = 20 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(repeats):
        operation()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def peak_matmul_flops(device: torch.device, precision: Precision) -> tuple[float, str]:
    """FLOP/s of a large square matmul in the dtype training computes its convolutions in."""
    dtype = precision.dtype or torch.float32
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = seconds_per_call(lambda: a @ b, device)
    return 2.0 * n**3 / seconds, f"{n}x{n} {str(dtype).removeprefix('torch.')} matmul"


def peak_copy_bandwidth(device: torch.device) -> tuple[float, str]:
    """Bytes/s of device memory: a large tensor copy reads and writes every byte once."""
    size = 2**30 if device.type == "cuda" else 2**28
    source = torch.empty(size, dtype=torch.uint8, device=device).fill_(1)
    target = torch.empty_like(source)
    seconds = seconds_per_call(lambda: target.copy_(source), device)
    return 2.0 * size / seconds, f"{size // 2**20} MiB copy"
