"""The deploy room: ONNX export against PyTorch, the ONNX Runtime path without torch, the
inference benchmark stage and its summary columns, and the one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from detbench.deploy.metadata import ExportedModel
from detbench.errors import DetbenchError
from detbench.study.config import EvalSettings

NMS = EvalSettings()
NMS_ARGS = {
    "conf_threshold": NMS.conf_threshold,
    "iou_threshold": NMS.nms_iou,
    "max_detections": NMS.max_detections,
}


@pytest.fixture(scope="module")
def exported(tiny_trained_cell, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained tiny cell exported with a dynamic batch."""
    from detbench.deploy.export import export_onnx

    outputs, _ = tiny_trained_cell
    path = tmp_path_factory.mktemp("export") / "model.onnx"
    result = export_onnx(outputs.weights, path, dynamic_batch=True)
    assert result.max_raw_difference <= 1e-4
    return path


def _split_canvases(manifest: Path, img_size: int):
    from detbench.data.manifest import DatasetManifest
    from detbench.deploy.preprocess import decode, letterboxed

    records = DatasetManifest.load(manifest).records("test")
    prepared = [letterboxed(decode(r.path.read_bytes(), str(r.path)), img_size) for r in records]
    return records, np.stack([canvas for canvas, _ in prepared]), [p for _, p in prepared]


@pytest.mark.slow
def test_exported_cell_detects_as_pytorch(
    tiny_trained_cell, exported: Path, synthetic_manifest: Path, torch_threads: None
) -> None:
    import torch

    from detbench.deploy.onnx_backend import OnnxRuntimeModel, read_metadata
    from detbench.deploy.torch_backend import TorchModel
    from detbench.evaluation.detections import to_original_pixels
    from detbench.evaluation.metrics import ImageDetections, ImageGroundTruth, evaluate_detections

    outputs, _ = tiny_trained_cell
    metadata = read_metadata(exported)
    assert metadata.model == "yolov3-tiny"
    assert metadata.class_names == ("RBC", "WBC", "Platelets")
    assert metadata.img_size == 64 and metadata.strides == (32, 16)
    assert metadata.opset >= 17 and len(metadata.anchors) == 2

    torch_model = TorchModel(outputs.weights, device="cpu")
    onnx_model = OnnxRuntimeModel(exported)
    records, canvases, placements = _split_canvases(synthetic_manifest, 64)
    want_decoded, want_raw = torch_model.forward(canvases)
    got_decoded, got_raw = onnx_model.forward(canvases)  # a batch of 4: the dynamic batch
    for got, want in zip(got_raw, want_raw, strict=True):
        assert got.shape == want.shape
        assert np.abs(got - want).max() <= 1e-4

    ground_truth = {r.id: ImageGroundTruth(r.boxes_xyxy(), r.classes) for r in records}
    maps = []
    torch_found = torch_model.suppress(torch.from_numpy(want_decoded), **NMS_ARGS)
    onnx_found = onnx_model.suppress(got_decoded, **NMS_ARGS)
    for found in (torch_found, onnx_found):
        assert sum(len(f) for f in found) > 0
        detections = {}
        for r, f, placement in zip(records, found, placements, strict=True):
            f = to_original_pixels(f, placement, r.width, r.height)
            detections[r.id] = ImageDetections(f.boxes, f.scores, f.classes)
        maps.append(evaluate_detections(ground_truth, detections, metadata.class_names).map50)
    assert abs(maps[0] - maps[1]) <= 1e-3


def test_numpy_nms_keeps_what_torchvision_keeps() -> None:
    import torch

    from detbench.deploy.nms import non_max_suppression as numpy_nms
    from detbench.evaluation.inference import non_max_suppression as torch_nms

    rng = np.random.default_rng(0)
    decoded = np.zeros((2, 300, 8), dtype=np.float32)
    decoded[..., :2] = rng.uniform(20, 100, (2, 300, 2))
    decoded[..., 2:4] = rng.uniform(5, 40, (2, 300, 2))
    decoded[..., 4:] = rng.uniform(0, 1, (2, 300, 4))
    got = numpy_nms(decoded, **NMS_ARGS)
    want = torch_nms(torch.from_numpy(decoded), **NMS_ARGS)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) > 0
        np.testing.assert_allclose(g.scores, w.scores, rtol=1e-6)
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-4)
        np.testing.assert_array_equal(g.classes, w.classes)


def test_onnx_runtime_path_imports_no_torch(exported: Path) -> None:
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from detbench.deploy.onnx_backend import OnnxRuntimeModel
        model = OnnxRuntimeModel({str(exported)!r})
        decoded, _ = model.run(np.zeros((1, 3, 64, 64), dtype=np.uint8))
        model.suppress(decoded, conf_threshold=0.01, iou_threshold=0.5, max_detections=10)
        print(decoded.shape, 'torch' in sys.modules)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split()[-1] == "False", done.stdout


