"""Merged datasets (dataset.source: merge): a synthetic blood-cell part and a COCO-like part
served by the local test server, merged into one label space; bad parts; per-part metrics of a
tiny joint cell equal to evaluating each part alone with the same weights."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import yaml
from http_server import LocalHTTPServer, http_server_fixture  # noqa: F401 (fixture)

from detbench.data.coco import COCO_CATEGORY_IDS, COCO_CLASSES
from detbench.data.manifest import DatasetManifest
from detbench.data.merge import merged_class_names
from detbench.data.prepare import check_source, convert_dataset, prepare_voc_dataset
from detbench.data.synthetic import generate_synthetic_voc
from detbench.errors import DetbenchError
from detbench.study.config import validate_config

BLOOD = ["RBC", "WBC", "Platelets"]
# id -> (width, height, [(category id, x, y, w, h)]): people and cars as flat rectangles.
COCO_TRAIN = {
    9: (96, 72, [(1, 10, 8, 30, 50), (3, 50, 40, 40, 20)]),
    25: (96, 72, [(1, 60, 10, 24, 50)]),
    30: (80, 64, [(3, 8, 30, 50, 24)]),
    42: (80, 64, [(1, 30, 4, 20, 50)]),  # past max_images: never fetched
}
COCO_VAL = {
    139: (96, 72, [(1, 40, 6, 28, 56), (3, 4, 44, 40, 20)]),
    285: (80, 64, [(3, 20, 20, 44, 24)]),
}
COLOURS = {1: (40, 160, 40), 3: (30, 30, 200)}


def _jpeg(width: int, height: int, boxes: list[tuple[int, ...]], seed: int) -> bytes:
    image = np.random.default_rng(seed).integers(100, 160, (height, width, 3), dtype=np.uint8)
    for category, x, y, w, h in boxes:
        cv2.rectangle(image, (x, y), (x + w - 1, y + h - 1), COLOURS[category], thickness=-1)
    ok, encoded = cv2.imencode(".jpg", image)
    assert ok
    return encoded.tobytes()


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def _instances(images: dict[int, tuple]) -> bytes:
    categories = [
        {"id": cid, "name": name} for cid, name in zip(COCO_CATEGORY_IDS, COCO_CLASSES, strict=True)
    ]
    annotations = [
        {"id": 1000 * i + k, "image_id": i, "category_id": c, "bbox": [x, y, w, h], "iscrowd": 0}
        for i, (_, _, boxes) in images.items()
        for k, (c, x, y, w, h) in enumerate(boxes)
    ]
    listed = [
        {"id": i, "file_name": f"{i:012d}.jpg", "width": w, "height": h}
        for i, (w, h, _) in images.items()
    ]
    data = {"images": listed, "annotations": annotations, "categories": categories}
    return json.dumps(data).encode()


def serve_coco_like(server: LocalHTTPServer) -> str:
    """A COCO 2017 look-alike (train2017 and val2017) on the local server; its base URL."""
    annotations = {
        "annotations/instances_train2017.json": _instances(COCO_TRAIN),
        "annotations/instances_val2017.json": _instances(COCO_VAL),
    }
    server.add("/annotations/annotations_trainval2017.zip", _zip(annotations))
    for split, images in (("train2017", COCO_TRAIN), ("val2017", COCO_VAL)):
        members = {
            f"{split}/{i:012d}.jpg": _jpeg(w, h, boxes, seed=i)
            for i, (w, h, boxes) in images.items()
        }
        server.add(f"/zips/{split}.zip", _zip(members))
    return server.base_url


def merged_config(coco_url: str, blood_part: dict[str, Any] | None = None) -> dict[str, Any]:
    """A validated study config whose dataset merges a COCO-like part and a blood-cell part."""
    blood = blood_part or {
        "name": "blood",
        "source": "synthetic",
        "classes": BLOOD,
        "train_split": "train",
        "eval_split": "test",
        "synthetic": {"train": 6, "val": 2, "test": 3, "width": 128, "height": 96},
    }
    text = f"""
platform: joint-test
dataset:
  name: joint
  source: merge
  train_split: train
  eval_split: test
  parts:
    - name: coco
      source: coco
      coco_url: {coco_url}
      train_split: train2017
      eval_split: val2017
      max_images: 3
