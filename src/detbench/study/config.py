"""The study configuration: JSON-schema validation with defaults, and typed views of it.

The schema (``config.schema.yaml`` beside this file) holds every default and a description of
every key; the Snakefile and the command line both validate through :func:`validate_config`, so
a typo fails before a single job starts with one line naming the key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from collections.abc import Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from detbench.errors import DetbenchError

SCHEMA_PATH = Path(__file__).with_name("config.schema.yaml")

# How a cell runs, not what it computes: the ``train:`` keys whose change neither retrains nor
# re-evaluates a finished cell (they are kept out of the rules' params, which Snakemake
# compares; see detbench.workflow.rule_params) nor discards a cell's checkpoints
# (TrainSettings.fingerprint ignores them). Each names the jobs it does rerun: the profile
# jobs, where it changes the kernels they record. Every other train: key retrains,
# re-evaluates and re-profiles.
RUNTIME_TRAIN_KEY_RERUNS: dict[str, tuple[str, ...]] = {
    "workers": ("profile",),
    "device": ("profile",),
    "channels_last": ("profile",),
    "cudnn_benchmark": ("profile",),
    "compile": ("profile",),
    "checkpoint_interval_s": (),
    "eval_interval_epochs": (),
    "nodes": (),
}
RUNTIME_TRAIN_KEYS = tuple(RUNTIME_TRAIN_KEY_RERUNS)
# train: keys whose default is left out of what a cell depends on, so that a cell trained
# without them is not rerun and its checkpoints stay resumable.
OMITTED_AT_DEFAULT: dict[str, Any] = {"ranks": 1, "sync_bn": False}
# The runtime keys that rerun no job at all.
UNPROFILED_TRAIN_KEYS = tuple(
    key for key, jobs in RUNTIME_TRAIN_KEY_RERUNS.items() if "profile" not in jobs
)


def without_runtime_keys(train: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train:`` section minus RUNTIME_TRAIN_KEYS: what a cell's result depends on."""
    return _without(train, RUNTIME_TRAIN_KEYS)


def without_unprofiled_keys(train: Mapping[str, Any]) -> dict[str, Any]:
    """The ``train:`` section minus UNPROFILED_TRAIN_KEYS: what a profile job depends on."""
    return _without(train, UNPROFILED_TRAIN_KEYS)


