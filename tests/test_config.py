"""Config validation: the shipped configs pass, defaults come from the schema, and every kind of
mistake fails with one line naming the key (and the file), in Python and through Snakemake."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from detbench.errors import DetbenchError
from detbench.study.config import (
    EvalSettings,
    TrainHyperparameters,
    load_config_file,
    load_schema,
    validate_config,
)

SHIPPED_CONFIGS = ("config/config.yaml", "config/demo.yaml", "tests/configs/tiny.yaml")

MINIMAL = {
    "platform": "p",
    "dataset": {"name": "d", "source": "synthetic"},
    "models": {"yolov3-tiny": {}},
    "batch_sizes": [4],
    "epochs": [1],
}


@pytest.fixture
def tiny(tiny_config: Path) -> dict[str, Any]:
    return yaml.safe_load(tiny_config.read_text(encoding="utf-8"))


def _error(config: dict[str, Any], source: str = "bad.yaml") -> str:
    with pytest.raises(DetbenchError) as info:
        validate_config(config, source=source)
    message = str(info.value)
    assert "\n" not in message, f"error is not one line: {message!r}"
    assert message.startswith(f"{source}: "), message
    return message


# --------------------------------------------------------------------------- good configs


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_shipped_configs_validate(repo_root: Path, name: str) -> None:
    config = load_config_file(repo_root / name)
    assert config["models"] and config["batch_sizes"] and config["epochs"]
    assert config["img_size"] % 32 == 0


def test_study_config_is_the_2020_grid(repo_root: Path) -> None:
    config = load_config_file(repo_root / "config/config.yaml")
    assert set(config["models"]) == {"yolov3", "yolov3-tiny"}
    assert config["batch_sizes"] == [4, 8, 16, 32]
    assert config["epochs"] == [1, 5, 10, 20]
    assert config["img_size"] == 416
    assert config["dataset"]["source"] == "bccd"


def _schema_defaults(schema: dict[str, Any]) -> dict[str, Any]:
    """Every default of an object schema, nested objects' defaults filled in recursively."""
    out: dict[str, Any] = {}
    for name, sub in schema.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            nested = _schema_defaults(sub)
            if "default" in sub:
                out[name] = {**nested, **sub["default"]}
        elif "default" in sub:
            out[name] = sub["default"]
    return out


def test_defaults_are_filled_from_the_schema() -> None:
    config = validate_config(copy.deepcopy(MINIMAL))
    defaults = _schema_defaults(load_schema())
    assert {"seed", "img_size", "train", "evaluate"} <= set(defaults)
    for key, value in defaults.items():
        assert config[key] == value, key
    dataset_defaults = _schema_defaults(load_schema()["properties"]["dataset"])
    for key, value in dataset_defaults.items():
        assert config["dataset"][key] == value, f"dataset.{key}"
    assert config["dataset"]["synthetic"] == {
        "train": 64,
        "val": 16,
        "test": 32,
        "width": 320,
        "height": 240,
    }
    assert config["models"] == {"yolov3-tiny": {"weights": "scratch"}}


def test_model_given_without_settings_gets_defaults() -> None:
    config = copy.deepcopy(MINIMAL)
    config["models"] = {"yolov3": None, "yolov3-tiny": {}}
    validate_config(config)
    assert config["models"] == {
        "yolov3": {"weights": "scratch"},
        "yolov3-tiny": {"weights": "scratch"},
    }


def test_given_values_are_kept(tiny: dict[str, Any]) -> None:
    config = validate_config(tiny)
    assert config["img_size"] == 64
    assert config["train"]["workers"] == 0
    assert config["train"]["lr0"] == 0.01  # filled in beside the given key
    assert config["evaluate"]["batch_size"] == 4


@pytest.mark.parametrize(
    ("section", "settings_class"), [("train", TrainHyperparameters), ("evaluate", EvalSettings)]
)
def test_settings_dataclasses_match_the_schema(section: str, settings_class: type) -> None:
    """The dataclasses the code reads must have the schema's keys and defaults (no drift)."""
    properties = load_schema()["properties"][section]["properties"]
    fields = {f.name: f.default for f in dataclasses.fields(settings_class)}
    assert set(fields) == set(properties)
    for name, schema in properties.items():
        assert fields[name] == schema["default"], f"{section}.{name}"
    validated = validate_config(copy.deepcopy(MINIMAL))[section]
    assert settings_class.from_dict(validated) == settings_class()