@pytest.mark.slow
def test_benchmark_stage_measures_both_backends(
    tiny_trained_cell, exported: Path, synthetic_manifest: Path, tmp_path: Path
) -> None:
    from detbench.deploy.stage import DeploySettings, benchmark_cell
    from detbench.deploy.summary_columns import describe_columns, inference_columns

    outputs, _ = tiny_trained_cell
    cell = tmp_path / "results" / "test-cpu" / "yolov3-tiny" / "b4_e2"
    settings = DeploySettings(
        backends=("torch", "onnxruntime", "onnxruntime-cuda"),
        warmup_images=1,
        timed_images=6,
        throughput_batches=(1, 4),
        throughput_images=4,
    )
    record = benchmark_cell(
        outputs.weights, exported, synthetic_manifest, "test", settings, NMS,
        cell / "inference.json", threads=1, device="cpu",
    )
    assert set(record["backends"]) == {"torch", "onnxruntime"}
    assert "onnxruntime-cuda" in record["skipped_backends"]
    saved = json.loads((cell / "inference.json").read_text())
    for entry in saved["backends"].values():
        latency = entry["latency_ms"]
        assert latency["end_to_end"]["n"] == latency["forward"]["n"] == 6
        assert 0 < latency["forward"]["p50"] <= latency["end_to_end"]["p99"]
        assert set(entry["throughput_images_per_s"]) == {"1", "4"}
        assert entry["peak_rss_bytes"] > 0 and entry["model_bytes"] > 1e6
    assert abs(saved["backends"]["onnxruntime"]["map50_difference"]) <= 1e-3
    assert saved["backends"]["onnxruntime"]["model_bytes"] == exported.stat().st_size

    row = inference_columns(cell)
    assert row["infer_onnxruntime_device"] == "cpu"
    assert row["infer_torch_images_per_s_b4"] > 0
    described = describe_columns([row])
    assert set(described) == set(row)
    assert "batch 4 (images/s)" in described["infer_onnxruntime_images_per_s_b4"]
    assert "on cpu" in described["infer_torch_e2e_p99_ms"]


@pytest.mark.slow
def test_export_reuses_a_cached_graph_with_each_cells_weights(tmp_path: Path) -> None:
    import onnx
    import torch

    from detbench.deploy.export import export_onnx
    from detbench.deploy.onnx_backend import OnnxRuntimeModel
    from detbench.evaluation.inference import save_trained_model
    from detbench.models import build_model

    cache = tmp_path / "graphs"
    images = np.random.default_rng(0).integers(0, 255, (1, 3, 64, 64), dtype=np.uint8)
    outputs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        weights = tmp_path / f"cell{seed}.pt"
        metadata = {"model": "yolov3-tiny", "class_names": ["a", "b", "c"], "img_size": 64}
        save_trained_model(weights, build_model("yolov3-tiny", num_classes=3), metadata)
        result = export_onnx(weights, tmp_path / f"cell{seed}.onnx", graph_cache=cache)
        assert result.max_raw_difference <= 1e-4  # its own weights, from the cached graph
        outputs.append(OnnxRuntimeModel(result.path).run(images)[1][0])
        assert len(list(cache.iterdir())) == 1
    assert np.abs(outputs[0] - outputs[1]).max() > 1e-2  # two cells, two sets of weights
    # A cached graph that does not fit (another class count's) is traced afresh.
    (graph,) = cache.iterdir()
    other = tmp_path / "other.pt"
    save_trained_model(
        other,
        build_model("yolov3-tiny", num_classes=3),
        {"model": "yolov3-tiny", "class_names": ["a", "b", "c"], "img_size": 64},
    )
    broken = onnx.load(str(graph))
    broken.graph.initializer[0].CopyFrom(
        onnx.numpy_helper.from_array(np.zeros(1, dtype=np.float32), "unused")
    )
    onnx.save(broken, str(graph))
    result = export_onnx(other, tmp_path / "other.onnx", graph_cache=cache)
    assert result.max_raw_difference <= 1e-4


# ------------------------------------------------------------------------------- bad input


def test_export_refuses_a_file_that_is_no_model(tmp_path: Path) -> None:
    from detbench.deploy.export import export_onnx

    bad = tmp_path / "notes.txt"
    bad.write_text("not a model\n")
    out = tmp_path / "model.onnx"
    with pytest.raises(DetbenchError) as caught:
        export_onnx(bad, out)
    message = str(caught.value)
    assert message.startswith(f"{bad}: neither a detbench checkpoint") and "\n" not in message
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


def test_onnx_files_without_our_metadata_are_refused(tmp_path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper

    from detbench.deploy.onnx_backend import read_metadata

    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\xff" * 100)
    with pytest.raises(DetbenchError, match=r"garbage\.onnx: not an ONNX model"):
        read_metadata(garbage)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    foreign = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(foreign))
    with pytest.raises(DetbenchError) as caught:
        read_metadata(foreign)
    assert str(caught.value) == (
        f"{foreign}: an ONNX model without detbench's metadata (export one with "
        "`detbench export WEIGHTS --format onnx`)"
    )


def test_missing_backend_names_the_package(exported: Path) -> None:
    from detbench.deploy.onnx_backend import OnnxRuntimeModel, available_backends

    if "onnxruntime-cuda" in available_backends():
        pytest.skip("this machine has ONNX Runtime's CUDA provider")
    with pytest.raises(DetbenchError, match=r"CUDAExecutionProvider is not installed here "
                       r"\(install onnxruntime-gpu\)"):
        OnnxRuntimeModel(exported, "onnxruntime-cuda")
    code = (
        "import sys; sys.modules['onnxruntime'] = None\n"
        "from detbench.deploy.onnx_backend import import_onnxruntime\n"
        "from detbench.errors import DetbenchError\n"
        "try:\n    import_onnxruntime()\nexcept DetbenchError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == (
        "ONNX Runtime is not installed: pip install onnxruntime (or 'detbench[deploy]')"
    )


def test_metadata_round_trip_and_foreign_format() -> None:
    metadata = ExportedModel(
        model="yolov3", class_names=("a", "b"), img_size=416, anchors=(((1, 2),),),
        strides=(32,), dynamic_batch=True, half=False, opset=18,
    )
    assert ExportedModel.from_properties(metadata.properties(), Path("m.onnx")) == metadata
    other = metadata.properties() | {"detbench": json.dumps({"format": "other"})}
    with pytest.raises(DetbenchError, match=r"m\.onnx: detbench metadata unreadable"):
        ExportedModel.from_properties(other, Path("m.onnx"))
