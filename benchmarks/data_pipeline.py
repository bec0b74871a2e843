"""Images/s of the training input pipeline alone: loading (cached images), augmentation,
collation, per DataLoader worker count (issue 8).

No model runs: this is what the pipeline can deliver, to set against what training consumes
(`train_throughput.py`).

    .venv/bin/python benchmarks/data_pipeline.py
    .venv/bin/python benchmarks/data_pipeline.py --workers 0 1 2 4 --batch 8 --mosaic 0.5
"""

from __future__ import annotations

import argparse
import time

import cv2
import torch
from common import description, environment, prepare_manifest, print_table, work_dir, write_json

from detbench.data.dataset import DatasetManifest
from detbench.data.loader import make_train_loader
from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.telemetry.kernels import ENOUGH_EPOCHS


def images_per_second(loader: torch.utils.data.DataLoader, batches: int) -> float:
    iterator = iter(loader)
    next(iterator)  # workers started, first batch made: not part of the steady state
    start = time.perf_counter()
    images = 0
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:  # a loader of one epoch (--iterator per-epoch) starts again
            iterator = iter(loader)
            batch = next(iterator)
        images += len(batch.images)
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--batches", type=int, default=60)
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--mosaic", type=float, default=0.0)
    parser.add_argument("--opencv-threads", choices=["training", "opencv-default"],
                        default="training",
                        help="OpenCV's thread pool as training sets it (off before workers "
                        "fork) or OpenCV's default, a thread per core in every worker (before)")
    parser.add_argument("--iterator", choices=["spanning", "per-epoch"], default="spanning",
                        help="one loader iterator over all epochs (as training runs) or a new "
                        "one per epoch, its prefetch starting empty each time (before)")
    parser.add_argument("--output")
    args = parser.parse_args()

    manifest_path, data = prepare_manifest(work_dir("data"))
    manifest = DatasetManifest.load(manifest_path)
    rows, results = [], []
    for workers in args.workers:
        settings = TrainSettings(
            model="yolov3-tiny",
            batch=args.batch,
            epochs=1,
            img_size=args.img_size,
            hyp=TrainHyperparameters(workers=workers, mosaic=args.mosaic),
        )
        start = time.perf_counter()
        epochs = ENOUGH_EPOCHS if args.iterator == "spanning" else 1
        loader = make_train_loader(manifest, settings, torch.device("cpu"), epochs=epochs)
        cache_seconds = time.perf_counter() - start
        if args.opencv_threads == "opencv-default" or workers == 0:
            # As in a fresh training process: make_train_loader turns the pool off only when
            # it forks workers, and a loader of an earlier row may have done so.
            cv2.setNumThreads(-1)
        rate = images_per_second(loader, args.batches)
        rows.append([workers, rate, 1000 * args.batch / rate, cache_seconds])
        results.append({"workers": workers, "images_per_s": rate, "cache_s": cache_seconds})
        del loader
    print(f"input pipeline, {args.img_size} px, batch {args.batch}, mosaic {args.mosaic}, "
          f"OpenCV threads: {args.opencv_threads}, {args.iterator} iterator; "
          f"data: {data}; {environment(torch.device('cpu'))['device_name']}")
    print_table(["workers", "images/s", "ms/batch", "decode+cache (s)"], rows)
    write_json(args.output, {"environment": environment(torch.device("cpu")), "data": data,
                             "settings": vars(args), "results": results})


if __name__ == "__main__":
    main()
