"""One joint model against two separate ones, before any training: parameters, weights-file
size and the time to detect on one image (forward + NMS, batch 1, 416 px), for yolov3-tiny and
yolov3 with BCCD's 3 classes, COCO's 80 and the merged 83 (the joint model).

The weights are random (the time and the size do not depend on their values); NMS runs at the
app's default confidence 0.25 on a real-sized input, so the figures are the app's cost per image.

    .venv/bin/python benchmarks/joint_model.py
    .venv/bin/python benchmarks/joint_model.py --device cuda --output joint.json
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from common import description, environment, print_table, seconds_per_call, write_json

from detbench.evaluation.inference import non_max_suppression, save_trained_model
from detbench.models import build_model
from detbench.training.device import select_device

CLASS_COUNTS = {"bccd": 3, "coco": 80, "joint": 83}


def measure(name: str, classes: int, device: torch.device, img_size: int) -> dict[str, float]:
    torch.manual_seed(0)
    model = build_model(name, num_classes=classes)
    model.initialize_biases()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "weights.pt"
        save_trained_model(
            path, model, {"model": name, "class_names": [str(i) for i in range(classes)]}
        )
        file_bytes = path.stat().st_size
    model = model.to(device).eval().to(memory_format=torch.channels_last)
    image = torch.rand(1, 3, img_size, img_size, device=device).to(
        memory_format=torch.channels_last
    )

    def detect() -> object:
        with torch.inference_mode():
            decoded, _ = model(image)
            return non_max_suppression(
                decoded, conf_threshold=0.25, iou_threshold=0.6, max_detections=100
            )

    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "file_bytes": file_bytes,
        "ms_per_image": seconds_per_call(detect, device) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=description(__doc__))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--img-size", type=int, default=416)
    parser.add_argument("--models", nargs="+", default=["yolov3-tiny", "yolov3"])
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args()
    device = select_device(args.device)
    results: dict[str, dict[str, dict[str, float]]] = {}
    rows = []
    for name in args.models:
        results[name] = {
            k: measure(name, n, device, args.img_size) for k, n in CLASS_COUNTS.items()
        }
        figures = results[name]
        separate = {
            key: figures["bccd"][key] + figures["coco"][key] for key in ("parameters", "file_bytes")
        }
        for label, values in (
            ("bccd (3 classes)", figures["bccd"]),
            ("coco (80 classes)", figures["coco"]),
            ("separate: bccd + coco", {**separate, "ms_per_image": float("nan")}),
            ("joint (83 classes)", figures["joint"]),
        ):
            rows.append(
                [
                    name,
                    label,
                    values["parameters"] / 1e6,
                    values["file_bytes"] / 1e6,
                    values["ms_per_image"],
                ]
            )
        rows.append(
            [
                name,
                "joint / separate",
                figures["joint"]["parameters"] / separate["parameters"],
                figures["joint"]["file_bytes"] / separate["file_bytes"],
                figures["joint"]["ms_per_image"] / figures["coco"]["ms_per_image"],
            ]
        )
    print(f"{environment(device)}; input {args.img_size} px, batch 1, NMS at confidence 0.25")
    print("(last row per model: size ratios joint/separate, time ratio joint/coco model)")
    print_table(["model", "models", "parameters (M)", "weights.pt (MB)", "ms/image"], rows)
    write_json(args.output, {"environment": environment(device), "results": results})


if __name__ == "__main__":
    main()
