"""The train job's final evaluation (detbench.evaluation.final_evaluation): what it saves is what a
standalone evaluation of the weights writes, the evaluate job copies it only under the settings
it was made with, and copying needs no torch. End to end: the evaluate rule reuses it for
`snakemake <cell>/metrics.json` and evaluates the weights itself under other settings.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from detbench.evaluation import final_evaluation
from detbench.evaluation.evaluate import evaluate_cell
from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
from detbench.training.train import InterimEvaluation, TrainOutputs, train

REPO = Path(__file__).resolve().parents[1]
SETTINGS = EvalSettings(conf_threshold=0.001, max_detections=20, batch_size=4)
CELL = {"platform": "p", "model": "yolov3-tiny", "batch": "4", "epochs": "3"}


def _train(manifest: Path, folder: Path, eval_interval: int) -> TrainOutputs:
    settings = TrainSettings(
        model="yolov3-tiny", batch=4, epochs=3, img_size=64, seed=0,
        hyp=TrainHyperparameters(workers=0, eval_interval_epochs=eval_interval),
    )
    outputs = TrainOutputs.in_folder(folder)
    train(settings, manifest, outputs, threads=1,
          interim_evaluation=InterimEvaluation(split="val", settings=SETTINGS))
    return outputs


def _key(outputs: TrainOutputs, manifest: Path, settings: EvalSettings, eval_interval: int):
    """The key the evaluate job computes from its params (workflow/scripts/evaluate.py)."""
    hyp = TrainHyperparameters(workers=0, eval_interval_epochs=eval_interval)
    return final_evaluation.evaluation_key("val", settings, hyp, manifest, outputs.weights)


def _standalone(outputs: TrainOutputs, manifest: Path, settings: EvalSettings, folder: Path,
                eval_interval: int) -> tuple[dict[str, Any], str]:
    """metrics.json (as a dict) and detections.json (as text) of a separate evaluation."""
    folder.mkdir()
    hyp = TrainHyperparameters(workers=0, eval_interval_epochs=eval_interval)
    evaluate_cell(outputs.weights, manifest, "val", settings, hyp, folder / "metrics.json",
                  folder / "detections.json", cell=CELL, threads=1)
    return _read(folder)


def _read(folder: Path) -> tuple[dict[str, Any], str]:
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    return metrics, (folder / "detections.json").read_text(encoding="utf-8")


def _same_but_timing(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert list(a) == list(b)  # the same keys in the same order
    assert {**a, "eval_seconds": None} == {**b, "eval_seconds": None}


@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize("eval_interval", [0, 2], ids=["final-only", "last-interim-reused"])
def test_reused_evaluation_is_the_standalone_evaluation(
    synthetic_manifest: Path, tmp_path: Path, eval_interval: int
) -> None:
    outputs = _train(synthetic_manifest, tmp_path / "cell", eval_interval)
    saved = outputs.weights.with_name("final_evaluation.json")
    assert saved.is_file()
    expected, expected_detections = _standalone(
        outputs, synthetic_manifest, SETTINGS, tmp_path / "standalone", eval_interval
    )
    assert json.loads(expected_detections), "a run this short still detects something"

    reused = tmp_path / "reused"
    key = _key(outputs, synthetic_manifest, SETTINGS, eval_interval)
    assert final_evaluation.reuse(
        saved, key, reused / "metrics.json", reused / "detections.json", CELL
    )
    metrics, detections = _read(reused)
    assert detections == expected_detections  # byte for byte
    _same_but_timing(metrics, expected)
    assert metrics["cell"] == CELL


@pytest.mark.usefixtures("torch_threads")
def test_other_settings_weights_or_data_are_not_reused(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    outputs = _train(synthetic_manifest, tmp_path / "cell", 0)
    saved = outputs.weights.with_name("final_evaluation.json")
    key = _key(outputs, synthetic_manifest, SETTINGS, 0)
    metrics, detections = tmp_path / "m.json", tmp_path / "d.json"

    other_nms = dataclasses.replace(SETTINGS, nms_iou=0.5)
    other_settings = _key(outputs, synthetic_manifest, other_nms, 0)
    other_hyp = {**key, "train": {**key["train"], "device": "cuda"}}
    other_weights = {**key, "weights_sha256": "0" * 64}
    other_split = {**key, "split": "test"}
    for other in (other_settings, other_hyp, other_weights, other_split):
        assert not final_evaluation.reuse(saved, other, metrics, detections, CELL)
        assert not metrics.exists() and not detections.exists()
    # Missing and damaged files are not reused either.
    assert not final_evaluation.reuse(tmp_path / "none.json", key, metrics, detections, CELL)
    saved.write_text("{", encoding="utf-8")
    assert not final_evaluation.reuse(saved, key, metrics, detections, CELL)
    assert not metrics.exists()


def test_a_changed_weights_file_changes_the_key(tmp_path: Path) -> None:
    manifest, weights = tmp_path / "manifest.json", tmp_path / "weights.pt"
    manifest.write_text("{}", encoding="utf-8")
    weights.write_bytes(b"weights")
    settings, hyp = EvalSettings(), TrainHyperparameters()
    before = final_evaluation.evaluation_key("test", settings, hyp, manifest, weights)
    weights.write_bytes(b"retrained")
    assert final_evaluation.evaluation_key("test", settings, hyp, manifest, weights) != before


def test_reusing_imports_no_torch(tmp_path: Path) -> None:
    """What the evaluate job saves by copying: torch's import, among others."""
    key = {"split": "test"}
    final_evaluation.save(tmp_path / "saved.json", key, {"cell": {}, "metrics": {}}, [])
    script = (
        "import sys; from detbench.evaluation import final_evaluation as f; "
        f"ok = f.reuse({str(tmp_path / 'saved.json')!r}, {key!r}, {str(tmp_path / 'm.json')!r},"
        f" {str(tmp_path / 'd.json')!r}, {{}}); "
        "heavy = [m for m in ('torch', 'numpy', 'cv2') if m in sys.modules]; "
        "sys.exit(0 if ok and not heavy else f'reused {ok}, imported {heavy}')"
    )
    env_path = str(REPO / "src")
    subprocess.run([sys.executable, "-c", script], check=True, env={"PYTHONPATH": env_path})
    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {
        "cell": {}, "metrics": {}
    }


