"""The inference web app (issue 7): page, JSON API, limits, concurrency, ``detbench serve``.

The models are real YOLOv3-tiny networks loaded through the real files (a ``weights.pt`` written
by ``save_trained_model`` and a Darknet ``.weights`` file written by ``save_darknet_weights``),
"rigged" so their output is known: the detection convs have zero weights and chosen biases, so
every grid cell predicts the same boxes whatever the image. On a square image the detections
are then known exactly (see :func:`expected_detections`).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detbench.data.dataset import DetectionDataset, ImageRecord
from detbench.errors import DetbenchError
from detbench.evaluation.evaluate import predict_split
from detbench.evaluation.inference import save_trained_model
from detbench.models import YOLO, build_model, save_darknet_weights
from detbench.models.pretrained import DARKNET_NMS_IOU, DarknetPlacement
from detbench.study.config import EvalSettings, TrainHyperparameters
from detbench.web import WebConfig, create_app
from detbench.web.images import ImageRejected, decode_image
from detbench.web.registry import (
    InferenceSettings,
    ModelRegistry,
    best_bccd_cell,
    coco_architecture_for_size,
    load_bccd_model,
    load_coco_model,
)

REPO = Path(__file__).resolve().parents[1]
BLOOD = ("RBC", "WBC", "Platelets")
COCO_RIGGED = ("person", "car", "dog")  # COCO class indices 0, 2, 16 stand in for the three
COCO_RIGGED_INDICES = (0, 2, 16)
IMG_SIZE = 128  # network input of the rigged models (fast on a CPU)

# Rigged detection biases: (objectness logit, class logit) per predicted class. Scores are
# sigmoid(obj) * sigmoid(cls): about 0.884, 0.611 and 0.326.
OBJ_LOGIT = 4.0
CLASS_LOGITS = (2.2, 0.5, -0.7)
OFF_LOGIT = -15.0
WBC_BOX = 60.0  # px on the canvas: small enough that neighbouring WBC boxes never overlap > 0.6


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def rigged_scores() -> tuple[float, ...]:
    return tuple(sigmoid(OBJ_LOGIT) * sigmoid(c) for c in CLASS_LOGITS)


# --------------------------------------------------------------------------------------------
# Rigged models and images (also used by test_web_browser.py)
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def rig_model(model: YOLO, class_indices: tuple[int, int, int], noise: float = 0.0) -> YOLO:
    """Make ``model`` (YOLOv3-tiny) predict, in every cell whatever the image:

    * stride 32, anchor 0 (81x82 px): class_indices[0];
    * stride 32, anchor 1 (box WBC_BOX px square): class_indices[1];
    * stride 16, anchor 0 (23x27 px): class_indices[2];

    each with objectness OBJ_LOGIT and its CLASS_LOGITS entry (all other classes and anchors
    off). ``noise`` > 0 adds random detection-conv weights, so outputs then depend on the image
    (no ties between scores).
    """
    generator = torch.Generator().manual_seed(0)
    plan = {32: {0: (0, None), 1: (1, WBC_BOX)}, 16: {0: (2, None)}}
    for conv, stride, anchors in zip(
        model.detection_layers(), model.strides, model.anchors, strict=True
    ):
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * noise)
        bias = conv.bias.view(model.num_anchors, model.num_outputs)
        bias[:] = 0
        bias[:, 4:] = OFF_LOGIT
        for anchor, (which, box) in plan.get(stride, {}).items():
            bias[anchor, 4] = OBJ_LOGIT
            bias[anchor, 5 + class_indices[which]] = CLASS_LOGITS[which]
            if box is not None:
                bias[anchor, 2] = math.log(box / float(anchors[anchor][0]))
                bias[anchor, 3] = math.log(box / float(anchors[anchor][1]))
    return model.eval()


def write_bccd_weights(path: Path, *, img_size: int = IMG_SIZE, noise: float = 0.0) -> Path:
    model = rig_model(build_model("yolov3-tiny", num_classes=3), (0, 1, 2), noise)
    metadata = {
        "model": "yolov3-tiny",
        "class_names": list(BLOOD),
        "img_size": img_size,
        "dataset": "rigged",
        "epochs": 1,
        "batch": 1,
    }
    save_trained_model(path, model, metadata)
    return path


def write_coco_weights(path: Path) -> Path:
    model = rig_model(build_model("yolov3-tiny", num_classes=80), COCO_RIGGED_INDICES)
    save_darknet_weights(model, path)
    return path


def expected_detections(side: int, names: tuple[str, ...] = BLOOD) -> list[tuple[str, tuple]]:
    """What a rigged model finds in a square ``side`` x ``side`` image (no letterbox padding):
    one box per grid cell and predicted class, mapped back by side / IMG_SIZE and clipped."""
    scale = side / IMG_SIZE
    found = []
    for stride, anchor_wh, name in (
        (32, (81.0, 82.0), names[0]),
        (32, (WBC_BOX, WBC_BOX), names[1]),
        (16, (23.0, 27.0), names[2]),
    ):
        cells = IMG_SIZE // stride
        for gy in range(cells):
            for gx in range(cells):
                cx, cy = (gx + 0.5) * stride, (gy + 0.5) * stride
                w, h = anchor_wh
                box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
                box = [min(max(v * scale, 0.0), side) for v in box]
                found.append((name, tuple(round(v, 1) for v in box)))
    return sorted(found)


def smear_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    from detbench.data.synthetic import render_synthetic_image

    image, _ = render_synthetic_image(np.random.default_rng(seed), width, height)
    return image


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, data = cv2.imencode(ext, image)
    assert ok
    return data.tobytes()


def png_header_only(width: int, height: int, payload: int = 1000) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` followed by a little compressed data:
    decoding it in full would allocate width * height * 3 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(payload)))
        + chunk(b"IEND", b"")
    )


def post_image(client: Any, data: bytes | None, **fields: str) -> Any:
    form: dict[str, Any] = dict(fields)
    if data is not None:
        form["image"] = (io.BytesIO(data), "upload.png")
    return client.post("/api/detect", data=form, content_type="multipart/form-data")


def without_timings(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k not in ("inference_ms", "total_ms")}


def multipart(fields: dict[str, str], image: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="x.png"\r\n'
        "Content-Type: image/png\r\n\r\n".encode()
        + image
        + b"\r\n"
    )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """The app on a real werkzeug server on 127.0.0.1 (free port), in a thread."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def http_post_detect(url: str, image: bytes, **fields: str) -> tuple[int, dict[str, Any]]:
    body, content_type = multipart(fields, image)
    request = urllib.request.Request(
        f"{url}/api/detect", data=body, headers={"Content-Type": content_type}, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("web-models")
    return {
        "bccd": write_bccd_weights(folder / "weights.pt"),
        "coco": write_coco_weights(folder / "yolov3-tiny.weights"),
    }


@pytest.fixture(scope="module")
def config(model_files: dict[str, Path]) -> WebConfig:
    return WebConfig(
        bccd_model=model_files["bccd"],
        coco_weights=model_files["coco"],
        coco_img_size=IMG_SIZE,
        device="cpu",
    )


@pytest.fixture(scope="module")
def app(config: WebConfig) -> Any:
    return create_app(config)


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def registry(app: Any) -> ModelRegistry:
    return app.extensions["detbench"]["registry"]


# --------------------------------------------------------------------------------------------
# Page and health
# --------------------------------------------------------------------------------------------


def test_healthz_reports_models_and_device(client: Any, model_files: dict[str, Path]) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ok"
    assert body["device"] == "cpu"
    bccd, coco = body["models"]["bccd"], body["models"]["coco"]
    assert bccd["loaded"] and coco["loaded"]
    assert bccd["classes"] == list(BLOOD) and bccd["img_size"] == IMG_SIZE
    assert bccd["source"] == str(model_files["bccd"])
    assert coco["architecture"] == "yolov3-tiny"  # told from the file size
    assert len(coco["classes"]) == 80


def test_page_has_file_chooser_checkbox_slider_and_predict(client: Any) -> None:
    page = client.get("/").get_data(as_text=True)
    assert 'type="file" id="image"' in page
    checkbox = page[page.index('id="blood-cells"') : page.index("Blood cells:")]
    assert "disabled" not in checkbox and "checked" not in checkbox  # both models: user picks
    assert 'id="confidence"' in page and 'value="0.25"' in page
    assert 'id="predict"' in page
    assert "not available" not in page


@pytest.mark.parametrize("present", ["bccd", "coco"])
def test_page_says_which_model_is_absent(
    present: str, model_files: dict[str, Path], tmp_path: Path
) -> None:
    missing = tmp_path / "missing.file"
    config = WebConfig(
        bccd_model=model_files["bccd"] if present == "bccd" else missing,
        coco_weights=model_files["coco"] if present == "coco" else missing,
        coco_img_size=IMG_SIZE,
        device="cpu",
    )
    client = create_app(config).test_client()
    page = client.get("/").get_data(as_text=True)
    absent = "coco" if present == "bccd" else "bccd"
    assert f'id="{absent}-absent"' in page and f"{missing} not found" in page
    checkbox = page[page.index('id="blood-cells"') : page.index("Blood cells:")]
    assert "disabled" in checkbox
    assert ("checked" in checkbox) == (present == "bccd")
    health = client.get("/healthz").get_json()
    assert health["models"][absent] == {
        "loaded": False,
        "title": health["models"][absent]["title"],
        "reason": f"{missing} not found",
    }
    response = post_image(client, encode(smear_image(64, 64)), model=absent)
    assert response.status_code == 400
    assert "not available" in response.get_json()["error"]
    # Without a "model" field the API uses the model that is there.
    assert post_image(client, encode(smear_image(64, 64))).get_json()["model"] == present


# --------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------


def assert_detections(body: dict[str, Any], expected: list[tuple[str, tuple]]) -> None:
    """The answer's (class, box) pairs are ``expected`` (boxes to the API's 0.1 px rounding)."""
    found = sorted((d["class"], tuple(d["box"])) for d in body["detections"])
    assert [name for name, _ in found] == [name for name, _ in expected]
    for (_, box), (_, want) in zip(found, expected, strict=True):
        assert box == pytest.approx(want, abs=0.06)


@pytest.mark.parametrize("side", [128, 300])
def test_bccd_detections_and_counts(client: Any, side: int) -> None:
    response = post_image(client, encode(smear_image(side, side)), model="bccd")
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    assert body["model"] == "bccd" and body["architecture"] == "yolov3-tiny"
    assert (body["width"], body["height"]) == (side, side)
    assert body["confidence"] == 0.25  # the default
    assert_detections(body, expected_detections(side))
    assert body["counts"] == {"RBC": 16, "WBC": 16, "Platelets": 64}
    assert body["counts"] == dict(Counter(d["class"] for d in body["detections"]))
    scores = dict(zip(BLOOD, rigged_scores(), strict=True))
    for detection in body["detections"]:
        assert detection["score"] == pytest.approx(scores[detection["class"]], abs=1e-4)
    assert body["inference_ms"] > 0
    assert "annotated_image" not in body  # only on request


@pytest.mark.parametrize(
    ("confidence", "counts"),
    [
        ("0.5", {"RBC": 16, "WBC": 16}),
        ("0.2", {"RBC": 16, "WBC": 16, "Platelets": 64}),
        ("0.95", {}),
    ],
)
def test_confidence_threshold_filters(client: Any, confidence: str, counts: dict) -> None:
    body = post_image(client, encode(smear_image(96, 96)), confidence=confidence).get_json()
    assert body["confidence"] == float(confidence)
    assert body["counts"] == counts
    assert all(d["score"] > float(confidence) for d in body["detections"])


def test_coco_model(client: Any) -> None:
    body = post_image(client, encode(smear_image(256, 256)), model="coco").get_json()
    assert body["model"] == "coco" and body["architecture"] == "yolov3-tiny"
    assert body["nms_iou"] == DARKNET_NMS_IOU  # the NMS that ran, not the app's default
    assert body["counts"] == {"person": 16, "car": 16, "dog": 64}
    assert_detections(body, expected_detections(256, COCO_RIGGED))


def test_non_square_image_boxes_stay_inside(client: Any) -> None:
    body = post_image(client, encode(smear_image(320, 120))).get_json()
    assert (body["width"], body["height"]) == (320, 120)
    assert body["detections"]  # some cells lie on the image, others only in the padding
    for detection in body["detections"]:
        x0, y0, x1, y1 = detection["box"]
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 120
    assert sum(body["counts"].values()) == len(body["detections"])


def decode_data_url(url: str) -> np.ndarray:
    prefix = "data:image/png;base64,"
    assert url.startswith(prefix)
    image = cv2.imdecode(np.frombuffer(base64.b64decode(url[len(prefix) :]), np.uint8), 1)
    assert image is not None
    return image


@pytest.mark.parametrize(
    ("width", "height", "shown"), [(300, 200, (300, 200)), (2000, 500, (1280, 320))]
)
def test_annotated_image_on_request(
    client: Any, width: int, height: int, shown: tuple[int, int]
) -> None:
    original = smear_image(width, height)
    body = post_image(client, encode(original), annotate="1").get_json()
    drawn = decode_data_url(body["annotated_image"])
    assert (drawn.shape[1], drawn.shape[0]) == shown == tuple(body["annotated_size"])
    preview = cv2.resize(original, shown, interpolation=cv2.INTER_AREA)
    # Uploads over max_decode_side are decoded reduced, so their preview differs from a
    # direct resize by a few grey levels: count only what drawing changed.
    changed = (np.abs(drawn.astype(int) - preview.astype(int)).max(axis=2) > 16).mean()
    assert 0.01 < changed < 0.9  # boxes and labels drawn, the image still there


def test_app_agrees_with_evaluation(tmp_path: Path) -> None:
    """The app's detections above confidence c are the evaluation's (predict_split) above c,
    in original-image pixels, for a letterboxed (non-square) image."""
    weights = write_bccd_weights(tmp_path / "noisy.pt", img_size=160, noise=0.02)
    served = load_bccd_model(weights, torch.device("cpu"))
    image = smear_image(300, 180, seed=3)
    path = tmp_path / "smear.png"  # lossless, so OpenCV and Pillow see the same pixels
    cv2.imwrite(str(path), image)
    confidence = 0.3

    app_found = served.predict(
        decode_image(path.read_bytes(), 10**7), confidence, InferenceSettings()
    )
    record = ImageRecord("smear", path, 300, 180, np.zeros((0, 5), dtype=np.float32))
    settings = EvalSettings(conf_threshold=confidence, batch_size=1)
    evaluated, _, _ = predict_split(
        served.model, DetectionDataset([record], 160), settings, TrainHyperparameters(),
        torch.device("cpu"), amp=False,
    )  # fmt: skip
    reference = evaluated["smear"]
    boxes = reference.boxes
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # the app drops no-area boxes
    assert len(app_found.detections) > 5
    np.testing.assert_allclose(app_found.detections.boxes, boxes[keep], atol=1e-4)
    np.testing.assert_allclose(app_found.detections.scores, reference.scores[keep], atol=1e-6)
    np.testing.assert_array_equal(app_found.detections.classes, reference.classes[keep])


# --------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------


def test_decoding_matches_opencv_for_jpeg_with_exif_rotation() -> None:
    """The evaluation reads images with cv2.imread (EXIF orientation applied); the app's
    Pillow decoding must give the same pixels."""
    image = smear_image(160, 96, seed=5)
    plain = encode(image, ".jpg")
    # Both decode with libjpeg-turbo's defaults (identical on BCCD); 1 level of slack allows
    # for another build, while a channel swap or a missed rotation is far off.
    reference = cv2.imdecode(np.frombuffer(plain, np.uint8), 1)
    assert np.abs(decode_image(plain, 10**6).astype(int) - reference.astype(int)).max() <= 1
    rgb = Image.fromarray(np.ascontiguousarray(image[:, :, ::-1]))
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    buffer = io.BytesIO()
    rgb.save(buffer, "JPEG", quality=92, exif=exif.tobytes())
    rotated = buffer.getvalue()
    decoded = decode_image(rotated, 10**6)
    assert decoded.shape == (160, 96, 3)
    reference = cv2.imdecode(np.frombuffer(rotated, np.uint8), 1)
    assert reference.shape == decoded.shape
    assert np.abs(decoded.astype(int) - reference.astype(int)).max() <= 1


def test_grey_and_transparent_images_become_three_channels() -> None:
    grey = encode(np.full((20, 30), 90, np.uint8))
    assert decode_image(grey, 10**6).shape == (20, 30, 3)
    rgba = io.BytesIO()
    Image.new("RGBA", (30, 20), (10, 20, 30, 0)).save(rgba, "PNG")
    assert decode_image(rgba.getvalue(), 10**6)[0, 0].tolist() == [30, 20, 10]


def test_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import ImageFile

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("decoded an image over the pixel limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    with pytest.raises(ImageRejected, match=r"6000x6000 = 36,000,000 pixels.*25,000,000"):
        decode_image(png_header_only(6000, 6000), 25_000_000)
    # 2.5 gigapixels: Pillow's own guard fires while reading the header; same answer.
    with pytest.raises(ImageRejected, match="too large"):
        decode_image(png_header_only(50_000, 50_000), 25_000_000)


# --------------------------------------------------------------------------------------------
# Error paths of the API
# --------------------------------------------------------------------------------------------


def error_of(response: Any, status: int) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.is_json
    message = response.get_json()["error"]
    assert isinstance(message, str) and message and "\n" not in message
    return message


def test_upload_over_the_limit_is_413(config: WebConfig, registry: ModelRegistry) -> None:
    small = WebConfig(**{**config.__dict__, "max_upload_mb": 0.05})  # 52,428 bytes
    client = create_app(small, registry=registry).test_client()
    rng = np.random.default_rng(0)
    noise = encode(rng.integers(0, 255, (200, 200, 3), dtype=np.uint8))  # ~120 kB PNG
    assert len(noise) > small.max_upload_bytes
    message = error_of(post_image(client, noise), 413)
    assert "at most 0.05 MiB (52,428 bytes)" in message
    assert post_image(client, encode(smear_image(64, 64))).status_code == 200
    # A real server answers before reading the whole body; the client still gets the JSON.
    with ServerThread(client.application) as server:
        status, body = http_post_detect(server.url, noise * 20)
    assert status == 413 and body["error"] == message


def jpeg_bytes() -> bytes:
    return encode(smear_image(200, 150), ".jpg")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", "empty"),
        (b"hello, this is text and not an image\n" * 10, "not a supported image"),
        (b"%PDF-1.4\n" + bytes(500), "not a supported image"),
        (b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4, "image"),  # JPEG magic, garbage after
        (jpeg_bytes()[: len(jpeg_bytes()) // 2], "truncated"),
        (encode(smear_image(200, 150))[:-400], "truncated"),
        (png_header_only(400, 300), "truncated"),  # header fine, pixel data missing
    ],
    ids=["empty", "text", "pdf", "corrupt-jpeg", "truncated-jpeg", "truncated-png", "no-pixels"],
)
def test_bad_files_are_400(client: Any, data: bytes, expected: str) -> None:
    message = error_of(post_image(client, data), 400)
    assert message.startswith("image: ")
    assert expected in message


def test_too_many_pixels_is_400(config: WebConfig, registry: ModelRegistry) -> None:
    limited = WebConfig(**{**config.__dict__, "max_pixels": 10_000})
    client = create_app(limited, registry=registry).test_client()
    message = error_of(post_image(client, encode(smear_image(200, 100))), 400)
    assert "200x100 = 20,000 pixels" in message and "10,000" in message
    assert post_image(client, encode(smear_image(100, 100))).status_code == 200


def test_decompression_bomb_is_400(client: Any) -> None:
    bomb = png_header_only(40_000, 40_000, payload=2_000_000)  # ~2 kB claiming 1.6 gigapixels
    assert len(bomb) < 10_000
    assert "too large" in error_of(post_image(client, bomb), 400)


@pytest.mark.parametrize(
    ("fields", "with_image", "expected"),
    [
        ({}, False, "no file in the form field 'image'"),
        ({"model": "yolo9000"}, True, "unknown model 'yolo9000'"),
        ({"confidence": "abc"}, True, "not a number"),
        ({"confidence": "nan"}, True, "between"),
        ({"confidence": "1.5"}, True, "between"),
        ({"confidence": "-0.1"}, True, "between"),
        ({"confidence": "0"}, True, "between"),
    ],
)
def test_bad_requests_are_400(client: Any, fields: dict, with_image: bool, expected: str) -> None:
    data = encode(smear_image(64, 64)) if with_image else None
    assert expected in error_of(post_image(client, data, **fields), 400)


def test_wrong_method_and_path_answer_json(client: Any) -> None:
    assert error_of(client.get("/api/detect"), 405)
    assert error_of(client.get("/api/nothing"), 404)


def test_uploads_are_not_written_to_disk(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Werkzeug would spool this 2 MB upload to a temporary file; the app keeps it in memory
    (checked on a real server: the test client has temporary files of its own)."""
    import werkzeug.formparser

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload went to a temporary file")

    for name in ("TemporaryFile", "NamedTemporaryFile", "SpooledTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, no_disk)
    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", no_disk)
    big = encode(np.random.default_rng(1).integers(0, 255, (900, 900, 3), dtype=np.uint8))
    assert len(big) > 2_000_000
    with ServerThread(app) as server:
        status, body = http_post_detect(server.url, big)
    assert status == 200, body
    assert body["width"] == 900
    # The patch is effective: Werkzeug's default stream factory now fails for such an upload.
    with pytest.raises(AssertionError, match="temporary file"):
        werkzeug.formparser.default_stream_factory(len(big), "image/png", "x.png")


# --------------------------------------------------------------------------------------------
# Concurrency
# --------------------------------------------------------------------------------------------


def test_twenty_concurrent_requests_on_a_real_server(app: Any, client: Any) -> None:
    """20 different images from 20 threads at once against werkzeug's threaded server; each
    answer must be the one the test client gave for that image alone."""
    cases = []
    for i in range(20):
        width, height = 96 + 16 * i, 200 - 5 * i
        model = "coco" if i % 4 == 3 else "bccd"
        image = encode(smear_image(width, height, seed=i))
        expected = post_image(client, image, model=model, confidence="0.3").get_json()
        cases.append((image, model, expected))

    results: list[Any] = [None] * len(cases)
    barrier = threading.Barrier(len(cases))

    def worker(index: int) -> None:
        image, model, _ = cases[index]
        barrier.wait()
        results[index] = http_post_detect(server.url, image, model=model, confidence="0.3")

    with ServerThread(app) as server:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(cases))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
    for (_, model, expected), (status, body) in zip(cases, results, strict=True):
        assert status == 200, body
        assert without_timings(body) == without_timings(expected)
        assert body["model"] == model


# --------------------------------------------------------------------------------------------
# Loading, picking the best cell, detbench serve
# --------------------------------------------------------------------------------------------


def test_coco_architecture_from_file_size() -> None:
    assert coco_architecture_for_size(248_007_048) == "yolov3"  # the official file
    assert coco_architecture_for_size(35_434_956) == "yolov3-tiny"
    assert coco_architecture_for_size(248_007_048 - 4) == "yolov3"  # int32 "seen" header
    assert coco_architecture_for_size(35_434_956 + 4) is None
    assert coco_architecture_for_size(0) is None


def test_wrong_coco_weights_size_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "yolov3.weights"
    bad.write_bytes(bytes(1000))
    with pytest.raises(DetbenchError, match=r"yolov3.weights: 1,000 bytes is not the size") as info:
        load_coco_model(bad, torch.device("cpu"))
    assert "\n" not in str(info.value)


def test_bccd_model_must_have_blood_cell_classes(tmp_path: Path) -> None:
    path = tmp_path / "weights.pt"
    save_trained_model(
        path,
        build_model("yolov3-tiny", num_classes=2),
        {"model": "yolov3-tiny", "class_names": ["cat", "dog"], "img_size": 64},
    )
    with pytest.raises(DetbenchError, match=r"weights.pt: trained for classes \['cat', 'dog'\]"):
        load_bccd_model(path, torch.device("cpu"))


def test_no_model_at_all_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError, match="no model to serve"):
        ModelRegistry.from_files(
            torch.device("cpu"), bccd_model=tmp_path / "a.pt", coco_weights=tmp_path / "b.w"
        )


SUMMARY_COLUMNS = ("platform", "dataset", "model", "batch", "epochs", "eval_split", "map50")


def make_results(root: Path, rows: list[tuple], with_weights: set[int] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    with (root / "summary.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(SUMMARY_COLUMNS)
        for index, row in enumerate(rows):
            writer.writerow(row)
            platform, _, model, batch, epochs = row[:5]
            if with_weights is None or index in with_weights:
                cell = root / platform / model / f"b{batch}_e{epochs}"
                cell.mkdir(parents=True, exist_ok=True)
                (cell / "weights.pt").write_bytes(b"")
    return root


def test_best_cell_prefers_bccd_then_map50(tmp_path: Path) -> None:
    rows = [
        ("p40", "bccd", "yolov3", 8, 20, "test", 0.61),
        ("colab", "bccd", "yolov3-tiny", 16, 20, "test", 0.72),
        ("colab", "bccd", "yolov3", 32, 20, "test", 0.95),  # best, but its weights are gone
        ("demo-cpu", "synthetic", "yolov3", 8, 6, "test", 0.80),
        ("coco-gpu", "coco-val2017", "yolov3", 8, 6, "val2017", 0.99),
        ("p40", "bccd", "yolov3", 4, 1, "test", "nan"),
    ]
    results = make_results(tmp_path / "results", rows, with_weights={0, 1, 3, 4, 5})
    best = best_bccd_cell(results)
    assert (best.platform, best.model, best.batch, best.epochs) == ("colab", "yolov3-tiny", 16, 20)
    assert best.weights == results / "colab" / "yolov3-tiny" / "b16_e20" / "weights.pt"
    assert "colab/yolov3-tiny/b16_e20" in best.describe() and "0.7200" in best.describe()


def test_best_cell_falls_back_to_other_blood_cell_datasets(tmp_path: Path) -> None:
    rows = [
        ("demo-cpu", "synthetic", "yolov3", 8, 2, "test", 0.01),
        ("demo-cpu", "synthetic", "yolov3-tiny", 8, 6, "test", 0.02),
        ("coco-gpu", "coco-val2017", "yolov3", 8, 6, "val2017", 0.5),
    ]
    best = best_bccd_cell(make_results(tmp_path / "r", rows))
    assert (best.model, best.epochs, best.dataset) == ("yolov3-tiny", 6, "synthetic")


def test_best_cell_errors(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError, match=r"summary.csv: does not exist"):
        best_bccd_cell(tmp_path)
    rows = [("p", "coco-val2017", "yolov3", 8, 6, "val2017", 0.5)]
    with pytest.raises(DetbenchError, match="no evaluated blood-cell cell"):
        best_bccd_cell(make_results(tmp_path / "r", rows))


def test_cli_serve_picks_best_cell(tmp_path: Path, model_files: dict[str, Path]) -> None:
    from detbench.cli import build_parser, serve_config

    rows = [
        ("p40", "bccd", "yolov3-tiny", 8, 1, "test", 0.3),
        ("p40", "bccd", "yolov3-tiny", 8, 5, "test", 0.6),
    ]
    results = make_results(tmp_path / "results", rows)
    args = build_parser().parse_args(["serve", "--results", str(results), "--max-upload-mb", "2"])
    config = serve_config(args)
    assert config.bccd_model == results / "p40" / "yolov3-tiny" / "b8_e5" / "weights.pt"
    assert "p40/yolov3-tiny/b8_e5" in (config.bccd_origin or "")
    assert (config.max_upload_bytes, config.max_pixels, config.device) == (
        2 << 20,
        25_000_000,
        "auto",
    )
    assert config.coco_weights is None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "give --bccd-model PATH, --results DIR and/or --coco-weights PATH"),
        (["serve", "--bccd-model", "nowhere.pt"], "no model to serve"),
        (["serve", "--results", "nowhere"], "summary.csv: does not exist"),
        (["serve", "--coco-weights", "x.weights", "--device", "gpu0"], "--device gpu0: not a"),
        pytest.param(
            ["serve", "--coco-weights", "x.weights", "--device", "cuda"],
            "--device cuda: no CUDA GPU here",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present"),
        ),
    ],
)
def test_cli_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from detbench.cli import main

    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("detbench error: ") and message in err[-1]


@pytest.mark.parametrize("argv", [["serve", "--port", "70000"], ["serve", "--max-pixels", "0"]])
def test_cli_rejects_bad_options(argv: list[str]) -> None:
    from detbench.cli import main

    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2


@pytest.fixture
def served_cli(tmp_path: Path, model_files: dict[str, Path]) -> Iterator[str]:
    results = make_results(tmp_path / "results", [("p", "bccd", "yolov3-tiny", 4, 2, "test", 0.5)])
    target = results / "p" / "yolov3-tiny" / "b4_e2" / "weights.pt"
    target.write_bytes(model_files["bccd"].read_bytes())
    port = free_port()
    command = [
        sys.executable, "-m", "detbench.cli", "serve", "--results", str(results),
        "--port", str(port), "--device", "cpu",
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
        assert "picked the best cell p/yolov3-tiny/b4_e2" in output


@pytest.mark.slow
def test_detbench_serve_end_to_end(served_cli: str) -> None:
    with urllib.request.urlopen(f"{served_cli}/healthz", timeout=10) as response:
        health = json.loads(response.read())
    assert health["models"]["bccd"]["loaded"] and not health["models"]["coco"]["loaded"]
    assert "best cell p/yolov3-tiny/b4_e2" in health["models"]["bccd"]["description"]
    status, body = http_post_detect(served_cli, encode(smear_image(128, 128)), model="bccd")
    assert status == 200 and body["counts"] == {"RBC": 16, "WBC": 16, "Platelets": 64}


def test_coco_slot_prepares_input_as_darknet_does(tmp_path: Path) -> None:
    served = load_coco_model(
        write_coco_weights(tmp_path / "yolov3-tiny.weights"), torch.device("cpu"), IMG_SIZE
    )
    wide = np.full((IMG_SIZE // 2, IMG_SIZE, 3), 255, dtype=np.uint8)
    batch, placement = served.preprocess(wide)
    assert batch.dtype == torch.float32 and batch.shape == (1, 3, IMG_SIZE, IMG_SIZE)
    band = IMG_SIZE // 4  # half the height is padding, split above and below
    assert torch.all(batch[0, :, : band - 1] == 0.5)  # Darknet's grey, not 114/255
    assert torch.all(batch[0, :, band + 1 : IMG_SIZE - band - 1] == 1.0)
    assert isinstance(placement, DarknetPlacement)
    assert served.nms_iou == DARKNET_NMS_IOU == 0.45


# --------------------------------------------------------------------------------------------
# Under load: a real `detbench serve` (waitress) on loopback, its peak memory measured
# --------------------------------------------------------------------------------------------

# The peak resident memory `detbench serve` may reach under the load below (default settings:
# --concurrency 2). docs/web-app.md ("Serving under load") and deploy/kubernetes/deployment.yaml
# quote this figure; the test checks that they do.
LOAD_TEST_PEAK_RSS_MIB = 1280


# As the Dockerfile and the Kubernetes manifest run it: one core per forward pass, and glibc
# mmaps decoded images of 4 MiB and more on their own, so they are returned when freed.
SERVER_ENV = {"OMP_NUM_THREADS": "1", "MALLOC_MMAP_THRESHOLD_": "4194304"}


def _peak_rss_mib(pid: int) -> float:
    """VmHWM: the process's peak resident set since it started (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text(encoding="utf-8").splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM in /proc/<pid>/status")


def _load_test_uploads() -> list[tuple[str, bytes]]:
    """10 photos of 5000x5000 (the default pixel limit) and 10 pixel bombs: 5 PNGs at the
    limit that decode to 75 MB from ~30 kB, and 5 whose header claims 2.5 gigapixels."""
    photo = cv2.resize(smear_image(500, 500), (5000, 5000), interpolation=cv2.INTER_LINEAR)
    jpeg = encode(photo, ".jpg")
    flat = encode(np.full((5000, 5000, 3), 200, dtype=np.uint8), ".png")
    del photo
    huge = png_header_only(50_000, 50_000)
    return [("photo", jpeg)] * 10 + [("bomb", flat)] * 5 + [("bomb", huge)] * 5


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_server_memory_under_concurrent_large_uploads(
    tmp_path: Path, model_files: dict[str, Path], repo_root: Path
) -> None:
    uploads = _load_test_uploads()
    port = free_port()
    command = [
        sys.executable, "-m", "detbench.cli", "serve", "--bccd-model", str(model_files["bccd"]),
        "--port", str(port), "--device", "cpu", "--queue-timeout", "60",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path,
        env={**os.environ, **SERVER_ENV, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(url, process)
        idle = _peak_rss_mib(process.pid)
        answers: list[tuple[str, int, dict[str, Any]]] = []

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
    print(f"detbench serve peak RSS: idle {idle:.0f} MiB, under load {peak:.0f} MiB")
    assert len(answers) == len(uploads), output
    assert {status for _, status, _ in answers} <= {200, 400, 503}, answers
    photos = [body for kind, status, body in answers if kind == "photo" and status == 200]
    assert photos and all((b["width"], b["height"]) == (5000, 5000) for b in photos), answers
    assert peak < LOAD_TEST_PEAK_RSS_MIB, f"peak RSS {peak:.0f} MiB (idle {idle:.0f} MiB)"
    quoted = f"{LOAD_TEST_PEAK_RSS_MIB} MiB"
    assert quoted in (repo_root / "docs/web-app.md").read_text(encoding="utf-8")
    manifest = (repo_root / "deploy/kubernetes/deployment.yaml").read_text(encoding="utf-8")
    assert quoted in manifest


def _wait_until_healthy(url: str, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5):
                return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                output = process.stdout.read() if process.stdout else ""
                raise AssertionError(f"detbench serve did not start: {output}") from None
            time.sleep(0.3)
