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
    LOAD_TEST_PEAK_RSS_MIB,
    SERVER_ENV,
    _load_test_uploads,
    _peak_rss_mib,
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


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_onnxruntime_server_memory_under_concurrent_large_uploads(
    exported_results: Path, tmp_path: Path
) -> None:
    """tests/test_web.py's load test on the ONNX Runtime backend: the same uploads at once,
    within the same memory bound; prints its idle and peak RSS and the mean inference time."""
    import threading

    model = exported_results / "p" / "yolov3-tiny" / "b4_e2" / "model.onnx"
    uploads = _load_test_uploads()
    port = free_port()
    command = [
        sys.executable, "-m", "detbench.cli", "serve", "--backend", "onnxruntime",
        "--bccd-model", str(model), "--port", str(port), "--queue-timeout", "60",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, **SERVER_ENV, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    answers: list[tuple[str, int, dict]] = []
    try:
        _wait_until_healthy(url, process)
        idle = _peak_rss_mib(process.pid)

        def send(kind: str, data: bytes) -> None:
            status, body = http_post_detect(url, data, model="bccd", annotate="1")
            answers.append((kind, status, body))

        threads = [threading.Thread(target=send, args=upload) for upload in uploads]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        peak = _peak_rss_mib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        output = process.communicate(timeout=30)[0]
    photos = [body for kind, status, body in answers if kind == "photo" and status == 200]
    inference = sum(b["inference_ms"] for b in photos) / max(len(photos), 1)
    print(
        f"detbench serve --backend onnxruntime peak RSS: idle {idle:.0f} MiB, under load "
        f"{peak:.0f} MiB; mean inference {inference:.0f} ms over {len(photos)} photos"
    )
    assert len(answers) == len(uploads), output
    assert {status for _, status, _ in answers} <= {200, 400, 503}, answers
    assert photos and all((b["width"], b["height"]) == (5000, 5000) for b in photos), answers
    assert peak < LOAD_TEST_PEAK_RSS_MIB, f"peak RSS {peak:.0f} MiB (idle {idle:.0f} MiB)"