models: {{yolov3-tiny: {{weights: scratch}}}}
batch_sizes: [3]
epochs: [1]
img_size: 64
"""
    config = yaml.safe_load(text)
    config["dataset"]["parts"].append(blood)
    return validate_config(config, source="test")


def build(dataset: dict[str, Any], root: Path) -> dict[str, Any]:
    """Both data stages, as the workflow runs them: download (voc) then convert (yolo)."""
    check_source(dataset, "test")
    prepare_voc_dataset(dataset, root / "voc", seed=0)
    return convert_dataset(dataset, root / "voc", root / "yolo")


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """The merged dataset (manifest, folder), the COCO part fetched from a local server."""
    server = LocalHTTPServer()
    try:
        config = merged_config(serve_coco_like(server))
        root = tmp_path_factory.mktemp("joint")
        manifest = build(config["dataset"], root)
    finally:
        server.close()
    return manifest, root


def test_one_label_space_coco_then_blood(merged: tuple[dict[str, Any], Path]) -> None:
    manifest, root = merged
    assert manifest["class_names"] == [*COCO_CLASSES, *BLOOD]
    assert [p["name"] for p in manifest["parts"]] == ["coco", "blood"]
    coco, blood = manifest["parts"]
    assert (coco["class_offset"], blood["class_offset"]) == (0, 80)
    assert coco["splits"] == {"train": "train2017", "test": "val2017"}
    assert blood["splits"] == {"train": "train", "test": "test"}
    assert json.loads((root / "yolo/manifest.json").read_text()) == manifest


def test_each_part_keeps_its_splits_and_each_image_its_part(
    merged: tuple[dict[str, Any], Path],
) -> None:
    manifest, root = merged
    train_ids = [e["id"] for e in manifest["splits"]["train"]]
    assert train_ids[:3] == ["coco/000000000009", "coco/000000000025", "coco/000000000030"]
    assert len(train_ids) == 3 + 6 and all(i.startswith("blood/") for i in train_ids[3:])
    test_parts = [e["part"] for e in manifest["splits"]["test"]]
    assert test_parts == ["coco", "coco", "blood", "blood", "blood"]
    assert manifest["counts"]["test"]["images"] == 5
    assert manifest["counts"]["train"]["boxes"]["person"] == 2
    assert manifest["counts"]["train"]["boxes"]["car"] == 2
    # Each part converted alone beside the merge, with its own class ids.
    alone = json.loads((root / "yolo/parts/blood/manifest.json").read_text())
    assert alone["class_names"] == BLOOD
    assert manifest["counts"]["test"]["boxes"]["RBC"] == alone["counts"]["test"]["boxes"]["RBC"]


def test_labels_are_shifted_into_the_merged_space(merged: tuple[dict[str, Any], Path]) -> None:
    _, root = merged
    loaded = DatasetManifest.load(root / "yolo")
    records = {r.id: r for r in loaded.records("train")}
    car = records["coco/000000000009"]
    assert car.classes.tolist() == [0, 2]  # person, car
    np.testing.assert_allclose(car.boxes_xyxy()[1], [50, 40, 90, 60], atol=0.01)
    assert car.path.is_file() and car.width == 96
    stem = next(i for i in records if i.startswith("blood/")).split("/", 1)[1]
    own = np.loadtxt(root / f"yolo/parts/blood/labels/{stem}.txt", ndmin=2)
    shifted = records[f"blood/{stem}"].labels
    np.testing.assert_array_equal(shifted[:, 0], own[:, 0] + 80)
    np.testing.assert_allclose(shifted[:, 1:], own[:, 1:], atol=1e-6)


def test_equal_class_names_stay_two_classes() -> None:
    dataset = {
        "source": "merge",
        "train_split": "train",
        "eval_split": "test",
        "parts": [
            {"name": "a", "source": "synthetic", "classes": BLOOD, **SPLITS},
            {"name": "b", "source": "synthetic", "classes": ["WBC", "Neutrophil"], **SPLITS},
        ],
    }
    assert merged_class_names(dataset) == [*BLOOD, "b/WBC", "Neutrophil"]


SPLITS = {"train_split": "train", "eval_split": "test"}


# --- bad parts ---------------------------------------------------------------------------------


@pytest.fixture
def broken_voc(tmp_path: Path) -> Path:
    """A small VOC dataset whose Synth_00001 has an inverted box (300,200)-(100,100)."""
    root = tmp_path / "mine"
    generate_synthetic_voc(root, num_images={"train": 3, "val": 1, "test": 2}, seed=5)
    xml = root / "Annotations/Synth_00001.xml"
    text = xml.read_text()
    start, end = text.index("<bndbox>"), text.index("</bndbox>")
    box = "<xmin>300</xmin><ymin>200</ymin><xmax>100</xmax><ymax>100</ymax>"
    xml.write_text(text[:start] + f"<bndbox>{box}" + text[end:])
    return root


def _voc_part(path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "mine", "source": str(path), "classes": BLOOD, **SPLITS, **extra}


def test_an_inverted_box_in_a_part_stops_the_merge_naming_part_and_file(
    http_server: LocalHTTPServer, broken_voc: Path, tmp_path: Path
) -> None:
    config = merged_config(serve_coco_like(http_server), _voc_part(broken_voc))
    with pytest.raises(DetbenchError) as info:
        build(config["dataset"], tmp_path / "out")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("dataset.parts[1] (mine): ")
    # The user's file, not the workflow's copy of it, and the box.
    assert str(broken_voc / "Annotations/Synth_00001.xml") in message
    assert "inverted box (300,200)-(100,100)" in message
    assert not (tmp_path / "out/yolo").exists()


def test_an_inverted_box_in_a_part_is_skipped_and_listed_under_skip(
    http_server: LocalHTTPServer, broken_voc: Path, tmp_path: Path
) -> None:
    part = _voc_part(broken_voc, on_bad_image="skip")
    manifest = build(merged_config(serve_coco_like(http_server), part)["dataset"], tmp_path)
    [skipped] = manifest["skipped_images"]
    assert skipped["part"] == "mine" and skipped["file"] == "Annotations/Synth_00001.xml"
    assert "inverted box" in skipped["problem"]
    assert "mine/Synth_00001" not in [e["id"] for e in manifest["splits"]["train"]]
    assert manifest["counts"]["train"]["skipped"] == 1


def test_a_missing_part_folder_is_one_line_naming_the_part(tmp_path: Path) -> None:
    config = merged_config("http://127.0.0.1:9", _voc_part(tmp_path / "nowhere"))
    config["dataset"]["parts"].reverse()  # the missing folder first: nothing is fetched
    with pytest.raises(DetbenchError) as info:
        check_source(config["dataset"], "joint.yaml")
    message = str(info.value)
    assert "\n" not in message and "dataset.parts[0] (mine)" in message
    assert str(tmp_path / "nowhere") in message
    # Gone after the check (the download stage): the same line from there.
    with pytest.raises(DetbenchError) as info:
        prepare_voc_dataset(config["dataset"], tmp_path / "voc")
    message = str(info.value)
    assert message.startswith("dataset.parts[0] (mine): ") and "nowhere" in message


def test_a_failing_download_stops_the_merge_naming_the_part(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    # The server has no COCO at all: the COCO part fails first, naming what it asked for.
    config = merged_config(http_server.base_url)
    with pytest.raises(DetbenchError) as info:
        prepare_voc_dataset(config["dataset"], tmp_path / "voc")
    message = str(info.value)
    assert "\n" not in message and message.startswith("dataset.parts[0] (coco): ")
    assert "annotations" in message


def test_part_names_must_differ(tmp_path: Path) -> None:
    part = {"name": "coco", "source": "synthetic", "classes": BLOOD, **SPLITS}
    config = merged_config("http://127.0.0.1:9", part)
    with pytest.raises(DetbenchError, match=r"part name 'coco' is used twice"):
        check_source(config["dataset"], "joint.yaml")


def test_a_single_dataset_is_unchanged_by_the_merge_keys(tmp_path: Path) -> None:
    root = tmp_path / "voc"
    generate_synthetic_voc(root, num_images={"train": 2, "val": 1, "test": 1}, seed=1)
    dataset = {"name": "s", "source": str(root), "classes": BLOOD, **SPLITS}
    shutil.copytree(root, tmp_path / "copy")
    manifest = convert_dataset(dataset, tmp_path / "copy", tmp_path / "yolo")
    assert "parts" not in manifest and manifest["class_names"] == BLOOD


# --- a tiny joint cell ---------------------------------------------------------------------------


def evaluate_part_alone(
    weights: Path, part_manifest: Path, split: str, offset: int, settings: Any
) -> dict[str, Any]:
    """The joint weights on one part's own converted dataset (its own class ids): its images
    only, the detections of its classes only, scored against its labels."""
    import torch

    from detbench.data.dataset import DetectionDataset
    from detbench.evaluation.evaluate import predict_split
    from detbench.evaluation.inference import load_trained_model
    from detbench.evaluation.metrics import ImageDetections, ImageGroundTruth, evaluate_detections
    from detbench.study.config import TrainHyperparameters

    model, metadata = load_trained_model(weights, torch.device("cpu"))
    manifest = DatasetManifest.load(part_manifest)
    dataset = DetectionDataset.of_split(manifest, split, int(metadata["img_size"]))
    hyp = TrainHyperparameters(workers=0, device="cpu")
    found, _, _ = predict_split(model, dataset, settings, hyp, torch.device("cpu"), amp=False)
    count = len(manifest.class_names)
    detections = {}
    for image_id, d in found.items():
        keep = (d.classes >= offset) & (d.classes < offset + count)
        detections[image_id] = ImageDetections(
            boxes=d.boxes[keep], scores=d.scores[keep], classes=d.classes[keep] - offset
        )
    truth = {
        r.id: ImageGroundTruth(boxes=r.boxes_xyxy(), classes=r.classes) for r in dataset.records
    }
    metrics = evaluate_detections(
        truth,
        detections,
        manifest.class_names,
        pr_confidence=settings.pr_confidence,
        max_detections=settings.max_detections,
    )
    return {"num_images": len(truth), **metrics.to_dict()}


@pytest.mark.slow
def test_a_joint_cell_scores_each_part_as_evaluated_alone(
    merged: tuple[dict[str, Any], Path], tmp_path: Path, torch_threads: None
) -> None:
    from detbench.evaluation.evaluate import evaluate_cell
    from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
    from detbench.training.train import TrainOutputs, train

    manifest, root = merged
    outputs = TrainOutputs.in_folder(tmp_path / "cell")
    hyp = TrainHyperparameters(workers=0, device="cpu", lr0=0.02)
    settings = TrainSettings(model="yolov3-tiny", batch=3, epochs=2, img_size=64, seed=0, hyp=hyp)
    train(settings, root / "yolo/manifest.json", outputs, threads=1)
    # Batch 1: each image is predicted alone in both evaluations, so the numbers are the same
    # bit for bit, not only to rounding.
    # Every detection kept (a 2-epoch model's scores are low): there are some to compare.
    eval_settings = EvalSettings(
        batch_size=1, max_detections=100, conf_threshold=0.0, pr_confidence=0.0
    )
    metrics = evaluate_cell(
        outputs.weights,
        root / "yolo/manifest.json",
        "test",
        eval_settings,
        hyp,
        tmp_path / "metrics.json",
        tmp_path / "detections.json",
        threads=1,
    )
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    # The whole split's metrics stay, over all 83 classes and all 5 images.
    assert metrics["num_images"] == 5 and len(metrics["metrics"]["per_class"]) == 83
    assert set(metrics["parts"]) == {"coco", "blood"}
    for part in manifest["parts"]:
        got = metrics["parts"][part["name"]]
        own_split = part["splits"]["test"]
        alone = evaluate_part_alone(
            outputs.weights,
            root / "yolo" / part["manifest"],
            own_split,
            part["class_offset"],
            eval_settings,
        )
        assert got["split"] == own_split
        assert got["num_images"] == alone["num_images"]
        assert got["classes"] == part["merged_class_names"]
        for key in ("map50", "map50_95", "precision_at_conf", "recall_at_conf"):
            assert got[key] == alone[key], (part["name"], key)
        assert got["per_class"] == alone["per_class"]
        # Something to compare: the part's objects, and detections of its classes.
        assert got["num_ground_truth"] == alone["num_ground_truth"] > 0
        assert sum(c["num_detections"] for c in got["per_class"]) > 0
    assert metrics["parts"]["coco"]["num_images"] == 2
    assert metrics["parts"]["blood"]["num_images"] == 3


def test_planned_training_images_are_the_parts_sum(tmp_path: Path) -> None:
    from detbench.data.sizes import train_image_count

    config = merged_config("http://127.0.0.1:9")
    # Before anything is on disk: COCO's max_images and the synthetic size, 3 + 6.
    assert train_image_count(config["dataset"], tmp_path) == 9


def test_a_changed_source_image_of_a_part_is_refused_naming_the_users_file(
    http_server: LocalHTTPServer, tmp_path: Path
) -> None:
    source = tmp_path / "mine"
    generate_synthetic_voc(source, num_images={"train": 2, "val": 1, "test": 2}, seed=5)
    config = merged_config(serve_coco_like(http_server), _voc_part(source))
    build(config["dataset"], tmp_path / "out")
    manifest = DatasetManifest.load(tmp_path / "out/yolo")
    assert len(manifest.records("train")) == 3 + 2
    # The workflow's copy of one image changes after conversion: refused, naming the user's.
    copy = tmp_path / "out/voc/mine/JPEGImages/Synth_00000.jpg"
    copy.write_bytes(copy.read_bytes()[:100])
    with pytest.raises(DetbenchError) as info:
        manifest.records("train")
    message = str(info.value)
    assert str(source / "JPEGImages/Synth_00000.jpg") in message and "changed since" in message
    assert "\n" not in message


def test_the_reports_data_section_reads_a_merged_manifest(
    merged: tuple[dict[str, Any], Path],
) -> None:
    from detbench.report.dataset import split_rows

    manifest, _ = merged
    headers, rows = split_rows(manifest, {"train_split": "train", "eval_split": "test"})
    assert len(headers) == 3 + 83 + 1
    train = dict(zip(headers, rows[0], strict=True))
    assert train["Role"] == "training" and train["Images"] == 9
    assert train["person boxes"] == 2 and train["RBC boxes"] > 0
