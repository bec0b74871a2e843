"""The official Darknet starting weights: where to get them, how to check them, how to load them.

Config per model: ``weights: scratch | backbone | coco``.

=============  ===========  ========================  ======  ==================================
model          kind         file                      cutoff  what loads
=============  ===========  ========================  ======  ==================================
yolov3         coco         ``yolov3.weights``        all     everything but the detection convs
yolov3         backbone     ``darknet53.conv.74``     75      Darknet-53 (layers 0-74)
yolov3-tiny    coco         ``yolov3-tiny.weights``   all     everything but the detection convs
yolov3-tiny    backbone     ``yolov3-tiny.weights``   15      layers 0-14
=============  ===========  ========================  ======  ==================================

There is no official download of tiny's backbone: AlexeyAB's Darknet README makes it with
``darknet partial cfg/yolov3-tiny.cfg yolov3-tiny.weights yolov3-tiny.conv.15 15``, which writes
the first 15 layers of the COCO file. Loading ``yolov3-tiny.weights`` with ``cutoff=15`` reads
exactly those values, so the full COCO file is downloaded and cut on load.

Files are checked before use: exact size, sha256 where a credible published value exists, and a
sane header. Where they are kept is the caller's choice; :func:`default_weights_dir` gives a
shared cache (``$DETBENCH_WEIGHTS_DIR``, else ``$XDG_CACHE_HOME/detbench/weights``, else
``~/.cache/detbench/weights``). Offline users pass ``local_copy`` to :func:`fetch_weights`.

The ``darknet_*`` helpers at the end reproduce Darknet's own test-time preprocessing (float
bilinear resize, 0.5 grey letterbox) and box mapping, for evaluating the COCO weights the way
Darknet does; the study's own pipeline (114 grey, OpenCV resize) is the 2020 study's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
import shutil
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from detbench.atomic import sha256_file
from detbench.data.download import download
from detbench.errors import DetbenchError
from detbench.models.darknet import YOLO
from detbench.models.darknet_files import (
    WeightsFile,
    starting_weights,
)
from detbench.models.weights import (
    HEADER_BYTES_INT64_SEEN,
    MAX_VERSION,
    WeightsLoadReport,
    load_darknet_weights,
)

log = logging.getLogger(__name__)

ENV_WEIGHTS_DIR = "DETBENCH_WEIGHTS_DIR"


def default_weights_dir() -> Path:
    """Shared cache for downloaded weights: ``$DETBENCH_WEIGHTS_DIR``, else the XDG cache."""
    configured = os.environ.get(ENV_WEIGHTS_DIR)
    if configured:
        return Path(configured).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "detbench" / "weights"


# --------------------------------------------------------------------------------------------
# Verification and download
# --------------------------------------------------------------------------------------------


def _header_problem(path: Path) -> str | None:
    """What is wrong with a Darknet header (int32 major, minor, revision; int64 seen)."""
    with path.open("rb") as handle:
        head = handle.read(HEADER_BYTES_INT64_SEEN)
    if len(head) < HEADER_BYTES_INT64_SEEN:
        return f"too short for a Darknet header ({len(head)} bytes)"
    major, minor, revision, seen = struct.unpack("<iiiq", head)
    if not all(0 <= v < MAX_VERSION for v in (major, minor, revision)):
        return f"not a Darknet weights file: header version {major}.{minor}.{revision}"
    # Every size here assumes the 20-byte header; older files (< 0.2) store `seen` as int32.
    if major * 10 + minor < 2:
        return f"Darknet header v{major}.{minor}.{revision} has a 4-byte 'seen', expected v0.2+"
    if seen < 0:
        return f"not a Darknet weights file: header says {seen} images seen"
    return None


def _file_problem(path: Path, file: WeightsFile) -> str | None:
    """One line saying why ``path`` is not ``file``, or None when it checks out."""
    try:
        size = path.stat().st_size
        if not path.is_file():
            return "not a regular file"
        if size != file.size:
            return f"size mismatch: expected {file.size} bytes, got {size} bytes"
        if file.sha256 is not None:
            actual = sha256_file(path)
            if actual != file.sha256.lower():
                return f"sha256 mismatch: expected {file.sha256.lower()}, got {actual}"
        return _header_problem(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot read ({exc.strerror})"


def verify_weights(file: WeightsFile, path: str | os.PathLike[str]) -> None:
    """Raise a one-line DetbenchError naming ``path`` unless it is ``file`` (size/sha256/header)."""
    path = Path(path)
    problem = _file_problem(path, file)
    if problem is not None:
        raise DetbenchError(f"{path}: {problem} (expected {file.name})")


@contextlib.contextmanager
def _locked(dest_dir: Path, name: str) -> Iterator[None]:
    """Serialise fetches of one file: parallel jobs sharing a cache would otherwise write the
    same ``.part`` file at once. Works across processes and threads (one open file each)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    with (dest_dir / f".{name}.lock").open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _install_local_copy(source: Path, dest: Path) -> None:
    """Hard-link ``source`` to ``dest`` (no 248 MB copy) or copy it; atomic either way."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed
            shutil.copyfile(source, tmp)
            with tmp.open("rb+") as handle:
                os.fsync(handle.fileno())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def fetch_weights(
    file: WeightsFile,
    dest_dir: str | os.PathLike[str],
    *,
    retries: int = 5,
    backoff_s: float = 1.0,
    progress: bool | None = None,
    timeout_s: float = 60,
    local_copy: str | os.PathLike[str] | None = None,
) -> Path:
    """``dest_dir/<file.name>``, verified; downloaded (or taken from ``local_copy``) if needed.

    An existing verified file is reused without any request; one that fails verification is
    replaced. ``local_copy`` (offline use): a file that must pass the same checks; it is linked
    or copied into ``dest_dir``. Otherwise the URLs are tried in order (each with ``retries``
    and resume, see :func:`detbench.data.download.download`); a file that fails verification is
    deleted and the next URL tried. If all fail: one DetbenchError listing each URL's problem.
    """
    dest_dir = Path(dest_dir)
    dest = dest_dir / file.name
    with _locked(dest_dir, file.name):
        if dest.is_dir():
            raise DetbenchError(f"{dest}: is a directory, expected the file {file.name}")
        if dest.exists():
            problem = _file_problem(dest, file)
            if problem is None:
                return dest
            log.warning("%s: %s; fetching it again", dest, problem)
            dest.unlink()
        if local_copy is not None:
            source = Path(local_copy).expanduser()
            verify_weights(file, source)
            _install_local_copy(source, dest)
            log.info("%s: verified local copy %s", dest, source)
            return dest
        return _download_first_good(file, dest, retries, backoff_s, progress, timeout_s)


def _download_first_good(
    file: WeightsFile,
    dest: Path,
    retries: int,
    backoff_s: float,
    progress: bool | None,
    timeout_s: float,
) -> Path:
    if not file.urls:
        raise DetbenchError(f"{file.name}: no download URL; pass a local copy")
    part = dest.with_suffix(dest.suffix + ".part")
    failures: list[str] = []
    for index, url in enumerate(file.urls):
        if index:
            # A mirror does not resume the previous server's partial bytes (its copy may
            # differ); whatever is resumed is still verified whole.
            part.unlink(missing_ok=True)
        try:
            download(
                url,
                dest,
                sha256=file.sha256,
                size=file.size,
                retries=retries,
                backoff_s=backoff_s,
                timeout_s=timeout_s,
                progress=progress,
            )
        except DetbenchError as exc:
            message = str(exc)
            failures.append(message if message.startswith(url) else f"{url}: {message}")
            continue
        problem = _header_problem(dest)
        if problem is None:
            log.info("%s: downloaded from %s", dest, url)
            return dest
        dest.unlink(missing_ok=True)
        failures.append(f"{url}: {problem}")
    raise DetbenchError(
        f"{file.name}: no usable download from {len(file.urls)} URL(s): " + "; ".join(failures)
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_pretrained(
    model: YOLO,
    kind: str,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
) -> WeightsLoadReport:
    """Load the ``kind`` starting weights at ``path`` into ``model`` (in place).

    Detection convs whose class count differs from the file's (80) keep their initialisation,
    as do the layers past a backbone's cutoff; except that with ``coco`` weights and
    ``class_names`` holding COCO's 80 classes in their order (a merged label space, see
    detbench.data.merge), those classes' detection rows come from the file too
    (:func:`load_coco_detection_rows`).
    """
    file = starting_weights(model.name, kind)
    if file is None:
        raise DetbenchError(f"models.{model.name}.weights: {kind!r} has no weights file to load")
    path = Path(path)
    report = load_darknet_weights(
        model, path, file_num_classes=file.file_num_classes, cutoff=file.cutoff
    )
    log.info("%s weights %s: %s", kind, path.name, describe_load(report, model, file))
    offset = coco_block_offset(class_names) if kind == "coco" and class_names else None
    if offset is not None and model.num_classes != file.file_num_classes:
        load_coco_detection_rows(model, path, offset)
        log.info(
            "%s: COCO's 80 class rows loaded into classes %d-%d; the other %d classes keep "
            "their initialisation",
            path.name,
            offset,
            offset + 79,
            model.num_classes - 80,
        )
    return report


def coco_block_offset(class_names: Sequence[str]) -> int | None:
    """Where COCO's 80 classes start in ``class_names``, in COCO's order; None if they are not
    all there as one block."""
    from detbench.data.coco import COCO_CLASSES

    names = tuple(class_names)
    for offset in range(len(names) - len(COCO_CLASSES) + 1):
        if names[offset : offset + len(COCO_CLASSES)] == COCO_CLASSES:
            return offset
    return None


def load_coco_detection_rows(model: YOLO, path: Path, offset: int) -> None:
    """Copy the COCO file's detection rows into a model with more classes (in place).

    Per anchor a detection conv has 5 + nc output rows (x, y, w, h, objectness, classes). The
    box and objectness rows and the 80 class rows (into classes ``offset`` .. ``offset + 79``)
    take the file's weights and biases, so the model starts detecting what the COCO model
    detects. The other classes' rows keep the model's initialisation: PyTorch's default conv
    weights (seeded) and the class-prior bias of :meth:`YOLO.initialize_biases`
    (``log(0.6 / (nc - 0.99))``), as with any new class.
    """
    import torch

    from detbench.models.build import build_model

    source = build_model(model.name, num_classes=80)
    load_darknet_weights(source, path)
    rows = [*range(5), *(5 + offset + c for c in range(80))]
    with torch.no_grad():
        for target, origin in zip(model.detection_layers(), source.detection_layers(), strict=True):
            assert target.bias is not None and origin.bias is not None
            weight = target.weight.view(model.num_anchors, model.num_outputs, -1)
            bias = target.bias.view(model.num_anchors, model.num_outputs)
            weight[:, rows] = origin.weight.view(source.num_anchors, source.num_outputs, -1)
            bias[:, rows] = origin.bias.view(source.num_anchors, source.num_outputs)


def describe_load(report: WeightsLoadReport, model: YOLO, file: WeightsFile) -> str:
    """E.g. ``loaded 360 tensors, skipped 6 (detection layers for 3 classes)``."""
    text = f"loaded {report.loaded_tensors} tensors, skipped {report.skipped_tensors}"
    if report.skipped_tensors:
        text += f" (detection layers for {model.num_classes} classes)"
    if file.cutoff is not None:
        text += f"; first {file.cutoff} Darknet layers only, the rest keep their initialisation"
    return text


def apply_starting_weights(
    model: YOLO,
    kind: str,
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    local_copy: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
) -> WeightsLoadReport | None:
    """Fetch (or reuse) and load ``kind`` weights into ``model``; None for ``scratch``."""
    file = starting_weights(model.name, kind)
    if file is None:
        return None
    directory = default_weights_dir() if cache_dir is None else Path(cache_dir)
    path = fetch_weights(file, directory, local_copy=local_copy, progress=progress)
    return load_pretrained(model, kind, path)


# --------------------------------------------------------------------------------------------
# Darknet's test-time preprocessing (image.c letterbox_image / resize_image) and box mapping
# (yolo_layer.c correct_yolo_boxes), for evaluating the official COCO weights as Darknet does.
# --------------------------------------------------------------------------------------------

DARKNET_PAD = 0.5  # letterbox_image: fill_image(boxed, .5)


def darknet_resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Darknet's ``resize_image`` on a (C, H, W) float32 array: separable bilinear with the
    corner pixels aligned (scale (W-1)/(w-1)) and no antialiasing, in Darknet's float32 order
    of operations (including its last-row quirk: the final row only gets the ``1 - dy`` term)."""
    image = np.asarray(image, dtype=np.float32)
    _, in_h, in_w = image.shape
    one = np.float32(1)

    def taps(out_len: int, in_len: int) -> tuple[np.ndarray, np.ndarray]:
        if out_len == 1 or in_len == 1:
            return np.zeros(out_len, np.int64), np.zeros(out_len, np.float32)
        scale = np.float32(in_len - 1) / np.float32(out_len - 1)
        s = np.arange(out_len, dtype=np.float32) * scale
        index = s.astype(np.int64)  # C's (int) truncation; s >= 0
        return index, s - index.astype(np.float32)

    ix, dx = taps(width, in_w)
    part = (one - dx) * image[:, :, ix] + dx * image[:, :, np.minimum(ix + 1, in_w - 1)]
    part[:, :, width - 1] = image[:, :, in_w - 1]  # `if (c == w-1 || im.w == 1)`
    iy, dy = taps(height, in_h)
    out = (one - dy)[None, :, None] * part[:, iy, :]
    if in_h > 1:
        rows = slice(0, height - 1)  # `if (r == h-1 || im.h == 1) continue;`
        below = np.minimum(iy[rows] + 1, in_h - 1)
        out[:, rows, :] += dy[rows][None, :, None] * part[:, below, :]
    return out