# --------------------------------------------------------------------------- the evaluate rule


@pytest.mark.slow
def test_evaluate_rule_reuses_the_train_jobs_evaluation_and_recomputes_under_other_settings(
    snakemake: Callable[..., Any], workflow_copy: Path, tiny_config: Path, tmp_path: Path
) -> None:
    config = yaml.safe_load(tiny_config.read_text(encoding="utf-8"))
    config["models"] = {"yolov3-tiny": {"weights": "scratch"}}
    config["train"]["eval_interval_epochs"] = 0  # the final evaluation only
    (workflow_copy / "one-cell.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    cell = workflow_copy / "results/test-cpu/yolov3-tiny/b4_e1"
    target = ("results/test-cpu/yolov3-tiny/b4_e1/metrics.json", "--cores", "1")
    run = snakemake(workflow_copy, *target, "--configfile", "one-cell.yaml")
    assert run.returncode == 0, run.describe()
    assert run.job_stats().get("evaluate") == 1, run.describe()
    assert "copied" in (cell / "logs/evaluate.log").read_text(encoding="utf-8")
    _assert_standalone(cell, config, tmp_path / "first")

    # Other evaluate: settings re-evaluate the weights (no retraining), as a standalone would.
    run = snakemake(workflow_copy, *target, "--configfile", "one-cell.yaml",
                    "--config", "evaluate={conf_threshold: 0.2, batch_size: 4}")
    assert run.returncode == 0, run.describe()
    assert "train" not in run.job_stats() and run.job_stats().get("evaluate") == 1
    log = (cell / "logs/evaluate.log").read_text(encoding="utf-8")
    assert "made with other evaluate" in log and "copied" not in log, log
    config["evaluate"] = {"conf_threshold": 0.2, "batch_size": 4}
    _assert_standalone(cell, config, tmp_path / "second")


def _assert_standalone(cell: Path, config: dict[str, Any], folder: Path) -> None:
    """The cell's metrics.json and detections.json are what evaluate_cell writes."""
    folder.mkdir()
    manifest = cell.parents[2] / "datasets/synthetic-tiny/yolo/manifest.json"
    evaluate_cell(
        cell / "weights.pt", manifest, "test", EvalSettings.from_dict(config["evaluate"]),
        TrainHyperparameters.from_dict(config["train"]), folder / "metrics.json",
        folder / "detections.json", cell=json.loads((cell / "metrics.json").read_text())["cell"],
        threads=1,
    )
    metrics, detections = _read(cell)
    expected, expected_detections = _read(folder)
    assert detections == expected_detections
    _same_but_timing(metrics, expected)
