"""The study's grid: its cells (platform, model, batch, epochs, repeat), each model's starting
weights and repeats, and each repeat's seed. Standard library only: the workflow imports it at
parse time."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detbench.study.cells import Cell


def model_weights(config: Mapping[str, Any], model: str) -> str:
    """Starting weights (scratch, backbone or coco) configured for ``model``."""
    settings = config["models"].get(model) or {}
    return settings.get("weights", "scratch")


def model_repeats(config: Mapping[str, Any], model: str) -> int:
    """Runs of every cell of ``model``: models.<model>.repeats, else the top-level repeats."""
    settings = config["models"].get(model) or {}
    return int(settings.get("repeats", config["repeats"]))


def repeat_seed(config: Mapping[str, Any], repeat: int) -> int:
    """The seed of repeat ``repeat``: seed + repeat (repeat_seed vary) or the seed (fixed)."""
    return int(config["seed"]) + (repeat if config["repeat_seed"] == "vary" else 0)


def study_cells(config: Mapping[str, Any]) -> list[Cell]:
    """The configured grid on the config's platform: every model, batch size, epochs and
    repeat."""
    return [
        Cell(config["platform"], model, int(batch), int(epochs), repeat)
        for model in config["models"]
        for batch in config["batch_sizes"]
        for epochs in config["epochs"]
        for repeat in range(model_repeats(config, model))
    ]


def study_profiles(config: Mapping[str, Any]) -> list[Path]:
    """Profile folders of the grid: one per {model, batch}, in grid order."""
    folders = (cell.profile_folder() for cell in study_cells(config))
    return list(dict.fromkeys(folders))
