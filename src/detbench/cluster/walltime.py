"""How much wall time a scheduler is asked for per train job (the ``runtime`` resource).

Standard library only: the workflow imports it at parse time."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from detbench.data.sizes import train_image_count


@dataclasses.dataclass(frozen=True)
class WallTimeModel:
    """Wall time a scheduler is asked for per train job (the ``runtime`` resource, minutes).

    Costs are for one training pass at 416 px on a Tesla P40, the slowest GPU of the study, and
    scale with the pixel count; the margin covers a slower node or a busy file system. Only a
    scheduler reads this (profiles/slurm): a local run ignores it.
    """

    seconds_per_image: Mapping[str, float] = dataclasses.field(
        default_factory=lambda: {"yolov3": 0.05, "yolov3-tiny": 0.015}
    )
    seconds_per_step: float = 0.05  # whatever its size: small batches cost more per image
    startup_minutes: float = 10  # interpreter, CUDA context, data cache, checkpoints, saving
    margin: float = 2.0

    def minutes(
        self, model: str, batch: int, epochs: int, images: int, img_size: int, attempt: int = 1
    ) -> int:
        """Minutes for one train job. A retried job (--retries) asks for ``attempt`` times as
        much: one stopped at its wall-time limit resumes from its checkpoint with room to
        finish."""
        pixels = (img_size / 416) ** 2
        steps = math.ceil(images / batch)
        epoch_seconds = (
            images * self.seconds_per_image[model] * pixels + steps * self.seconds_per_step
        )
        train_minutes = epochs * epoch_seconds / 60
        return math.ceil(self.startup_minutes + self.margin * train_minutes) * attempt

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> WallTimeModel:
        """The config's ``walltime:`` constants over the defaults (``detbench resources``
        fits them to a finished study)."""
        values = dict(values or {})
        defaults = cls()
        per_image = {**defaults.seconds_per_image, **values.pop("seconds_per_image", {})}
        return dataclasses.replace(defaults, seconds_per_image=per_image, **values)


WALL_TIME = WallTimeModel()


def train_minutes(
    config: Mapping[str, Any], dataset_dir: str | Path, wildcards: Any, attempt: int
) -> int:
    """The wall-time model's minutes (the config's ``walltime:`` constants, else WALL_TIME's)
    for the train job of the cell named by ``wildcards``."""
    images = train_image_count(config["dataset"], dataset_dir)
    batch, epochs = int(wildcards.batch), int(wildcards.epochs)
    model = WallTimeModel.from_config(config.get("walltime"))
    return model.minutes(wildcards.model, batch, epochs, images, config["img_size"], attempt)
