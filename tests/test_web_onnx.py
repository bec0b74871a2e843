"""``detbench serve --backend onnxruntime``: an exported cell served by ONNX Runtime in a
process that never imports torch, with the PyTorch backend's detections."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_web import (
    _wait_until_healthy,
    assert_detections,
    encode,
    expected_detections,
    free_port,
    http_post_detect,
    make_results,
    smear_image,
    write_bccd_weights,
)

from detbench.errors import DetbenchError
from detbench.web.settings import WebConfig

# Runs `detbench serve` and says at exit whether torch was ever imported in the process.
SERVE = textwrap.dedent(
    """
    import atexit, sys
    atexit.register(lambda: print("torch imported:", "torch" in sys.modules, flush=True))
    from detbench.cli import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def exported_results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A results folder whose best blood-cell cell has a weights.pt and its model.onnx."""
    from detbench.deploy.export import export_onnx

    root = tmp_path_factory.mktemp("onnx-web")
    results = make_results(root / "results", [("p", "bccd", "yolov3-tiny", 4, 2, "test", 0.5)])
    cell = results / "p" / "yolov3-tiny" / "b4_e2"
    write_bccd_weights(cell / "weights.pt")
    export_onnx(cell / "weights.pt", cell / "model.onnx")
    return results


@pytest.fixture
def onnx_server(exported_results: Path, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [
        sys.executable, "-c", SERVE, "serve", "--results", str(exported_results),
        "--backend", "onnxruntime", "--port", str(port),
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    assert process.returncode == 0, output
    assert "torch imported: False" in output, output


@pytest.mark.slow
def test_serve_onnxruntime_without_torch(onnx_server: str) -> None:
    """Served as PyTorch serves it; the fixture checks at exit that torch was never imported."""
    import json
    import urllib.request

    url = onnx_server
    with urllib.request.urlopen(f"{url}/healthz", timeout=10) as response:
        health = json.loads(response.read())
    bccd = health["models"]["bccd"]
    assert bccd["loaded"] and bccd["backend"] == "onnxruntime"
    assert bccd["source"].endswith("b4_e2/model.onnx")
    assert "served by ONNX Runtime" in bccd["description"]
    assert health["device"] == "cpu (onnxruntime)"
    for side in (128, 300):
        status, body = http_post_detect(url, encode(smear_image(side, side)), model="bccd")
        assert status == 200, body
        assert body["counts"] == {"RBC": 16, "WBC": 16, "Platelets": 64}
        assert_detections(body, expected_detections(side))  # the PyTorch backend's boxes
    status, body = http_post_detect(url, encode(smear_image(96, 96)), model="coco")
    assert status == 400 and "not offered by the onnxruntime backend" in body["error"]


def test_onnxruntime_backend_refuses_a_checkpoint_and_coco_weights(
    exported_results: Path,
) -> None:
    from detbench.web.onnx_serving import onnx_registry

    weights = exported_results / "p" / "yolov3-tiny" / "b4_e2" / "weights.pt"
    with pytest.raises(DetbenchError) as caught:
        onnx_registry(WebConfig(bccd_model=weights, backend="onnxruntime"))
    assert str(caught.value).startswith(f"{weights}: a PyTorch checkpoint, not an ONNX model")
    with pytest.raises(DetbenchError, match=r"^--coco-weights: the onnxruntime backend"):
        onnx_registry(
            WebConfig(bccd_model=weights, coco_weights=weights, backend="onnxruntime")
        )


def test_results_without_an_exported_model_is_one_line(tmp_path: Path) -> None:
    results = make_results(tmp_path / "results", [("p", "bccd", "yolov3-tiny", 4, 2, "t", 0.5)])
    command = [sys.executable, "-m", "detbench.cli", "serve", "--results", str(results),
               "--backend", "onnxruntime"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 1
    line = done.stderr.strip().splitlines()[-1]
    exported = results / "p" / "yolov3-tiny" / "b4_e2" / "model.onnx"
    assert line.startswith(f"detbench error: {exported}: does not exist")