@dataclasses.dataclass(frozen=True)
class DarknetPlacement:
    """Where ``darknet_letterbox`` put the image: original size and the resized content size."""

    width: int
    height: int
    net_width: int
    net_height: int
    new_width: int
    new_height: int

    def to_original(self, boxes: np.ndarray) -> np.ndarray:
        """Network-input x0, y0, x1, y1 px -> original-image px, as ``correct_yolo_boxes``
        (which takes the half padding as a float and scales each axis separately)."""
        out = np.asarray(boxes, dtype=np.float64).copy()
        pad_x = (self.net_width - self.new_width) / 2.0
        pad_y = (self.net_height - self.new_height) / 2.0
        out[:, [0, 2]] = (out[:, [0, 2]] - pad_x) * (self.width / self.new_width)
        out[:, [1, 3]] = (out[:, [1, 3]] - pad_y) * (self.height / self.new_height)
        return out


def darknet_letterbox(
    image_rgb: np.ndarray, size: int, *, pad: float = DARKNET_PAD
) -> tuple[np.ndarray, DarknetPlacement]:
    """Darknet's ``letterbox_image`` of an (H, W, 3) uint8 RGB image: a (3, size, size) float32
    network input in [0, 1] and the placement for mapping boxes back."""
    height, width = image_rgb.shape[:2]
    # Pixels as load_image_color makes them: value / 255. (double), stored as float.
    chw = (image_rgb.transpose(2, 0, 1).astype(np.float64) / 255.0).astype(np.float32)
    if np.float32(size) / np.float32(width) < np.float32(size) / np.float32(height):
        new_w, new_h = size, (height * size) // width
    else:
        new_w, new_h = (width * size) // height, size
    resized = darknet_resize(chw, new_w, new_h)
    boxed = np.full((3, size, size), pad, dtype=np.float32)
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    boxed[:, y0 : y0 + new_h, x0 : x0 + new_w] = resized
    return boxed, DarknetPlacement(width, height, size, size, new_w, new_h)


# Thresholds of Darknet's own commands (pjreddie/darknet examples/darknet.c and detector.c):
# `detect`/`detector test` keep objectness and objectness*class > 0.5 ("-thresh", AlexeyAB's fork
# uses 0.25), per-class NMS at IoU 0.45; `detector valid` (the COCO results file) keeps > 0.005
# with NMS 0.45 and writes every surviving (box, class) pair, with no per-image cap.
DARKNET_DETECT_THRESHOLD = 0.5
DARKNET_VALID_THRESHOLD = 0.005
DARKNET_NMS_IOU = 0.45