# --------------------------------------------------------------------------- bad configs


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = config
        for part in parents:
            node = node[part]
        node[last] = value

    return change


# (change, words the one-line error must contain)
BAD_CONFIGS: dict[str, tuple[Callable[[dict[str, Any]], None], tuple[str, ...]]] = {
    "wrong type in a list": (_set("batch_sizes", [4, "x"]), ("batch_sizes[1]", "'x'")),
    "unknown key (typo)": (_set("epoch", [1]), ("'epoch'",)),
    "unknown nested key": (_set("train.lr", 0.1), ("train", "'lr'")),
    "unknown model": (_set("models.yolov4", {}), ("models", "yolov4")),
    "bad weights": (_set("models.yolov3.weights", "imagenet"), ("models.yolov3.weights",)),
    "img_size not a multiple of 32": (_set("img_size", 100), ("img_size", "32")),
    "platform with a slash": (_set("platform", "gpu/p40"), ("platform", "gpu/p40")),
    "reserved platform": (_set("platform", "datasets"), ("platform", "datasets")),
    "eval split is the train split": (_set("dataset.eval_split", "train"), ("dataset.eval_split",)),
    "batch size 0": (_set("batch_sizes", [0]), ("batch_sizes[0]",)),
    "boolean epochs": (_set("epochs", [True]), ("epochs[0]",)),
    "bad device": (_set("train.device", "gpu"), ("train.device",)),
    "bad image cache": (_set("dataset.image_cache", "ram"), ("dataset.image_cache", "'ram'")),
}


def test_image_cache_defaults_to_auto_and_its_description_says_which_runs_when() -> None:
    config = validate_config(copy.deepcopy(MINIMAL))
    assert config["dataset"]["image_cache"] == "auto"
    description = load_schema()["properties"]["dataset"]["properties"]["image_cache"]
    text = " ".join(description["description"].split())
    assert "more than 2000 images" in text and "else memory" in text
    for mode in ("memory", "disk"):
        config = copy.deepcopy(MINIMAL)
        config["dataset"]["image_cache"] = mode
        assert validate_config(config)["dataset"]["image_cache"] == mode


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_fails_with_one_line_naming_the_key(tiny: dict[str, Any], case: str) -> None:
    change, words = BAD_CONFIGS[case]
    change(tiny)
    message = _error(tiny)
    assert "key " in message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"


def test_missing_required_key_is_named(tiny: dict[str, Any]) -> None:
    del tiny["models"]
    assert "'models'" in _error(tiny)


def test_config_that_is_not_a_mapping() -> None:
    with pytest.raises(DetbenchError, match=r"^x\.yaml: .*mapping"):
        validate_config(["platform", "p"], source="x.yaml")  # type: ignore[arg-type]


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path, tiny_config: Path) -> None:
    lines = tiny_config.read_text(encoding="utf-8").splitlines()
    number = next(i for i, line in enumerate(lines) if line.startswith("batch_sizes:"))
    lines[number] = "batch_sizes: [4, 8"  # unclosed flow sequence
    lines.insert(number + 1, "epochs: [1, 2]]")
    bad = tmp_path / "broken.yaml"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DetbenchError) as info:
        load_config_file(bad)
    message = str(info.value)
    assert "\n" not in message
    assert str(bad) in message
    assert "line " in message and "YAML" in message


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DetbenchError, match=r"nowhere\.yaml: config file does not exist"):
        load_config_file(tmp_path / "nowhere.yaml")


# --------------------------------------------------------------------------- through Snakemake


def _nothing_ran(run: Any, workdir: Path) -> None:
    assert run.returncode != 0, run.describe()
    assert run.job_stats() == {}, run.describe()
    assert "rule download" not in run.output, run.describe()
    assert not (workdir / "results").exists(), "a job ran before the config was checked"


