"""The shared disk image cache: the samples, batches and a few training steps it gives are
exactly those of decoding in memory; a job's resident memory does not grow with the number of
images; and a truncated, damaged, stale or half-built cache is never used as it is."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detbench.data.augment import AugmentSettings
from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.data.image_cache import (
    DATA_FILE,
    INDEX_FILE,
    CacheDamaged,
    build_from_manifest,
    open_image_cache,
)
from detbench.data.loader import make_train_loader
from detbench.data.synthetic import generate_synthetic_voc
from detbench.data.voc import convert_voc_to_yolo
from detbench.study.config import TrainHyperparameters, TrainSettings
from detbench.training.train import TrainOutputs, train

SRC = Path(__file__).resolve().parents[1] / "src"
CLASSES = ["RBC", "WBC", "Platelets"]
SIZE = 64  # network input of the small tests


def _dataset(root: Path, counts: dict[str, int], image_size: tuple[int, int]) -> Path:
    """A generated VOC dataset under ``root`` converted to YOLO; its manifest.json."""
    generate_synthetic_voc(root / "voc", num_images=counts, image_size=image_size, seed=0)
    convert_voc_to_yolo(
        root / "voc", root / "yolo", class_names=CLASSES, splits=list(counts), dataset_name="c"
    )
    return root / "yolo" / "manifest.json"


@pytest.fixture
def own_manifest(tmp_path: Path) -> Path:
    """A dataset of this test's own, whose source images a test may change."""
    return _dataset(tmp_path / "data", {"train": 6, "test": 3}, (128, 96))


def _cached(manifest_path: Path, folder: Path, *splits: str) -> DatasetManifest:
    """The manifest with a disk cache built for each of ``splits``."""
    for split in splits:
        build_from_manifest(manifest_path, split, SIZE, folder / split)
    return DatasetManifest.load(manifest_path, {split: folder / split for split in splits})


def _assert_same_samples(a: DetectionDataset, b: DetectionDataset, epochs: int = 2) -> None:
    for epoch in range(epochs):
        for index in range(len(a)):
            first, second = a.sample(index, epoch=epoch), b.sample(index, epoch=epoch)
            assert torch.equal(first.image, second.image), (epoch, index)
            assert torch.equal(first.targets, second.targets), (epoch, index)
            assert (first.image_id, first.letterbox) == (second.image_id, second.letterbox)


# --------------------------------------------------------------------------- same data


@pytest.mark.parametrize("augment", [None, AugmentSettings(mosaic=0.5)], ids=["eval", "train"])
def test_the_cache_gives_the_samples_decoding_gives(
    synthetic_manifest: Path, tmp_path: Path, augment: AugmentSettings | None
) -> None:
    """Pixel for pixel, letterboxed or augmented (mosaics included, which read 4 images)."""
    cached = _cached(synthetic_manifest, tmp_path, "train")
    memory = DatasetManifest.load(synthetic_manifest)
    disk = DetectionDataset.of_split(cached, "train", SIZE, augment=augment, seed=3)
    assert type(disk.images).__name__ == "DiskImages"
    _assert_same_samples(
        DetectionDataset.of_split(memory, "train", SIZE, augment=augment, seed=3), disk
    )


