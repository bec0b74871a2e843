"""A train job's peak resident memory and start-up against dataset size, decoding into memory
against the shared disk image cache (issue 17); and the per-sample cost of each path.

For each size (synthetic VOC sets of ``--sizes`` training images, ``--source-size`` px, cached
at ``--img-size``), the cache is built once (what the image_cache rule does), then each mode
runs in a fresh process as a CPU train job feeds its model: imports, the real training loader
(``make_train_loader``, no workers, the default augmentation), one epoch of batches. Start-up
= process age when the loader is ready (the train job's first step would start there); peak =
the process's VmHWM; "imports" is the process age after its imports (torch), part of the
start-up. The per-sample table reads every image of the middle size in-process:
``image`` (the source alone: a list lookup, or pread + CRC-32 from a hot page cache) and
``sample`` (the augmented training sample built from it).

    .venv/bin/python benchmarks/image_cache.py                      # 200, 2000, 10000 images
    .venv/bin/python benchmarks/image_cache.py --sizes 200 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import REPO, description, environment, print_table, work_dir, write_json

from detbench.data.augment import AugmentSettings
from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.data.image_cache import DATA_FILE, build_from_manifest
from detbench.data.synthetic import generate_synthetic_voc
from detbench.data.voc import convert_voc_to_yolo

CHILD = """
import json, sys, time
sys.path.insert(0, {src!r})
import torch
from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.data.dataset import DatasetManifest
from detbench.data.loader import make_train_loader
from detbench.telemetry.resources import process_age_s
torch.set_num_threads(1)
imported = process_age_s()
caches = {{"train": {cache!r}}} if {disk!r} else {{}}
manifest = DatasetManifest.load({manifest!r}, caches)
settings = TrainSettings("yolov3-tiny", 16, 1, img_size={img_size},
                         hyp=TrainHyperparameters(workers=0))
loader = make_train_loader(manifest, settings, torch.device("cpu"))
startup = process_age_s()
start = time.perf_counter()
images = sum(len(batch.images) for batch in loader)
epoch = time.perf_counter() - start
status = open("/proc/self/status").read()
peak = next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:"))
print(json.dumps({{"import_s": imported, "startup_s": startup, "epoch_s": epoch, "images": images,
                  "peak_rss_mb": peak / 1024}}))
"""


def prepare(work: Path, count: int, source_size: tuple[int, int]) -> Path:
    """A synthetic VOC set of ``count`` training images, converted; its manifest."""
    folder = work / f"n{count}-{source_size[0]}x{source_size[1]}"
    manifest = folder / "yolo" / "manifest.json"
    if not manifest.exists():
        generate_synthetic_voc(
            folder / "voc", num_images={"train": count}, image_size=source_size, seed=0
        )
        classes = ["RBC", "WBC", "Platelets"]
        convert_voc_to_yolo(
            folder / "voc",
            folder / "yolo",
            class_names=classes,
            splits=["train"],
            dataset_name=f"synthetic-{count}",
        )
    return manifest


def run_job(manifest: Path, cache: Path, disk: bool, img_size: int) -> dict[str, Any]:
    code = CHILD.format(
        src=str(REPO / "src"),
        manifest=str(manifest),
        cache=str(cache),
        disk=disk,
        img_size=img_size,
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


def per_sample_ms(manifest: Path, cache: Path, img_size: int) -> list[list[Any]]:
    """Milliseconds per image read and per augmented sample, memory against disk."""
    rows = []
    for mode, caches in (("memory", {}), ("disk", {"train": cache})):
        loaded = DatasetManifest.load(manifest, caches)
        dataset = DetectionDataset.of_split(loaded, "train", img_size, augment=AugmentSettings())
        timings = []
        for operation in (dataset.images.image, dataset.sample):
            start = time.perf_counter()
            for index in range(len(dataset)):
                operation(index)
            timings.append((time.perf_counter() - start) / len(dataset) * 1e3)
        rows.append([mode, *timings])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--sizes", type=int, nargs="+", default=[200, 2000, 10000])
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--source-size", type=int, nargs=2, default=[128, 96])
    parser.add_argument("--keep", action="store_true", help="keep the data (else removed)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = work_dir("image_cache")
    rows, results = [], []
    for count in args.sizes:
        manifest = prepare(work, count, tuple(args.source_size))
        cache = manifest.parents[1] / f"cache{args.img_size}"
        start = time.perf_counter()
        build_from_manifest(manifest, "train", args.img_size, cache)
        build_s = time.perf_counter() - start
        cache_mb = (cache / DATA_FILE).stat().st_size / 2**20
        # Disk first: as a train job runs right after the image_cache job, its pages hot (the
        # memory job's GBs can push them out of a small machine's page cache).
        for mode in ("disk", "memory"):
            job = run_job(manifest, cache, mode == "disk", args.img_size)
            results.append({"images": count, "mode": mode, "build_s": build_s} | job)
            rows.append(
                [
                    count,
                    mode,
                    job["peak_rss_mb"],
                    job["import_s"],
                    job["startup_s"],
                    job["epoch_s"],
                    build_s if mode == "disk" else "",
                    cache_mb,
                ]
            )
    print(environment(torch.device("cpu")))
    headers = [
        "images",
        "mode",
        "peak RSS MB",
        "imports s",
        "start-up s",
        "epoch s",
        "build s",
        "cache MB",
    ]
    print_table(headers, rows)
    middle = (
        manifest
        if len(args.sizes) == 1
        else prepare(work, args.sizes[len(args.sizes) // 2], tuple(args.source_size))
    )
    samples = per_sample_ms(middle, middle.parents[1] / f"cache{args.img_size}", args.img_size)
    print(f"\nper image, {middle.parents[1].name}:")
    print_table(["mode", "image ms", "sample ms"], samples)
    write_json(
        args.json,
        {
            "environment": environment(torch.device("cpu")),
            "jobs": results,
            "per_sample_ms": samples,
        },
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
