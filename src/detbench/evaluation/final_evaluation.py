"""A cell's final evaluation, made by its train job and reused by its evaluate job.

The train job has the final weights in memory and the evaluation split decoded, so it evaluates
them there (``detbench.training.train``) and writes what the evaluate job would write,
metrics.json's and
detections.json's contents, into ``final_evaluation.json`` beside the weights, under the key of
everything that evaluation depended on: the split, the ``evaluate:`` settings, the train
hyperparameters (loss gains, device, precision), the dataset manifest's and the weights'
SHA-256. The evaluate job computes the same key from its own params and, when the two agree,
copies the result instead of importing torch, building the model and decoding the split again.
Any difference (other ``evaluate:`` settings, retrained weights, a changed dataset) and it
evaluates the weights itself.

The file is no declared output of the train rule: cells trained before it existed would
otherwise be retrained. A stale one is harmless, since its key names the weights it scored.

Standard library only: the evaluate job imports this before deciding whether it needs torch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from detbench import atomic

if TYPE_CHECKING:  # names only: this module keeps to the standard library (config imports yaml)
    from detbench.study.config import EvalSettings, TrainHyperparameters

FORMAT = "detbench-final-evaluation-v1"

log = logging.getLogger("detbench.evaluation.final_evaluation")


def evaluation_key(
    split: str,
    settings: EvalSettings,
    hyp: TrainHyperparameters,
    manifest_path: str | Path,
    weights_path: str | Path,
) -> dict[str, Any]:
    """Everything an evaluation of ``weights_path`` on ``split`` depends on: the one builder of
    the key, for the train job that saves its evaluation and the evaluate job that reuses it."""
    key = {
        "split": split,
        "evaluate": dataclasses.asdict(settings),
        "train": dataclasses.asdict(hyp),
        "manifest_sha256": atomic.sha256_file(manifest_path),
        "weights_sha256": atomic.sha256_file(weights_path),
    }
    # As the file will read back (tuples become lists), so that equal keys compare equal.
    return json.loads(json.dumps(key))


def save(
    path: str | Path,
    key: Mapping[str, Any],
    metrics: Mapping[str, Any],
    detections: list[dict[str, Any]],
) -> None:
    atomic.write_json(
        path, {"format": FORMAT, "key": key, "metrics": metrics, "detections": detections}
    )


def load_matching(path: str | Path, key: Mapping[str, Any]) -> dict[str, Any] | None:
    """The saved evaluation at ``path`` when it was made under ``key``, else None (and why, in
    the log): missing, unreadable, another format or another key."""
    try:
        saved = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        log.info("%s: none written by the train job; evaluating the weights", path)
        return None
    except (OSError, ValueError) as error:
        log.warning("%s: unreadable (%s); evaluating the weights", path, error)
        return None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT:
        log.warning("%s: not a %s file; evaluating the weights", path, FORMAT)
        return None
    differing = sorted(
        name for name in set(key) | set(saved.get("key", {}))
        if saved.get("key", {}).get(name) != key.get(name)
    )
    if differing:
        log.info("%s: made with other %s; evaluating the weights", path, ", ".join(differing))
        return None
    return saved


def reuse(
    path: str | Path,
    key: Mapping[str, Any],
    metrics_path: str | Path,
    detections_path: str | Path,
    cell: Mapping[str, Any],
) -> bool:
    """Write metrics.json and detections.json from the train job's evaluation when it was made
    under ``key``; whether it was."""
    saved = load_matching(path, key)
    if saved is None:
        return False
    metrics = {**saved["metrics"], "cell": dict(cell)}  # "cell" stays the first key
    atomic.write_json(detections_path, saved["detections"])
    atomic.write_json(metrics_path, metrics)
    scores = metrics["metrics"]
    log.info(
        "%s: the train job evaluated these weights under these settings (mAP@0.5 %s, "
        "mAP@0.5:0.95 %s); copied into %s",
        *(path, scores.get("map50"), scores.get("map50_95"), metrics_path),
    )
    return True
