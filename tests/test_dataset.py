"""The training data stream: a pure function of (seed, epoch), whatever the loader workers; and
the geometry of letterboxing and augmentation (boxes follow the pixels, stay on the canvas)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from detbench.data.augment import (
    PAD_VALUE,
    AugmentSettings,
    Letterbox,
    augment,
    augment_hsv,
    letterbox,
    random_affine,
    random_flips,
)
from detbench.data.dataset import DatasetManifest, DetectionDataset
from detbench.data.loader import make_train_loader, steps_per_epoch
from detbench.errors import DetbenchError
from detbench.study.config import TrainHyperparameters, TrainSettings


@pytest.fixture(scope="module")
def manifest(synthetic_manifest: Path) -> DatasetManifest:
    return DatasetManifest.load(synthetic_manifest)


@pytest.fixture(scope="module")
def train_dataset(manifest: DatasetManifest) -> DetectionDataset:
    return DetectionDataset(manifest.records("train"), 64, augment=AugmentSettings(), seed=0)


def _canvas_xyxy(targets: torch.Tensor, size: int) -> np.ndarray:
    t = targets.numpy().astype(np.float64)
    cx, cy, w, h = t[:, 1] * size, t[:, 2] * size, t[:, 3] * size, t[:, 4] * size
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _painted(shape: tuple[int, int], box: tuple[int, int, int, int]) -> np.ndarray:
    """A grey-noise image with one pure green rectangle covering the pixel edges ``box``."""
    rng = np.random.default_rng(1)
    image = rng.integers(60, 200, size=(*shape, 3), dtype=np.uint8)
    image[..., 1] = 0
    x0, y0, x1, y1 = box
    image[y0:y1, x0:x1] = (0, 255, 0)
    return image


def _green_extent(image: np.ndarray) -> np.ndarray:
    """Pixel-edge box of the clearly green pixels."""
    ys, xs = np.nonzero((image[..., 1] > 128) & (image[..., 0] < 100) & (image[..., 2] < 100))
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)


# --------------------------------------------------------------------------- the data stream


def test_sample_is_a_function_of_seed_epoch_and_index(
    manifest: DatasetManifest, train_dataset: DetectionDataset
) -> None:
    first = train_dataset.sample(3, epoch=2)
    for index in range(len(train_dataset)):  # other accesses in between change nothing
        train_dataset.sample(index, epoch=5)
    again = train_dataset.sample(3, epoch=2)
    fresh = DetectionDataset(manifest.records("train"), 64, augment=AugmentSettings(), seed=0)
    for other in (again, fresh.sample(3, epoch=2)):
        assert torch.equal(first.image, other.image)
        assert torch.equal(first.targets, other.targets)
        assert first.image_id == other.image_id


def test_samples_differ_across_epochs_and_seeds(
    manifest: DatasetManifest, train_dataset: DetectionDataset
) -> None:
    base = train_dataset.sample(3, epoch=2)
    next_epoch = train_dataset.sample(3, epoch=3)
    other_seed = DetectionDataset(
        manifest.records("train"), 64, augment=AugmentSettings(), seed=1
    ).sample(3, epoch=2)
    assert not torch.equal(base.image, next_epoch.image)
    assert not torch.equal(base.image, other_seed.image)


def test_augmented_targets_stay_on_the_canvas(train_dataset: DetectionDataset) -> None:
    boxes = 0
    for epoch in range(6):
        for index in range(len(train_dataset)):
            sample = train_dataset.sample(index, epoch=epoch)
            assert sample.image.shape == (3, 64, 64) and sample.image.dtype == torch.uint8
            targets = sample.targets
            boxes += len(targets)
            xyxy = _canvas_xyxy(targets, 64)
            assert (xyxy >= -1e-3).all() and (xyxy <= 64 + 1e-3).all()
            assert (targets[:, 3:] > 0).all()
            assert set(targets[:, 0].tolist()) <= {0.0, 1.0, 2.0}
    assert boxes > 100  # the check above saw plenty of boxes


@pytest.mark.parametrize("seed", [0, 7])
def test_loader_batches_do_not_depend_on_worker_count(synthetic_manifest: Path, seed: int) -> None:
    manifest = DatasetManifest.load(synthetic_manifest)
    batches = {}
    for workers in (0, 2):
        settings = TrainSettings(
            model="yolov3-tiny",
            batch=3,
            epochs=2,
            img_size=64,
            seed=seed,
            hyp=TrainHyperparameters(workers=workers),
        )
        loader = make_train_loader(manifest, settings, torch.device("cpu"))
        assert loader.num_workers == workers
        batches[workers] = list(loader)
        del loader  # stops the persistent workers
    assert len(batches[0]) == len(batches[2]) == 6  # 8 images in batches of 3, two epochs
    for single, multi in zip(batches[0], batches[2], strict=True):
        assert single.image_ids == multi.image_ids
        assert torch.equal(single.images, multi.images)
        assert torch.equal(single.targets, multi.targets)
    # The two epochs are shuffled differently.
    assert [b.image_ids for b in batches[0][:3]] != [b.image_ids for b in batches[0][3:]]


def test_epochs_run_through_one_iterator_and_resume_where_they_left_off(
    manifest: DatasetManifest,
) -> None:
    """One loader serves all of a job's epochs; no batch mixes two epochs, each epoch shows
    every image once, and a loader that starts at a later epoch (a resumed job) gives exactly
    the batches the whole run gave from there on."""
    settings = TrainSettings("yolov3-tiny", batch=3, epochs=3, img_size=64,
                             hyp=TrainHyperparameters(workers=0))
    cpu = torch.device("cpu")
    loader = make_train_loader(manifest, settings, cpu)
    whole = list(loader)
    assert steps_per_epoch(loader) == 3 and len(loader) == len(whole) == 9  # 8 images, by 3
    assert [len(b.image_ids) for b in whole] == [3, 3, 2] * 3
    everyone = sorted(r.id for r in manifest.records("train"))
    for epoch in range(3):
        shown = [i for b in whole[3 * epoch : 3 * epoch + 3] for i in b.image_ids]
        assert sorted(shown) == everyone

    resumed = list(make_train_loader(manifest, settings, cpu, first_epoch=1))
    assert len(resumed) == 6
    for before, after in zip(whole[3:], resumed, strict=True):
        assert before.image_ids == after.image_ids
        assert torch.equal(before.images, after.images)
        assert torch.equal(before.targets, after.targets)


# --------------------------------------------------------------------------- letterbox


@pytest.mark.parametrize(("height", "width"), [(48, 64), (64, 45), (64, 64), (33, 64)])
def test_letterbox_places_image_and_boxes_exactly(height: int, width: int) -> None:
    image = np.random.default_rng(0).integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    boxes = np.array([[0.0, 0.0, width, height], [3.5, 2.0, 10.25, 20.0]])
    canvas, moved, placement = letterbox(image, boxes, 64)
    pad_x, pad_y = (64 - width) // 2, (64 - height) // 2
    assert (placement.ratio, placement.pad_x, placement.pad_y) == (1.0, pad_x, pad_y)
    assert canvas.shape == (64, 64, 3)
    assert np.array_equal(canvas[pad_y : pad_y + height, pad_x : pad_x + width], image)
    padding = np.ones((64, 64), dtype=bool)
    padding[pad_y : pad_y + height, pad_x : pad_x + width] = False
    assert (canvas[padding] == PAD_VALUE).all()
    np.testing.assert_array_equal(moved, boxes + np.array([pad_x, pad_y, pad_x, pad_y]))
    np.testing.assert_array_equal(placement.to_original(moved), boxes)


def test_letterbox_to_original_inverts_scale_and_padding() -> None:
    transform = Letterbox(ratio=0.65, pad_x=0.0, pad_y=52.0)
    original = np.random.default_rng(3).uniform(0, 640, size=(20, 4))
    canvas = original * transform.ratio + [transform.pad_x, transform.pad_y] * 2
    np.testing.assert_allclose(transform.to_original(canvas), original, atol=1e-9)


def test_evaluation_samples_map_back_to_the_original_boxes(manifest: DatasetManifest) -> None:
    records = manifest.records("test")
    dataset = DetectionDataset(records, 64)
    for index, record in enumerate(records):
        sample = dataset[index]
        assert sample.letterbox.ratio == pytest.approx(64 / max(record.width, record.height))
        back = sample.letterbox.to_original(_canvas_xyxy(sample.targets, 64))
        np.testing.assert_allclose(back, record.boxes_xyxy(), atol=1e-3)
        assert dataset[index].image.equal(sample.image)  # no randomness without augment


# --------------------------------------------------------------------------- augmentation


@pytest.mark.parametrize(("flip_lr", "flip_ud"), [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0), (0.0, 0.0)])
def test_flips_move_boxes_with_the_pixels(flip_lr: float, flip_ud: float) -> None:
    box = (5, 10, 20, 31)
    image = _painted((64, 48), box)  # height 64, width 48: the two flips differ
    settings = AugmentSettings(flip_lr=flip_lr, flip_ud=flip_ud)
    flipped, boxes = random_flips(image, np.array([box], dtype=np.float64), settings, _rng(0))
    assert flipped.shape == image.shape and flipped.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(boxes[0], _green_extent(flipped))
    if flip_lr == flip_ud == 0:
        assert np.array_equal(flipped, image)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(("flip_lr", "flip_ud"), [(1.0, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_flips_are_exact_mirror_images(flip_lr: float, flip_ud: float) -> None:
    image = _rng(3).integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
    settings = AugmentSettings(flip_lr=flip_lr, flip_ud=flip_ud)
    flipped, _ = random_flips(image, np.zeros((0, 4)), settings, _rng(0))
    expected = image[::-1] if flip_ud else image
    expected = expected[:, ::-1] if flip_lr else expected
    np.testing.assert_array_equal(flipped, expected)


@pytest.mark.parametrize("seed", range(5))
def test_hsv_jitter_maps_each_channel_through_its_own_table(seed: int) -> None:
    """Hue, saturation and value each go through their gain's table, as YOLO's recipe does:
    reproduced here channel by channel, the slow way, from the same random gains."""
    image = _rng(seed + 10).integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    settings = AugmentSettings()
    jittered = augment_hsv(image, settings, _rng(seed))

    gains = _rng(seed).uniform(-1, 1, 3) * [settings.hsv_h, settings.hsv_s, settings.hsv_v] + 1
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    x = np.arange(256, dtype=np.float32)
    tables = [
        ((x * gains[0]) % 180).astype(np.uint8),
        np.clip(x * gains[1], 0, 255).astype(np.uint8),
        np.clip(x * gains[2], 0, 255).astype(np.uint8),
    ]
    mapped = np.stack([tables[c][hsv[:, :, c]] for c in range(3)], axis=-1)
    np.testing.assert_array_equal(jittered, cv2.cvtColor(mapped, cv2.COLOR_HSV2BGR))
    assert not np.array_equal(jittered, image)


@pytest.mark.parametrize("seed", range(40))
def test_random_affine_keeps_boxes_inside_the_canvas(seed: int) -> None:
    rng = _rng(seed)
    image = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    x0 = rng.uniform(-5, 60, 30)
    y0 = rng.uniform(-5, 44, 30)
    boxes = np.stack([x0, y0, x0 + rng.uniform(1, 30, 30), y0 + rng.uniform(1, 30, 30)], axis=1)
    classes = np.arange(30) % 3
    settings = AugmentSettings(translate=0.5, scale=0.9)
    canvas, out, kept = random_affine(image, boxes, classes, 64, settings, rng)
    assert canvas.shape == (64, 64, 3)
    assert len(out) == len(kept) <= 30
    assert (out >= 0).all() and (out <= 64).all()
    assert (out[:, 2] - out[:, 0] > settings.min_box_size).all()
    assert (out[:, 3] - out[:, 1] > settings.min_box_size).all()
    canvas, out, _ = augment(image, boxes, classes, 64, settings, rng)
    assert (out >= 0).all() and (out <= 64).all()


@pytest.mark.parametrize("seed", range(10))
def test_random_affine_boxes_follow_the_pixels(seed: int) -> None:
    box = (16, 12, 40, 30)
    image = _painted((48, 64), box)
    settings = AugmentSettings(translate=0.1, scale=0.3)
    canvas, out, _ = random_affine(
        image, np.array([box], dtype=np.float64), np.array([1]), 64, settings, _rng(seed)
    )
    assert len(out) == 1  # small moves keep the box well inside
    # Bilinear resampling blurs edges by about a pixel.
    np.testing.assert_allclose(out[0], _green_extent(canvas), atol=1.5)


def test_augment_is_deterministic_for_a_generator_seed() -> None:
    image = _painted((48, 64), (16, 12, 40, 30))
    boxes = np.array([[16.0, 12.0, 40.0, 30.0]])
    first = augment(image, boxes, np.array([0]), 64, AugmentSettings(), _rng(5))
    second = augment(image, boxes, np.array([0]), 64, AugmentSettings(), _rng(5))
    for a, b in zip(first, second, strict=True):
        assert np.array_equal(a, b)


# --- a converted dataset whose source files are gone or changed ---------------------------


@pytest.fixture
def local_dataset(synthetic_voc: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """A user's VOC folder, the workflow's copy of it and the copy converted, as the data rules
    leave them: (source, copy, manifest)."""
    import shutil

    from detbench.data.prepare import convert_dataset, prepare_voc_dataset

    source = shutil.copytree(synthetic_voc, tmp_path / "user-voc")
    dataset = {"name": "local", "source": str(source), "classes": ["RBC", "WBC", "Platelets"]}
    dataset.update(train_split="train", eval_split="test")
    copy = tmp_path / "results/datasets/local/voc"
    prepare_voc_dataset(dataset, copy)
    convert_dataset(dataset, copy, tmp_path / "results/datasets/local/yolo")
    return source, copy, tmp_path / "results/datasets/local/yolo/manifest.json"


def test_deleted_source_image_is_named_when_the_copy_is_gone(
    local_dataset: tuple[Path, Path, Path],
) -> None:
    import shutil

    source, copy, manifest_path = local_dataset
    manifest = DatasetManifest.load(manifest_path)
    deleted = source / "JPEGImages" / manifest.splits["train"][3]["file"]
    deleted.unlink()
    shutil.rmtree(copy)  # what a failed download leaves: no copy at all
    with pytest.raises(DetbenchError) as info:
        manifest.records("train")
    message = str(info.value)
    assert message.startswith(f"{deleted}: image file does not exist")
    assert "snakemake --forcerun download" in message and "\n" not in message


def test_lost_copy_names_the_copy_and_its_source(local_dataset: tuple[Path, Path, Path]) -> None:
    source, copy, manifest_path = local_dataset
    manifest = DatasetManifest.load(manifest_path)
    name = manifest.splits["test"][0]["file"]
    (copy / "JPEGImages" / name).unlink()
    with pytest.raises(DetbenchError) as info:
        manifest.records("test")
    message = str(info.value)
    assert message.startswith(f"{copy / 'JPEGImages' / name}: image file does not exist")
    assert str(source / "JPEGImages" / name) in message and "--forcerun download" in message
    assert len(manifest.records("train")) == 8  # other splits' images are all there


def test_changed_image_is_refused(local_dataset: tuple[Path, Path, Path]) -> None:
    _source, copy, manifest_path = local_dataset
    manifest = DatasetManifest.load(manifest_path)
    name = manifest.splits["val"][1]["file"]
    with (copy / "JPEGImages" / name).open("ab") as handle:
        handle.write(b"\0" * 10)
    with pytest.raises(DetbenchError, match=r"changed since .* was converted from it"):
        manifest.records("val")
