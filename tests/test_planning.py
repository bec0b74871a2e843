"""What the workflow decides before any job runs: what each rule's jobs depend on
(detbench.workflow.rule_params), the Slurm requests and wall time (detbench.cluster), the image
caches (detbench.data.cache_plan) and the grid (detbench.study.grid)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from detbench.cluster import ranks, walltime
from detbench.data import cache_plan, sizes
from detbench.study import grid
from detbench.study.config import RUNTIME_TRAIN_KEY_RERUNS, load_config_file
from detbench.workflow import rule_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def study() -> dict[str, Any]:
    return load_config_file(REPO / "config" / "config.yaml")


def _changed(config: dict[str, Any], section: str, key: str) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    value = changed[section][key]
    changed[section][key] = (not value) if isinstance(value, bool) else f"{value}-changed"
    return changed


@pytest.mark.parametrize("key", sorted(RUNTIME_TRAIN_KEY_RERUNS))
def test_runtime_keys_rerun_only_the_jobs_the_table_names(study: dict, key: str) -> None:
    changed = _changed(study, "train", key)
    assert rule_params.train_params(changed, "yolov3") == rule_params.train_params(study, "yolov3")
    assert rule_params.evaluate_params(changed) == rule_params.evaluate_params(study)
    reprofiles = rule_params.profile_params(changed) != rule_params.profile_params(study)
    assert reprofiles == ("profile" in RUNTIME_TRAIN_KEY_RERUNS[key])


@pytest.mark.parametrize("key", ["lr0", "mosaic", "ema"])
def test_other_train_keys_rerun_every_job(study: dict, key: str) -> None:
    changed = _changed(study, "train", key)
    assert rule_params.train_params(changed, "yolov3") != rule_params.train_params(study, "yolov3")
    assert rule_params.evaluate_params(changed) != rule_params.evaluate_params(study)
    assert rule_params.profile_params(changed) != rule_params.profile_params(study)


def test_evaluation_settings_re_evaluate_only(study: dict) -> None:
    changed = copy.deepcopy(study)
    changed["evaluate"]["conf_threshold"] = 0.01
    changed["dataset"]["eval_split"] = "val"
    assert rule_params.train_params(changed, "yolov3") == rule_params.train_params(study, "yolov3")
    assert rule_params.evaluate_params(changed) != rule_params.evaluate_params(study)


def test_starting_weights_retrain_only_their_model(study: dict) -> None:
    changed = copy.deepcopy(study)
    changed["models"]["yolov3"] = {"weights": "backbone"}
    assert rule_params.train_params(changed, "yolov3") != rule_params.train_params(study, "yolov3")
    tiny = "yolov3-tiny"
    assert rule_params.train_params(changed, tiny) == rule_params.train_params(study, tiny)
    assert rule_params.profile_params(changed) == rule_params.profile_params(study)


def test_grid_and_profiles(study: dict) -> None:
    cells = grid.study_cells(study)
    assert len(cells) == 32 and len(set(cells)) == 32
    assert {c.platform for c in cells} == {study["platform"]}
    profiles = grid.study_profiles(study)
    assert len(profiles) == 8  # one per {model, batch}


def test_wall_time_grows_with_epochs_and_model_and_retries() -> None:
    model = walltime.WALL_TIME
    short = model.minutes("yolov3-tiny", 8, 1, images=205, img_size=416)
    long = model.minutes("yolov3-tiny", 8, 20, images=205, img_size=416)
    big = model.minutes("yolov3", 8, 20, images=205, img_size=416)
    assert short < long < big
    assert model.minutes("yolov3", 8, 20, images=205, img_size=416, attempt=2) == 2 * big
    # By hand: 205 x 0.05 s + 26 steps x 0.05 s = 11.55 s an epoch; 20 epochs, margin 2.
    assert big == 10 + 8  # ceil(10 + 2 x 231 s / 60)


def test_image_count_from_split_files(tmp_path: Path) -> None:
    source = tmp_path / "voc"
    (source / "ImageSets" / "Main").mkdir(parents=True)
    (source / "ImageSets" / "Main" / "train.txt").write_text("a\nb\nc\n")
    dataset = {"source": str(source), "train_split": "train"}
    assert sizes.train_image_count(dataset, tmp_path / "not-yet") == 3
    # The workflow's own copy wins over the source once it exists.
    copy_dir = tmp_path / "copy"
    (copy_dir / "voc" / "ImageSets" / "Main").mkdir(parents=True)
    (copy_dir / "voc" / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    assert sizes.train_image_count(dataset, copy_dir) == 2


def test_image_count_before_any_download() -> None:
    bccd = {"source": "bccd", "train_split": "train"}
    assert sizes.train_image_count(bccd, "/nonexistent") == 364  # every pinned BCCD image
    coco = {"source": "coco", "train_split": "train", "max_images": 500}
    assert sizes.train_image_count(coco, "/nonexistent") == 500
    synthetic = {"source": "synthetic", "train_split": "train", "synthetic": {"train": 12}}
    assert sizes.train_image_count(synthetic, "/nonexistent") == 12


def test_image_count_of_the_real_bccd_split(bccd_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "voc").symlink_to(bccd_dir)
    bccd = {"source": "bccd", "train_split": "train"}
    assert sizes.train_image_count(bccd, tmp_path) == 205


def test_a_cell_asks_for_a_task_and_a_gpu_per_rank_and_splits_its_threads() -> None:
    one = {"train": {"ranks": 1, "nodes": 1}}
    four = {"train": {"ranks": 4, "nodes": 2}}
    one_counts = [ranks.rank_tasks(one), ranks.rank_gpus(one), ranks.rank_nodes(one)]
    assert one_counts == [1, 1, 1]
    assert ranks.rank_cpus_per_task(one, threads=4) == 4
    assert [ranks.rank_tasks(four), ranks.rank_gpus(four), ranks.rank_nodes(four)] == [
        4,
        4,
        2,
    ]
    assert ranks.rank_cpus_per_task(four, threads=8) == 2
    assert ranks.rank_cpus_per_task(four, threads=2) == 1  # never none


# --------------------------------------------------------------------------- image cache


def _synthetic(train_images: int, mode: str = "auto") -> dict[str, Any]:
    return {
        "img_size": 416,
        "dataset": {
            "source": "synthetic",
            "synthetic": {"train": train_images},
            "train_split": "train",
            "eval_split": "test",
            "image_cache": mode,
        },
    }


@pytest.mark.parametrize(
    ("images", "mode", "resolved"),
    [
        (2000, "auto", "memory"),
        (2001, "auto", "disk"),
        (50_000, "memory", "memory"),
        (10, "disk", "disk"),
    ],
)
def test_image_cache_mode_resolves_auto_by_the_training_split(
    images: int, mode: str, resolved: str
) -> None:
    assert cache_plan.image_cache_mode(_synthetic(images, mode), "/nonexistent") == resolved


def test_the_shipped_studies_keep_the_in_memory_path(study: dict) -> None:
    """BCCD (config.yaml) and the demo: no cache job, no cache input, the same DAG."""
    demo = load_config_file(REPO / "config" / "demo.yaml")
    for config in (study, demo):
        assert cache_plan.image_cache_mode(config, "/nonexistent") == "memory"
        assert cache_plan.image_cache_inputs(config, "/nonexistent", "train") == {}


def test_image_cache_inputs_name_each_rules_splits() -> None:
    config = _synthetic(5000)
    folder = "d/image_cache/{}_416"
    assert cache_plan.image_cache_inputs(config, "d", "train") == {
        "cache_train": folder.format("train"),
        "cache_test": folder.format("test"),
    }
    assert cache_plan.image_cache_inputs(config, "d", "evaluate") == {
        "cache_test": folder.format("test")
    }
    profile = cache_plan.image_cache_inputs(config, "d", "profile", wrap=Path)
    assert profile == {"cache_train": Path(folder.format("train"))}
    inputs = {"dataset": "d/yolo", **cache_plan.image_cache_inputs(config, "d", "train")}
    assert cache_plan.image_caches_of(inputs) == {
        "train": Path(folder.format("train")),
        "test": Path(folder.format("test")),
    }


def test_changing_the_image_cache_reruns_no_job(study: dict) -> None:
    changed = copy.deepcopy(study)
    changed["dataset"]["image_cache"] = "disk"
    assert rule_params.train_params(changed, "yolov3") == rule_params.train_params(study, "yolov3")
    assert rule_params.evaluate_params(changed) == rule_params.evaluate_params(study)
    assert rule_params.profile_params(changed) == rule_params.profile_params(study)