def _without(train: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """``train`` minus ``keys`` and the OMITTED_AT_DEFAULT keys at their default."""
    missing = object()
    return {
        key: value
        for key, value in train.items()
        if key not in keys and OMITTED_AT_DEFAULT.get(key, missing) != value
    }


def with_runtime_keys(train: Mapping[str, Any], workflow_config: Mapping[str, Any]) -> dict:
    """A rule's ``train:`` params completed with the run's RUNTIME_TRAIN_KEYS."""
    runtime = workflow_config.get("train", {})
    return {**train, **{key: runtime[key] for key in RUNTIME_TRAIN_KEYS if key in runtime}}


@cache
def load_schema() -> dict[str, Any]:
    with SCHEMA_PATH.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


def _validator_with_defaults() -> Any:
    """A Draft 2020-12 validator that fills in each missing property's schema default."""
    from jsonschema import Draft202012Validator, validators

    validate_properties = Draft202012Validator.VALIDATORS["properties"]

    def set_defaults(validator: Any, properties: Any, instance: Any, schema: Any) -> Iterator[Any]:
        if isinstance(instance, dict):
            for name, subschema in properties.items():
                if "default" in subschema:
                    instance.setdefault(name, copy.deepcopy(subschema["default"]))
        yield from validate_properties(validator, properties, instance, schema)

    def set_additional_defaults(
        validator: Any, additional: Any, instance: Any, schema: Any
    ) -> Iterator[Any]:
        # Per-model settings live under additionalProperties; a model given as `yolov3: {}` or
        # `yolov3:` (null) gets its defaults too.
        if isinstance(instance, dict) and isinstance(additional, dict):
            for key, value in list(instance.items()):
                if value is None and additional.get("type") == "object":
                    instance[key] = copy.deepcopy(additional.get("default", {}))
        yield from Draft202012Validator.VALIDATORS["additionalProperties"](
            validator, additional, instance, schema
        )

    extended = validators.extend(
        Draft202012Validator,
        {"properties": set_defaults, "additionalProperties": set_additional_defaults},
    )
    return extended(load_schema())


def _key_path(error: Any) -> str:
    parts = []
    for part in error.absolute_path:
        parts.append(f"[{part}]" if isinstance(part, int) else f".{part}")
    return "".join(parts).lstrip(".") or "(top level)"


def _describe(error: Any) -> str:
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        unknown = sorted(k for k in error.instance if k not in allowed)
        if unknown and allowed:
            return f"unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
    if error.validator == "propertyNames":
        return f"{error.instance!r} is not a known name ({error.message.split(' is not ')[-1]})"
    if error.validator == "not" and "enum" in error.validator_value:
        return f"{error.instance!r} is reserved"
    return error.message


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Validate ``config`` in place against the schema, filling in defaults; return it.

    Raises DetbenchError with one line: ``<source>: key <a.b[2]>: <problem>``.
    """
    if not isinstance(config, dict):
        raise DetbenchError(f"{source}: the configuration must be a mapping of keys to values")
    _coerce_strings(config, load_schema())
    validator = _validator_with_defaults()
    errors = sorted(validator.iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        # The deepest error is the most specific one (oneOf/anyOf wrap their branches).
        error = max(errors, key=lambda e: len(e.absolute_path))
        while error.context:
            error = max(error.context, key=lambda e: len(e.absolute_path))
        message = " ".join(_describe(error).split())
        raise DetbenchError(f"{source}: key {_key_path(error)}: {message}")
    _check_cross_field_rules(config, source)
    return config


# Snakemake reads the inside of a --config value such as `train={checkpoint_interval_s: 0}` with
# YAML's BaseLoader, which leaves every scalar a string: read them as the schema's type.
_BOOLEAN_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_NULL_WORDS = ("null", "Null", "NULL", "~")


def _scalar_types(schema: Mapping[str, Any], text: str) -> set[str]:
    """The types ``schema`` (and its oneOf/anyOf branches) allows; "string" only where the
    branch would accept ``text`` as it is (``workers: auto`` stays a string, ``2`` does not)."""
    types: set[str] = set()
    for branch in [schema, *schema.get("oneOf", []), *schema.get("anyOf", [])]:
        declared = branch.get("type", [])
        declared = {declared} if isinstance(declared, str) else set(declared)
        if "string" in declared and "enum" in branch and text not in branch["enum"]:
            declared.discard("string")
        types |= declared
    return types


def _coerce_scalar(text: str, schema: Mapping[str, Any]) -> Any:
    """``text`` as the first of the schema's non-string types it spells, else unchanged."""
    types = _scalar_types(schema, text)
    if "string" in types:
        return text
    if "null" in types and text in _NULL_WORDS:
        return None
    if "boolean" in types and text.lower() in _BOOLEAN_WORDS:
        return _BOOLEAN_WORDS[text.lower()]
    parsers = [int] if "integer" in types else []
    parsers += [int, float] if "number" in types else []
    for parse in parsers:
        try:
            return parse(text)
        except ValueError:
            continue
    return text


def _coerce_strings(instance: Any, schema: Mapping[str, Any]) -> Any:
    """Replace, in place, string values where ``schema`` wants a number, boolean or null."""
    if isinstance(instance, str):
        return _coerce_scalar(instance, schema)
    if isinstance(instance, dict):
        properties = schema.get("properties", {})
        additional = schema.get("additionalProperties")
        for key, value in instance.items():
            sub = properties.get(key, additional if isinstance(additional, dict) else None)
            if sub is not None:
                instance[key] = _coerce_strings(value, sub)
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        instance[:] = [_coerce_strings(item, schema["items"]) for item in instance]
    return instance


def _check_cross_field_rules(config: Mapping[str, Any], source: str) -> None:
    dataset = config["dataset"]
    if dataset["train_split"] == dataset["eval_split"]:
        raise DetbenchError(
            f"{source}: key dataset.eval_split: must differ from dataset.train_split "
            f"({dataset['train_split']!r}); evaluate on held-out images"
        )
    check_ranks_divide_batches(config["train"]["ranks"], config["batch_sizes"], source)


def check_ranks_divide_batches(ranks: int, batches: Iterable[int], source: str) -> None:
    """Every global batch must split evenly over the ranks (each trains batch / ranks)."""
    for batch in batches:
        if batch % ranks:
            raise DetbenchError(
                f"{source}: key train.ranks: {ranks} does not divide batch_sizes value {batch} "
                f"(each rank trains batch / ranks images per step)"
            )


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a YAML config file (used by the command line and the tests)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DetbenchError(f"{path}: config file does not exist") from None
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise DetbenchError(f"{path}: not valid YAML{where}: {problem}") from None
    return validate_config(config if config is not None else {}, source=str(path))


def config_hash(config: Mapping[str, Any]) -> str:
    """A short, stable hash of the effective configuration (for provenance records)."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:16]


def _section_from_dict(cls: Any, values: Mapping[str, Any], section: str, noun: str) -> Any:
    """``cls(**values)`` for one config section, an unknown key named in one line."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise DetbenchError(f"config: key {section}.{unknown[0]}: unknown {noun} setting")
    return cls(**dict(values))


@dataclasses.dataclass(frozen=True)
class TrainHyperparameters:
    """The ``train:`` section of the config (see the schema for each field's meaning)."""

    lr0: float = 0.01
    lrf: float = 0.2
    momentum: float = 0.937
    nesterov: bool = True
    weight_decay: float = 0.0005
    warmup_epochs: float = 1.0
    warmup_min_iterations: int = 0
    warmup_momentum: float = 0.8
    warmup_bias_lr: float = 0.1
    box_gain: float = 0.05
    obj_gain: float = 1.0
    cls_gain: float = 0.5
    anchor_threshold: float = 4.0
    hsv_h: float = 0.015
    hsv_s: float = 0.7
    hsv_v: float = 0.4
    flip_lr: float = 0.5
    flip_ud: float = 0.0
    translate: float = 0.1
    scale: float = 0.5
    mosaic: float = 0.0
    ema: bool = True
    ema_decay: float = 0.9999
    ema_ramp_updates: float = 2000
    workers: int | str = "auto"
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True
    cudnn_benchmark: bool = True
    compile: bool = False
    checkpoint_interval_s: float = 60.0
    eval_interval_epochs: int = 0
    ranks: int = 1
    sync_bn: bool = False
    nodes: int = 1

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainHyperparameters:
        return _section_from_dict(cls, values, "train", "training")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """The ``evaluate:`` section of the config."""

    conf_threshold: float = 0.001
    nms_iou: float = 0.6
    max_detections: int = 100
    pr_confidence: float = 0.1
    batch_size: int = 8

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> EvalSettings:
        return _section_from_dict(cls, values, "evaluate", "evaluation")


@dataclasses.dataclass(frozen=True)
class ProfileSettings:
    """The ``profile:`` section of the config (the profile stage, one job per model and batch)."""

    warmup_steps: int = 3
    steps: int = 5

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ProfileSettings:
        return _section_from_dict(cls, values, "profile", "profile")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """Everything that determines one cell's result."""

    model: str
    batch: int  # training batch size (images per optimizer step)
    epochs: int
    img_size: int = 416
    seed: int = 0
    weights: str = "scratch"
    train_split: str = "train"
    hyp: TrainHyperparameters = dataclasses.field(default_factory=TrainHyperparameters)

    def fingerprint(self) -> str:
        """Identifies settings a checkpoint may be resumed under (how it runs excluded)."""
        values = dataclasses.asdict(self)
        values["hyp"] = without_runtime_keys(values["hyp"])
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_settings_from_config(
    config: dict[str, Any], *, model: str, batch: int, epochs: int
) -> TrainSettings:
    """Settings of one cell from the workflow's per-cell config (see
    detbench.workflow.rule_params)."""
    return TrainSettings(
        model=model,
        batch=batch,
        epochs=epochs,
        img_size=int(config["img_size"]),
        seed=int(config["seed"]),
        weights=str(config.get("weights", "scratch")),
        train_split=str(config["dataset"]["train_split"]),
        hyp=TrainHyperparameters.from_dict(config["train"]),
    )