@pytest.mark.parametrize(
    ("key", "line_prefix", "replacement"),
    [
        ("img_size", "img_size:", "img_size: 100"),
        ("epoch", "epochs:", "epoch: [1, 2]"),
        ("dataset.eval_split", "  eval_split:", "  eval_split: train"),
    ],
    ids=["img_size", "typo", "eval_split"],
)
def test_snakemake_rejects_bad_config_before_any_job(
    snakemake: Callable[..., Any],
    workflow_copy: Path,
    tiny_config: Path,
    key: str,
    line_prefix: str,
    replacement: str,
) -> None:
    lines = tiny_config.read_text(encoding="utf-8").splitlines()
    lines = [replacement if line.startswith(line_prefix) else line for line in lines]
    bad = workflow_copy / "bad-study.yaml"
    bad.write_text("\n".join(lines) + "\n", encoding="utf-8")
    run = snakemake(workflow_copy, "-n", "--cores", "1", "--configfile", bad.name)
    _nothing_ran(run, workflow_copy)
    matching = [
        line for line in run.output.splitlines() if key in line and "bad-study.yaml" in line
    ]
    assert matching, f"no line names both {key!r} and the config file:\n{run.describe()}"


def _plan_with_command_line_config(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path, value: str
) -> Any:
    good = workflow_copy / "good.yaml"
    good.write_text(tiny_config.read_text(encoding="utf-8"), encoding="utf-8")
    return snakemake(workflow_copy, "-n", "--cores", "1", "--configfile", good.name,
                     "--config", value)  # fmt: skip


def test_bad_command_line_config_is_named_as_such(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path
) -> None:
    run = _plan_with_command_line_config(snakemake, workflow_copy, tiny_config, "foo=1")
    _nothing_ran(run, workflow_copy)
    matching = [line for line in run.output.splitlines() if "'foo'" in line]
    assert matching and all("good.yaml, --config: " in line for line in matching), run.describe()


def test_snakemake_rejects_yaml_syntax_error_before_any_job(
    snakemake: Callable[..., Any], workflow_copy: Path
) -> None:
    # Snakemake parses --configfile itself, before the workflow's own check; its message does
    # not name the file (an upstream limitation), so only "fails, runs nothing" is required.
    bad = workflow_copy / "broken.yaml"
    bad.write_text("platform: [test-cpu\nseed: 0\n", encoding="utf-8")
    run = snakemake(workflow_copy, "-n", "--cores", "1", "--configfile", bad.name)
    _nothing_ran(run, workflow_copy)
    assert "YAML" in run.output, run.describe()


def test_command_line_strings_are_read_as_the_schema_types() -> None:
    # What Snakemake's --config 'train={...}' hands the workflow: every scalar a string.
    config = copy.deepcopy(MINIMAL)
    config["train"] = {"checkpoint_interval_s": "0", "lr0": "1e-3", "workers": "2", "ema": "false"}
    config["dataset"]["max_images"] = "null"
    config["dataset"]["classes"] = ["1", "2"]  # class names are strings: left alone
    validate_config(config)
    train = config["train"]
    assert (train["checkpoint_interval_s"], train["lr0"], train["workers"]) == (0, 0.001, 2)
    assert train["ema"] is False and config["dataset"]["max_images"] is None
    assert config["dataset"]["classes"] == ["1", "2"]
    assert config["train"]["device"] == "auto"


def test_command_line_string_that_is_no_number_is_still_refused() -> None:
    config = copy.deepcopy(MINIMAL)
    config["train"] = {"checkpoint_interval_s": "soon", "workers": "many"}
    with pytest.raises(DetbenchError, match=r"train\.checkpoint_interval_s: 'soon' is not of type"):
        validate_config(config)


def test_snakemake_reads_numbers_in_a_command_line_mapping(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path
) -> None:
    value = "train={checkpoint_interval_s: 0}"
    run = _plan_with_command_line_config(snakemake, workflow_copy, tiny_config, value)
    assert run.returncode == 0, run.describe()