def test_loader_workers_read_the_cache_and_give_the_same_batches(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    """Forked workers open the data file themselves; the batches are those of decoding."""
    cached = _cached(synthetic_manifest, tmp_path, "train")
    settings = TrainSettings("yolov3-tiny", 3, 2, img_size=SIZE, hyp=TrainHyperparameters())
    batches = []
    before = cv2.getNumThreads()
    try:
        for manifest, workers in ((DatasetManifest.load(synthetic_manifest), 0), (cached, 2)):
            hyp = TrainHyperparameters(workers=workers, mosaic=0.5)
            loader = make_train_loader(
                manifest, TrainSettings(**{**settings.__dict__, "hyp": hyp}), torch.device("cpu")
            )
            batches.append(list(loader))
    finally:
        cv2.setNumThreads(before)
    assert len(batches[0]) == len(batches[1]) == 6
    for first, second in zip(*batches, strict=True):
        assert torch.equal(first.images, second.images)
        assert torch.equal(first.targets, second.targets)
        assert first.image_ids == second.image_ids


@pytest.mark.usefixtures("torch_threads")
def test_a_few_training_steps_give_the_same_losses_and_weights(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    """Two epochs of 2 steps each (with its interim evaluation on the test split's cache)."""
    from detbench.study.config import EvalSettings
    from detbench.training.train import InterimEvaluation

    hyp = TrainHyperparameters(workers=0, mosaic=0.5, eval_interval_epochs=1)
    settings = TrainSettings("yolov3-tiny", batch=4, epochs=2, img_size=SIZE, seed=0, hyp=hyp)
    caches = {split: tmp_path / "cache" / split for split in ("train", "test")}
    for split, folder in caches.items():
        build_from_manifest(synthetic_manifest, split, SIZE, folder)
    interim = InterimEvaluation("test", EvalSettings(batch_size=4))
    runs = {}
    for name, given in (("memory", None), ("disk", caches)):
        outputs = TrainOutputs.in_folder(tmp_path / name)
        train(
            settings,
            synthetic_manifest,
            outputs,
            threads=1,
            interim_evaluation=interim,
            image_caches=given,
        )
        runs[name] = outputs
    columns = ("train_total_loss", "train_box_loss", "eval_map50", "eval_total_loss")
    histories = [_history_columns(runs[name].history, columns) for name in ("memory", "disk")]
    assert histories[0] == histories[1]
    first, second = (
        torch.load(runs[name].weights, map_location="cpu", weights_only=True)["state_dict"]
        for name in ("memory", "disk")
    )
    assert all(torch.equal(first[key], second[key]) for key in first)


def _history_columns(path: Path, columns: tuple[str, ...]) -> list[tuple[str, ...]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return [tuple(row[c] for c in columns) for row in csv.DictReader(handle)]


# --------------------------------------------------------------------------- never misused


def _open(manifest_path: Path, folder: Path, split: str = "train") -> DetectionDataset:
    manifest = DatasetManifest.load(manifest_path, {split: folder})
    return DetectionDataset.of_split(manifest, split, SIZE)


def _reference(manifest_path: Path, split: str = "train") -> DetectionDataset:
    return DetectionDataset.of_split(DatasetManifest.load(manifest_path), split, SIZE)


def test_a_truncated_cache_is_rebuilt_with_a_warning(
    own_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = build_from_manifest(own_manifest, "train", SIZE, tmp_path / "cache")
    data = folder / DATA_FILE
    os.truncate(data, data.stat().st_size - 100)
    with caplog.at_level(logging.WARNING, logger="detbench.image_cache"):
        dataset = _open(own_manifest, folder)
    assert "rebuilding the image cache" in caplog.text and "truncated" in caplog.text
    _assert_same_samples(_reference(own_manifest), dataset, epochs=1)


def test_a_damaged_image_is_refused_and_the_next_job_rebuilds_the_cache(
    own_manifest: Path, tmp_path: Path
) -> None:
    """Bytes overwritten in place (same size, same sources): the read's CRC-32 catches it."""
    folder = build_from_manifest(own_manifest, "train", SIZE, tmp_path / "cache")
    first = json.loads((folder / INDEX_FILE).read_text())["images"][1]
    with open(folder / DATA_FILE, "r+b") as handle:
        handle.seek(first["offset"] + 10)
        handle.write(b"\x00\xff\x00\xff")
    dataset = _open(own_manifest, folder)
    dataset.sample(0)  # untouched images still read
    with pytest.raises(CacheDamaged, match="checksum"):
        dataset.sample(1)
    assert not (folder / INDEX_FILE).exists()
    _assert_same_samples(_reference(own_manifest), _open(own_manifest, folder), epochs=1)


@pytest.mark.parametrize("change", ["touched", "rewritten"])
def test_a_stale_cache_is_rebuilt_from_the_changed_sources(
    own_manifest: Path, tmp_path: Path, change: str, caplog: pytest.LogCaptureFixture
) -> None:
    folder = build_from_manifest(own_manifest, "train", SIZE, tmp_path / "cache")
    source = DatasetManifest.load(own_manifest).records("train")[2].path
    if change == "touched":
        stat = source.stat()
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    else:  # a colleague fixed the image: other pixels, the same name and size
        _rewrite_same_size(source, 255 - cv2.imread(str(source)))
    with caplog.at_level(logging.WARNING, logger="detbench.image_cache"):
        dataset = _open(own_manifest, folder)
    assert f"{source} changed since it was cached" in caplog.text
    _assert_same_samples(_reference(own_manifest), dataset, epochs=1)


def _rewrite_same_size(path: Path, image: np.ndarray) -> None:
    """``image`` as a JPEG of exactly ``path``'s size: decoders ignore bytes after its end
    marker (the dataset's manifest refuses a source whose size changed)."""
    size = path.stat().st_size
    for quality in range(95, 5, -5):
        data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()
        if len(data) <= size:
            path.write_bytes(data + bytes(size - len(data)))
            return
    raise AssertionError("no JPEG small enough")


def test_a_cache_for_other_images_or_settings_is_rebuilt(own_manifest: Path, tmp_path: Path):
    folder = build_from_manifest(own_manifest, "test", SIZE, tmp_path / "cache")
    _assert_same_samples(_reference(own_manifest), _open(own_manifest, folder), epochs=1)
    build_from_manifest(own_manifest, "train", SIZE * 2, folder)
    _assert_same_samples(_reference(own_manifest), _open(own_manifest, folder), epochs=1)


_SLOW_BUILD = """
import sys, time
sys.path.insert(0, {src!r})
from detbench.data import image_cache
decode = image_cache.decode
def slow(record, img_size):
    print("decoding", record.id, flush=True)
    time.sleep(0.5)
    return decode(record, img_size)
image_cache.decode = slow
image_cache.build_from_manifest({manifest!r}, "train", {size}, {folder!r})
"""


def test_a_killed_build_leaves_no_complete_looking_cache(own_manifest: Path, tmp_path: Path):
    """SIGKILL half-way through rebuilding over a complete cache: the old index is gone
    first, the new one never written, so the next job rebuilds rather than reads."""
    folder = build_from_manifest(own_manifest, "train", SIZE, tmp_path / "cache")
    script = _SLOW_BUILD.format(
        src=str(SRC), manifest=str(own_manifest), size=SIZE, folder=str(folder)
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith("decoding")
        assert process.stdout.readline().startswith("decoding")
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=30)
    assert not (folder / INDEX_FILE).exists()
    _assert_same_samples(_reference(own_manifest), _open(own_manifest, folder), epochs=1)


# --------------------------------------------------------------------------- memory

_PEAK_RSS = """
import sys
sys.path.insert(0, {src!r})
from detbench.data.dataset import DatasetManifest, DetectionDataset
caches = {{"train": {folder!r}}} if {disk!r} else {{}}
manifest = DatasetManifest.load({manifest!r}, caches)
dataset = DetectionDataset.of_split(manifest, "train", 416)
for index in range(len(dataset)):
    dataset.sample(index)
status = open("/proc/self/status").read()
print(next(l.split()[1] for l in status.splitlines() if l.startswith("VmHWM:")))
"""


def _peak_rss_kib(manifest: Path, folder: Path, disk: bool) -> int:
    script = _PEAK_RSS.format(src=str(SRC), manifest=str(manifest), folder=str(folder), disk=disk)
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True, check=True
    )
    return int(result.stdout.split()[-1])


@pytest.mark.slow
def test_a_jobs_resident_memory_does_not_grow_with_the_number_of_images(tmp_path: Path):
    """50 vs 500 images of 64 x 64 px cached at 416 px (416 x 416 x 3 = 519 KB each).

    Decoding in memory, the 450 more images need 450 x 519 KB = 234 MB more (measured here
    too, to show the measure sees it). Through the cache the growth must stay under 10% of
    that, 23 MB: what does grow is per-image bookkeeping (the records' labels, the index,
    ~1-2 KB an image, under 1 MB here) and allocator noise, never pixels.
    """
    peaks = {}
    for count in (50, 500):
        manifest = _dataset(tmp_path / str(count), {"train": count}, (64, 64))
        folder = build_from_manifest(manifest, "train", 416, tmp_path / f"cache{count}")
        peaks[count] = {disk: _peak_rss_kib(manifest, folder, disk) for disk in (True, False)}
    pixels_kib = 450 * 416 * 416 * 3 / 1024
    memory_growth = peaks[500][False] - peaks[50][False]
    disk_growth = peaks[500][True] - peaks[50][True]
    assert memory_growth > 0.8 * pixels_kib, peaks  # the measure does see decoded images
    assert disk_growth < 0.1 * pixels_kib, peaks
    assert peaks[500][True] < peaks[500][False] - 0.7 * pixels_kib, peaks


def test_open_reads_no_whole_file(own_manifest: Path, tmp_path: Path) -> None:
    """Opening maps nothing and reads nothing of the data file; a sample reads one image."""
    folder = build_from_manifest(own_manifest, "train", SIZE, tmp_path / "cache")
    records = DatasetManifest.load(own_manifest).records("train")
    images = open_image_cache(folder, records, SIZE, "train")
    assert images._fd is None
    image, ratio = images.image(4)
    assert image.flags.writeable and image.dtype == np.uint8 and ratio == SIZE / 128


@pytest.mark.usefixtures("torch_threads")
def test_evaluating_from_the_cache_gives_the_same_metrics(
    tiny_trained_cell: tuple[TrainOutputs, dict], synthetic_manifest: Path, tmp_path: Path
) -> None:
    from detbench.evaluation.evaluate import evaluate_cell
    from detbench.study.config import EvalSettings

    outputs, _ = tiny_trained_cell
    caches = {"test": build_from_manifest(synthetic_manifest, "test", SIZE, tmp_path / "c")}
    results = []
    for name, given in (("memory", None), ("disk", caches)):
        evaluation = (tmp_path / f"{name}.json", tmp_path / f"{name}-detections.json")
        result = evaluate_cell(
            outputs.weights,
            synthetic_manifest,
            "test",
            EvalSettings(batch_size=2),
            TrainHyperparameters(workers=0),
            *evaluation,
            threads=1,
            image_caches=given,
        )
        result.pop("seconds", None)
        results.append((result["metrics"], evaluation[1].read_text()))
    assert results[0] == results[1]


def test_the_cache_rule_does_not_import_torch() -> None:
    """The image_cache jobs start in a fraction of a second (torch alone takes ~1-2 s)."""
    code = "import sys; import detbench.data.image_cache; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- workflow


@pytest.mark.slow
def test_a_disk_cached_cell_through_snakemake_matches_the_in_memory_one(
    tmp_path: Path, tiny_config: Path, workflow_copier, snakemake
) -> None:
    """One tiny cell (and its profile) with dataset.image_cache disk: the image_cache jobs
    run, and the cell's weights and metrics are the in-memory run's."""
    import yaml

    cell = "results/test-cpu/yolov3-tiny/b4_e1"
    runs = {}
    for mode in ("memory", "disk"):
        config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
        config["dataset"]["image_cache"] = mode
        workdir = workflow_copier(tmp_path / mode)
        (workdir / "study.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        targets = [f"{cell}/metrics.json"]
        if mode == "disk":
            targets.append("results/test-cpu/yolov3-tiny/profile_b4/summary.json")
        run = snakemake(workdir, *targets, "--cores", "2", "--configfile", "study.yaml")
        assert run.returncode == 0, run.describe()
        runs[mode] = (workdir, run.job_stats())
    assert "image_cache" not in runs["memory"][1]
    assert runs["disk"][1]["image_cache"] == 2  # train and test at 64 px
    disk = runs["disk"][0] / "results/datasets/synthetic-tiny/image_cache"
    assert sorted(p.name for p in disk.iterdir()) == ["test_64", "train_64"]
    train_log = (runs["disk"][0] / cell / "logs" / "train.log").read_text(encoding="utf-8")
    assert "rebuilding" not in train_log  # the jobs read what the rule built
    metrics = [
        json.loads((runs[mode][0] / cell / "metrics.json").read_text())["metrics"]
        for mode in ("memory", "disk")
    ]
    assert metrics[0] == metrics[1]
    weights = [
        torch.load(runs[mode][0] / cell / "weights.pt", weights_only=True)["state_dict"]
        for mode in ("memory", "disk")
    ]
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
