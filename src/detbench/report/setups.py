"""Whether two platforms' cells were trained under the same setup: dataset, image size and
starting weights, said plainly for each comparison of the report.

The 2020 study started from COCO-pretrained weights (``--weights yolov3.pt``): a measured
platform is like-for-like with it only with ``weights: coco`` (config/config.yaml's setting).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

# The frame's weights values (the summary's, the reference's) -> what they mean.
WEIGHTS_MEANING = {
    "coco": "COCO-pretrained weights",
    "pretrained yolov3.pt": "COCO-pretrained weights",
    "backbone": "an ImageNet-pretrained backbone",
    "scratch": "random initialisation (from scratch)",
}


def _setup(frame: pd.DataFrame, platform: str) -> set[tuple[str, str, str]]:
    rows = frame[frame["platform"] == platform]
    return {
        (str(row["dataset"]), _size(row["img_size"]), _weights(row["weights"]))
        for _, row in rows.iterrows()
    }


def _size(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "an unknown image size"
    return "an unknown image size" if math.isnan(number) else f"{number:g} px"


def _weights(value: Any) -> str:
    if not isinstance(value, str) or not value:
        return "unrecorded starting weights"
    return WEIGHTS_MEANING.get(value, value)


def _describe(setups: set[tuple[str, str, str]]) -> str:
    return " and ".join(f"{d} at {s} from {w}" for d, s, w in sorted(setups)) or "nothing"


def setup_sentence(frame: pd.DataFrame, a: str, b: str) -> str:
    """One sentence: the setups of ``a`` and ``b`` match (like-for-like), or how they differ."""
    setup_a, setup_b = _setup(frame, a), _setup(frame, b)
    if setup_a and setup_a == setup_b and len(setup_a) == 1:
        return f"Setups match: both trained on {_describe(setup_a)} (like-for-like)."
    return (
        f"Setups differ: {a} trained on {_describe(setup_a)}, {b} on {_describe(setup_b)}; "
        "differences below mix the platform with the setup."
    )
