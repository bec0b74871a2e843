"""Peak resident memory of a CPU train job, and its step time, per variant (issue 8).

Each variant runs in a fresh process (glibc reads its allocator settings at start-up, and a
peak can only be measured once): imports, the real training loader on the cached images, the
model with its optimizer and EMA, as `detbench.training.train.train` builds them, then `--warmup` +
`--steps` training steps. Peak = the process's VmHWM (high-water mark of its resident set);
the job has no DataLoader workers on the CPU, so the process is the whole tree.

Variants:

* `lean-allocator`: as a train job runs on the CPU now: restarted with
  `detbench.training.allocator.LEAN_ALLOCATOR_ENV` (large blocks mmap'd on transparent huge pages
  and
  returned on free, so freed activations do not pile up in the heap);
* `glibc-defaults`: the same job with glibc's defaults (`DETBENCH_LEAN_ALLOCATOR=0`, or a
  machine without transparent huge pages or glibc >= 2.35);
* `torch-sgd`: glibc's defaults and torch.optim.SGD, which imports torch._dynamo;
* `indexed-pool`: the lean allocator, but max-pooling that keeps its int64 indices for
  backward (F.max_pool2d) instead of `MaxPoolKeepingNoIndices`.

glibc defaults, torch.optim.SGD and the indexed pool together are the job as it was before
2026-11-26.

    .venv/bin/python benchmarks/train_memory.py                       # yolov3-tiny b8 416
    .venv/bin/python benchmarks/train_memory.py --variants lean-allocator glibc-defaults
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import torch
from common import (
    REPO,
    description,
    environment,
    prepare_manifest,
    print_table,
    work_dir,
    write_json,
)

from detbench.training.allocator import (
    LEAN_ALLOCATOR_ENV,
    OPT_OUT,
    glibc_version,
    huge_pages_available,
    lean_allocator_env,
)

VARIANTS = ("lean-allocator", "glibc-defaults", "torch-sgd", "indexed-pool")

CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
import torch
import detbench.training.engine as engine
import detbench.training.optim as optim
from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.data.loader import make_train_loader
from detbench.data.dataset import DatasetManifest
from detbench.training.device import select_precision
from detbench.training.loss import YoloLoss
from detbench.telemetry.kernels import ENOUGH_EPOCHS, endless_batches

if {torch_sgd!r}:
    optim.EagerSGD = torch.optim.SGD
if {indexed_pool!r}:
    import detbench.models.darknet as darknet
    darknet.MaxPoolKeepingNoIndices.apply = torch.nn.functional.max_pool2d
torch.set_num_threads({threads})
device = torch.device("cpu")
settings = TrainSettings(model={model!r}, batch={batch}, epochs=1,
                         img_size={img_size}, hyp=TrainHyperparameters(workers=0))
engine.seed_everything(0)
manifest = DatasetManifest.load({manifest!r})
loader = make_train_loader(manifest, settings, device, epochs=ENOUGH_EPOCHS)
model = engine.build_training_model(settings, len(manifest.class_names))
precision = select_precision(device, amp=True)
state = engine.TrainingState.create(model, settings, precision, device)
loss_fn = YoloLoss(model, settings.hyp)
batches = endless_batches(loader)
model.train()
seconds = []
for step in range({warmup} + {steps}):
    batch = next(batches)
    start = time.perf_counter()
    engine.train_step(state, batch, loss_fn, precision, device)
    seconds.append(time.perf_counter() - start)
status = open("/proc/self/status").read().split("\\n")
peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({{"peak_bytes": peak_kib * 1024, "step_seconds": seconds[{warmup}:],
                  "dynamo_imported": "torch._dynamo" in sys.modules}}))
"""


def run_variant(variant: str, manifest: Path, args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*LEAN_ALLOCATOR_ENV, OPT_OUT)}
    if variant in ("lean-allocator", "indexed-pool"):
        lean = lean_allocator_env(env, glibc=glibc_version(), huge_pages=huge_pages_available())
        if lean is None:
            raise SystemExit("the lean allocator settings do not apply on this machine "
                             "(glibc < 2.35 or transparent huge pages off)")
        env = lean
        if args.mmap_threshold is not None:
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    code = CHILD.format(
        src=str(REPO / "src"), torch_sgd=variant == "torch-sgd",
        indexed_pool=variant == "indexed-pool", threads=args.threads,
        model=args.model, batch=args.batch, img_size=args.img_size, manifest=str(manifest),
        warmup=args.warmup, steps=args.steps,
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=False)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--rounds", type=int, default=2,
                        help="fresh processes per variant, variants alternating")
    parser.add_argument("--model", default="yolov3-tiny")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8, help="timed steps after the warm-up")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--mmap-threshold", type=int, default=None,
                        help="bytes, instead of the lean allocator's MALLOC_MMAP_THRESHOLD_")
    parser.add_argument("--output")
    args = parser.parse_args()

    manifest, data = prepare_manifest(work_dir("data"))
    runs: dict[str, list[dict]] = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant in args.variants:
            runs[variant].append(run_variant(variant, manifest, args))

    rows, results = [], []
    for variant, measured in runs.items():
        peaks = [run["peak_bytes"] for run in measured]
        step_ms = [1000 * statistics.median(run["step_seconds"]) for run in measured]
        results.append({"variant": variant, "peak_bytes": peaks, "median_step_ms": step_ms,
                        "dynamo_imported": [run["dynamo_imported"] for run in measured]})
        rows.append([variant, max(peaks) / 2**30, max(peaks) / 1e9, min(peaks) / 2**30,
                     statistics.median(step_ms), any(r["dynamo_imported"] for r in measured)])
    print(f"train job memory, {args.model} b{args.batch} at {args.img_size} px, "
          f"{args.warmup}+{args.steps} steps, {args.threads} threads, {args.rounds} fresh "
          f"processes per variant; data: {data}")
    print_table(["variant", "peak GiB (max)", "peak GB (max)", "peak GiB (min)",
                 "median ms/step", "torch._dynamo imported"], rows)
    write_json(args.output, {
        "environment": environment(torch.device("cpu")),
        "data": data,
        "settings": {k: v for k, v in vars(args).items() if k != "output"},
        "results": results,
    })


if __name__ == "__main__":
    main()
