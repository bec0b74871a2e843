"""Training one cell: the loss goes down, the outputs are complete, and a killed run resumes to
exactly the result of an uninterrupted one (damaged or foreign checkpoints are not trusted)."""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import pytest
import torch

import detbench.training.checkpoint as checkpoint_module
import detbench.training.engine as engine
import detbench.training.optim as optim
import detbench.training.train as train_module
from detbench.data.dataset import DatasetManifest
from detbench.data.loader import make_train_loader
from detbench.errors import DetbenchError
from detbench.evaluation.evaluate import evaluate_cell
from detbench.evaluation.inference import load_trained_model
from detbench.models import build_model
from detbench.study.config import EvalSettings, TrainHyperparameters, TrainSettings
from detbench.training.optim import EagerSGD
from detbench.training.train import HISTORY_COLUMNS, InterimEvaluation, TrainOutputs, train

LOSS_COLUMNS = ("lr", "train_box_loss", "train_obj_loss", "train_cls_loss", "train_total_loss")


def _history(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as handle:
        return list(csv.DictReader(handle))


def _losses(path: Path) -> list[tuple[str, ...]]:
    """Everything in history.csv that must not depend on interruptions (not the timings)."""
    return [(row["epoch"], *(row[c] for c in LOSS_COLUMNS)) for row in _history(path)]


def _state_dict(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    first, second = _state_dict(a), _state_dict(b)
    assert first.keys() == second.keys()
    different = [name for name in first if not torch.equal(first[name], second[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _record(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "run.json").read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- learning


@pytest.mark.usefixtures("torch_threads")
def test_training_drives_the_loss_down(synthetic_manifest: Path, tmp_path: Path) -> None:
    # Geometry and colour augmentation off: the loss then measures fitting, not augmentation
    # noise (flips stay, they do not change the task). With seed 0 the last epochs' loss is
    # about 0.65 of the first's (other seeds: 0.65-0.8), the class loss about 0.4 (0.37-0.46).
    hyp = TrainHyperparameters(workers=0, translate=0.0, scale=0.0, hsv_h=0, hsv_s=0, hsv_v=0)
    settings = TrainSettings("yolov3-tiny", batch=2, epochs=10, img_size=96, seed=0, hyp=hyp)
    train(settings, synthetic_manifest, TrainOutputs.in_folder(tmp_path), threads=1)
    rows = _history(tmp_path / "history.csv")
    total = [float(row["train_total_loss"]) for row in rows]
    cls = [float(row["train_cls_loss"]) for row in rows]
    assert sum(total[-3:]) / 3 < 0.8 * total[0], f"total loss per epoch: {total}"
    assert sum(cls[-3:]) / 3 < 0.6 * cls[0], f"class loss per epoch: {cls}"


def test_cell_outputs_are_complete(tiny_trained_cell: tuple[TrainOutputs, dict]) -> None:
    outputs, record = tiny_trained_cell
    rows = _history(outputs.history)
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    trained = [c for c in HISTORY_COLUMNS if not c.startswith("eval_") and c != "mfu"]
    for row in rows:
        assert all(float(row[c]) >= 0 for c in trained)
        assert all(row[c] == "" for c in HISTORY_COLUMNS if c not in trained)  # not evaluated
        assert float(row["epoch_seconds"]) > 0
        # Model FLOP/s = training FLOPs per image x images/s; no datasheet peak on a CPU.
        flops = float(row["model_tflops_per_s"]) * 1e12
        assert flops == pytest.approx(
            record["model_flops_per_image"] * float(row["images_per_second"]), rel=1e-4
        )
    assert record == json.loads(outputs.record.read_text(encoding="utf-8"))
    assert record["model"] == "yolov3-tiny" and record["epochs"] == 2 and record["batch"] == 4
    assert record["peak_flops_per_s"] is None and record["mfu"] is None  # trained on a CPU
    assert record["segments"] == 1
    assert record["train_images"] == 8
    assert record["train_seconds"] == pytest.approx(
        sum(float(row["epoch_seconds"]) for row in rows), rel=1e-3
    )
    assert record["images_per_second"] == pytest.approx(16 / record["train_seconds"])
    assert record["device"] == "cpu" and record["precision"] == "fp32"
    model, metadata = load_trained_model(outputs.weights)
    assert metadata["class_names"] == ["RBC", "WBC", "Platelets"]
    assert metadata["img_size"] == 64 and model.num_classes == 3
    assert not outputs.resume_dir.exists(), "checkpoints were left behind"


def test_missing_train_split_is_a_one_line_error(synthetic_manifest: Path, tmp_path: Path) -> None:
    settings = TrainSettings("yolov3-tiny", batch=4, epochs=1, img_size=64, train_split="x")
    with pytest.raises(DetbenchError, match=r"manifest\.json: no split 'x'"):
        train(settings, synthetic_manifest, TrainOutputs.in_folder(tmp_path))


# --------------------------------------------------------------------------- resume after SIGKILL

TRAIN_SCRIPT = """
import logging, sys
from pathlib import Path
from detbench.study.config import EvalSettings, TrainHyperparameters
from detbench.study.config import TrainSettings
from detbench.training.train import TrainOutputs, train

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
manifest, out = Path(sys.argv[1]), Path(sys.argv[2])
settings = TrainSettings(
    model="yolov3-tiny", batch=4, epochs=6, img_size=96, seed=0,
    hyp=TrainHyperparameters(workers=0, checkpoint_interval_s=0),
)
train(settings, manifest, TrainOutputs.in_folder(out), threads=1)
"""


def _start_training(manifest: Path, out: Path) -> tuple[subprocess.Popen, Path]:
    out.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    env = {**os.environ, "PYTHONPATH": str(Path(train_module.__file__).parents[2])}
    with log.open("a", encoding="utf-8") as handle:
        process = subprocess.Popen(
            [sys.executable, "-c", TRAIN_SCRIPT, str(manifest), str(out)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return process, log


def _complete_checkpoints(resume_dir: Path) -> list[int]:
    # The sha256 file is written after the checkpoint itself: its presence marks a whole one.
    return sorted(int(path.stem.split("-")[1]) for path in resume_dir.glob("epoch-*.sha256"))


@pytest.mark.slow
def test_resume_after_sigkill_is_identical_to_an_uninterrupted_run(
    synthetic_manifest: Path, tmp_path: Path
) -> None:
    whole, interrupted = tmp_path / "whole", tmp_path / "interrupted"
    reference, _ = _start_training(synthetic_manifest, whole)
    victim, victim_log = _start_training(synthetic_manifest, interrupted)
    try:
        deadline = time.monotonic() + 300
        while not any(e >= 2 for e in _complete_checkpoints(interrupted / "checkpoints")):
            assert victim.poll() is None, "the run ended before it could be killed:\n" + (
                victim_log.read_text(encoding="utf-8")
            )
            assert time.monotonic() < deadline, "no checkpoint after 300 s"
            time.sleep(0.005)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=60) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (interrupted / "run.json").exists(), "killed too late to test anything"
    assert not (interrupted / "weights.pt").exists()
    killed_after = max(_complete_checkpoints(interrupted / "checkpoints"))

    resumed, resumed_log = _start_training(synthetic_manifest, interrupted)
    assert resumed.wait(timeout=600) == 0, resumed_log.read_text(encoding="utf-8")
    assert reference.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text(encoding="utf-8")

    log = resumed_log.read_text(encoding="utf-8")
    assert "resuming" in log and "(segment 2)" in log, log
    resumed_at = int(log.split("after epoch ")[1].split()[0])
    assert 2 <= resumed_at <= killed_after
    _assert_same_weights(whole / "weights.pt", interrupted / "weights.pt")
    assert _losses(whole / "history.csv") == _losses(interrupted / "history.csv")
    assert len(_history(interrupted / "history.csv")) == 6
    assert _record(whole)["segments"] == 1
    assert _record(interrupted)["segments"] == 2
    assert _record(whole)["settings_fingerprint"] == _record(interrupted)["settings_fingerprint"]
    for folder in (whole, interrupted):
        assert not (folder / "checkpoints").exists(), f"{folder}: checkpoints left behind"


# --------------------------------------------------------------------------- damaged checkpoints

SHORT = TrainSettings(
    "yolov3-tiny",
    batch=4,
    epochs=4,
    img_size=64,
    seed=0,
    hyp=TrainHyperparameters(workers=0, checkpoint_interval_s=0),
)
# SHORT with another learning rate: checkpoints of one are foreign to the other.
OTHER = dataclasses.replace(SHORT, hyp=dataclasses.replace(SHORT.hyp, lr0=0.02))


@pytest.fixture(scope="module")
def run_with_checkpoints(
    synthetic_manifest: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """A finished 4-epoch run whose last two checkpoints (epochs 2 and 3: none is written
    after the last epoch) were kept."""
    folder = tmp_path_factory.mktemp("kept")
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_module, "remove_checkpoints", lambda resume_dir: None)
        try:
            train(SHORT, synthetic_manifest, TrainOutputs.in_folder(folder), threads=1)
        finally:
            torch.set_num_threads(threads)
    names = sorted(p.name for p in (folder / "checkpoints").iterdir())
    assert names == [
        "epoch-00002.pt",
        "epoch-00002.sha256",
        "epoch-00003.pt",
        "epoch-00003.sha256",
    ], names
    return folder


def _interrupted_copy(run: Path, dest: Path) -> Path:
    """The run's checkpoints alone, as a job killed during its last epoch would leave them."""
    dest.mkdir()
    shutil.copytree(run / "checkpoints", dest / "checkpoints")
    return dest


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif how == "bytes flipped":
        data = bytearray(path.read_bytes())
        for offset in range(len(data) // 2, len(data) // 2 + 16):
            data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "no sha256":
        path.with_suffix(".sha256").unlink()
    else:
        raise ValueError(how)


@pytest.mark.usefixtures("torch_threads")
@pytest.mark.parametrize("how", ["truncated", "bytes flipped", "no sha256"])
def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(
    run_with_checkpoints: Path,
    synthetic_manifest: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    how: str,
) -> None:
    folder = _interrupted_copy(run_with_checkpoints, tmp_path / "cell")
    _damage(folder / "checkpoints/epoch-00003.pt", how)
    caplog.set_level(logging.INFO, logger="detbench.training.train")

    record = train(SHORT, synthetic_manifest, TrainOutputs.in_folder(folder), threads=1)

    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("epoch-00003.pt" in m and "damaged" in m for m in warnings), warnings
    assert "resuming" in caplog.text and "after epoch 2" in caplog.text
    assert record["segments"] == 2
    _assert_same_weights(run_with_checkpoints / "weights.pt", folder / "weights.pt")
    assert _losses(run_with_checkpoints / "history.csv") == _losses(folder / "history.csv")
    assert not (folder / "checkpoints").exists()


@pytest.mark.usefixtures("torch_threads")
def test_all_checkpoints_damaged_starts_afresh(
    run_with_checkpoints: Path,
    synthetic_manifest: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = _interrupted_copy(run_with_checkpoints, tmp_path / "cell")
    _damage(folder / "checkpoints/epoch-00003.pt", "bytes flipped")
    _damage(folder / "checkpoints/epoch-00002.pt", "truncated")
    caplog.set_level(logging.INFO, logger="detbench.training.train")

    record = train(SHORT, synthetic_manifest, TrainOutputs.in_folder(folder), threads=1)

    assert caplog.text.count("damaged") >= 2
    assert "resuming" not in caplog.text
    assert record["segments"] == 1
    _assert_same_weights(run_with_checkpoints / "weights.pt", folder / "weights.pt")


@pytest.mark.usefixtures("torch_threads")
def test_checkpoints_written_under_other_settings_are_ignored(
    run_with_checkpoints: Path,
    synthetic_manifest: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert OTHER.fingerprint() != SHORT.fingerprint()
    folder = _interrupted_copy(run_with_checkpoints, tmp_path / "cell")
    caplog.set_level(logging.INFO, logger="detbench.training.train")

    record = train(OTHER, synthetic_manifest, TrainOutputs.in_folder(folder), threads=1)

    assert "other settings" in caplog.text and "resuming" not in caplog.text
    assert record["segments"] == 1
    clean = tmp_path / "clean"
    train(OTHER, synthetic_manifest, TrainOutputs.in_folder(clean), threads=1)
    _assert_same_weights(clean / "weights.pt", folder / "weights.pt")
    assert _losses(clean / "history.csv") == _losses(folder / "history.csv")


class _Killed(Exception):
    """Stands in for SIGKILL inside the test process."""


@pytest.mark.usefixtures("torch_threads")
def test_progress_under_new_settings_is_not_discarded_for_foreign_checkpoints(
    run_with_checkpoints: Path,
    synthetic_manifest: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Settings changed after a killed run: the new run's first epoch must be resumable even
    though the old run's (higher-numbered) checkpoints are still in the folder."""
    folder = _interrupted_copy(run_with_checkpoints, tmp_path / "cell")
    save = checkpoint_module.save_checkpoint

    def save_then_die(resume_dir: Path, state: dict[str, Any]) -> None:
        save(resume_dir, state)
        raise _Killed

    monkeypatch.setattr(train_module, "save_checkpoint", save_then_die)
    with pytest.raises(_Killed):
        train(OTHER, synthetic_manifest, TrainOutputs.in_folder(folder), threads=1)

    state = checkpoint_module.load_latest_checkpoint(folder / "checkpoints", OTHER.fingerprint())
    kept = sorted(p.name for p in (folder / "checkpoints").glob("*.pt"))
    assert state is not None and state["epoch"] == 1, f"epoch 1 was not kept: {kept}"


def test_fingerprint_ignores_only_how_the_cell_runs() -> None:
    base = SHORT.fingerprint()
    for runtime in (
        {"workers": 4},
        {"device": "cpu"},
        {"channels_last": False, "cudnn_benchmark": False, "compile": True},
        {"checkpoint_interval_s": 600},
        {"eval_interval_epochs": 2},
    ):
        same = dataclasses.replace(SHORT, hyp=dataclasses.replace(SHORT.hyp, **runtime))
        assert same.fingerprint() == base
    for changed in (
        dataclasses.replace(SHORT, batch=8),
        dataclasses.replace(SHORT, epochs=3),
        dataclasses.replace(SHORT, seed=1),
        dataclasses.replace(SHORT, model="yolov3"),
        dataclasses.replace(SHORT, hyp=dataclasses.replace(SHORT.hyp, amp=False)),
    ):
        assert changed.fingerprint() != base, changed


@pytest.mark.slow
def test_compiled_forward_trains_like_eager() -> None:
    """train.compile runs the forward through torch.compile; the module, its state_dict keys
    and the step's result stay those of the eager model."""
    from detbench.data.dataset import Batch
    from detbench.training.device import select_precision
    from detbench.training.loss import YoloLoss

    device = torch.device("cpu")
    precision = select_precision(device, amp=True)
    images = torch.randint(
        0, 256, (2, 3, 96, 96), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    targets = torch.tensor([[0, 0, 0.5, 0.5, 0.2, 0.2], [1, 1, 0.3, 0.3, 0.1, 0.1]])
    batch = Batch(images, targets, ["a", "b"], [])
    results = {}
    for compile_forward in (False, True):
        settings = TrainSettings(
            "yolov3-tiny", 2, 1, img_size=96, hyp=TrainHyperparameters(compile=compile_forward)
        )
        torch.manual_seed(0)
        model = engine.build_training_model(settings, 3)
        state = engine.TrainingState.create(model, settings, precision, device)
        loss_fn = YoloLoss(model, settings.hyp)
        items = [
            engine.train_step(state, batch, loss_fn, precision, device) for _ in range(2)
        ]
        results[compile_forward] = (items, model.state_dict())
    (eager_items, eager_state), (compiled_items, compiled_state) = results[False], results[True]
    assert list(compiled_state) == list(eager_state)
    for eager, compiled in zip(eager_items, compiled_items, strict=True):
        assert compiled.total == pytest.approx(eager.total, rel=1e-3)
    for name, tensor in eager_state.items():
        torch.testing.assert_close(compiled_state[name], tensor, rtol=1e-3, atol=1e-4)


def test_ema_update_is_the_weighted_average_and_copies_counters() -> None:
    """ModelEMA's multi-tensor update computes, tensor by tensor, exactly what the plain
    formula does: ema = decay * ema + (1 - decay) * model; integer buffers are copied."""

    torch.manual_seed(0)
    model = build_model("yolov3-tiny", num_classes=3).train()
    ema = optim.ModelEMA(model, decay=0.9, ramp_updates=4)
    expected = {k: v.clone() for k, v in ema.model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter))
        model(torch.rand(2, 3, 64, 64))  # moves the BN statistics and their counters
    ema.update(model)

    decay = 0.9 * (1 - math.exp(-1 / 4))
    source = model.state_dict()
    for name, value in expected.items():
        if value.dtype.is_floating_point:
            value.mul_(decay).add_(source[name], alpha=1 - decay)
        else:
            value.copy_(source[name])
    averaged = ema.model.state_dict()
    counters = [k for k, v in averaged.items() if not v.dtype.is_floating_point]
    assert counters and all(averaged[k].item() == 1 for k in counters)
    for name, value in expected.items():
        assert torch.equal(averaged[name], value), name
    assert ema.updates == 1


def test_loader_with_workers_forks_them_without_opencv_threads(synthetic_manifest: Path) -> None:
    """With workers, OpenCV's pool is off before they fork (each would otherwise run a thread
    per core); a loader without workers leaves OpenCV as it was. The batches still come."""
    manifest = DatasetManifest.load(synthetic_manifest)
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(2)
        settings = TrainSettings("yolov3-tiny", 4, 1, img_size=64,
                                 hyp=TrainHyperparameters(workers=0))
        make_train_loader(manifest, settings, torch.device("cpu"))
        assert cv2.getNumThreads() == 2

        settings = dataclasses.replace(settings, hyp=TrainHyperparameters(workers=2))
        loader = make_train_loader(manifest, settings, torch.device("cpu"))
        assert cv2.getNumThreads() in (0, 1)  # 0 asked for; some builds report 1
        assert sum(len(batch.images) for batch in loader) == len(loader.dataset)
    finally:
        cv2.setNumThreads(before)


def test_checkpoints_follow_the_interval_and_never_the_last_epoch(
    synthetic_manifest: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torch_threads: None
) -> None:
    """Interval 0: after every epoch but the last. A long interval: none in a short job.
    The record says how many were written and what they cost."""
    saved: list[int] = []
    save = checkpoint_module.save_checkpoint

    def recording_save(resume_dir: Path, state: dict[str, Any]) -> None:
        saved.append(state["epoch"])
        save(resume_dir, state)

    monkeypatch.setattr(train_module, "save_checkpoint", recording_save)
    every_epoch = train(SHORT, synthetic_manifest, TrainOutputs.in_folder(tmp_path / "a"))
    assert saved == [1, 2, 3]
    assert every_epoch["checkpoints_written_this_segment"] == 3
    assert every_epoch["checkpoint_seconds_this_segment"] > 0

    saved.clear()
    hourly = dataclasses.replace(SHORT, hyp=dataclasses.replace(SHORT.hyp,
                                                                checkpoint_interval_s=3600))
    record = train(hourly, synthetic_manifest, TrainOutputs.in_folder(tmp_path / "b"))
    assert saved == []
    assert record["checkpoints_written_this_segment"] == 0
    assert record["checkpoint_seconds_this_segment"] == 0
    assert hourly.fingerprint() == SHORT.fingerprint()  # how it runs, not what it computes
    _assert_same_weights(tmp_path / "a" / "weights.pt", tmp_path / "b" / "weights.pt")


# ------------------------------------------------------------------ evaluating while training


def test_evaluating_during_training_changes_nothing_and_ends_at_the_evaluate_jobs_figure(
    synthetic_manifest: Path, tmp_path: Path, torch_threads: None
) -> None:
    """Every 2 epochs of 5 and after the last: columns filled at epochs 2, 4 and 5 only, the
    same weights and losses as without it, and the last point is what the evaluate job finds."""
    interim = InterimEvaluation(split="val", settings=EvalSettings(conf_threshold=0.01))
    plain = dataclasses.replace(SHORT, epochs=5)
    evaluated = dataclasses.replace(plain, hyp=dataclasses.replace(plain.hyp,
                                                                   eval_interval_epochs=2))
    train(plain, synthetic_manifest, TrainOutputs.in_folder(tmp_path / "plain"),
          interim_evaluation=interim)
    train(evaluated, synthetic_manifest, TrainOutputs.in_folder(tmp_path / "evaluated"),
          interim_evaluation=interim)

    _assert_same_weights(tmp_path / "plain" / "weights.pt", tmp_path / "evaluated" / "weights.pt")
    assert _losses(tmp_path / "plain" / "history.csv") == _losses(
        tmp_path / "evaluated" / "history.csv"
    )
    eval_columns = ("eval_map50", "eval_map50_95", "eval_total_loss", "eval_seconds")
    assert all(
        row[c] == "" for row in _history(tmp_path / "plain" / "history.csv") for c in eval_columns
    )
    rows = _history(tmp_path / "evaluated" / "history.csv")
    filled = [row["epoch"] for row in rows if row["eval_map50"] != ""]
    assert filled == ["2", "4", "5"]
    assert all(row[c] != "" for row in rows if row["epoch"] in filled for c in eval_columns)
    assert all(float(row["eval_seconds"]) > 0 for row in rows if row["epoch"] in filled)

    result = evaluate_cell(
        tmp_path / "evaluated" / "weights.pt", synthetic_manifest, "val", interim.settings,
        evaluated.hyp, tmp_path / "metrics.json", tmp_path / "detections.json",
    )
    for column, key in (("eval_map50", "map50"), ("eval_map50_95", "map50_95")):
        assert rows[-1][column] == f"{result['metrics'][key]:.6g}", column
    # The mAPs of so short a run are 0; the loss on the split is not, and must agree too.
    assert rows[-1]["eval_total_loss"] == f"{sum(result['val_loss'].values()):.6g}"
    assert float(rows[-1]["eval_total_loss"]) > 0


# --------------------------------------------------------------------------- the optimizer


def _sgd_run(optimizer_class: type[torch.optim.SGD]) -> tuple[list[torch.Tensor], dict]:
    """Three steps of yolov3-tiny with make_optimizer's groups (momentum, Nesterov, decay on
    conv weights only); the weights after, and the optimizer's state_dict."""
    torch.manual_seed(0)
    model = build_model("yolov3-tiny", num_classes=3).train()
    bn_weights, conv_weights, biases = optim.param_groups(model)
    optimizer = optimizer_class(
        [
            {"params": bn_weights, "weight_decay": 0.0},
            {"params": conv_weights, "weight_decay": 5e-4},
            {"params": biases, "weight_decay": 0.0},
        ],
        lr=0.01,
        momentum=0.937,
        nesterov=True,
    )
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    for _ in range(3):
        optimizer.zero_grad(set_to_none=True)
        sum(output.square().mean() for output in model(images)).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()], optimizer.state_dict()


def test_eager_sgd_computes_exactly_what_torch_sgd_does() -> None:
    eager_weights, eager_state = _sgd_run(EagerSGD)
    torch_weights, torch_state = _sgd_run(torch.optim.SGD)
    assert all(torch.equal(a, b) for a, b in zip(eager_weights, torch_weights, strict=True))
    assert eager_state["param_groups"] == torch_state["param_groups"]
    assert eager_state["state"].keys() == torch_state["state"].keys()
    for key, state in eager_state["state"].items():
        assert torch.equal(state["momentum_buffer"], torch_state["state"][key]["momentum_buffer"])
    # Checkpoints written by either load into the other.
    model = build_model("yolov3-tiny", num_classes=3)
    EagerSGD(model.parameters(), lr=0.01, momentum=0.9).load_state_dict(
        torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9).state_dict()
    )


DYNAMO_SCRIPT = """
import sys
from pathlib import Path
from detbench.study.config import TrainHyperparameters
from detbench.study.config import TrainSettings
from detbench.training.train import TrainOutputs, train

settings = TrainSettings(
    model="yolov3-tiny", batch=4, epochs=2, img_size=64, seed=0,
    hyp=TrainHyperparameters(workers=0, checkpoint_interval_s=0),
)
train(settings, Path(sys.argv[1]), TrainOutputs.in_folder(Path(sys.argv[2])), threads=1)
print("torch._dynamo imported:", "torch._dynamo" in sys.modules)
"""


def test_a_train_job_does_not_import_torch_dynamo(synthetic_manifest: Path, tmp_path: Path) -> None:
    """Start-up time and memory (see detbench.training.optim): a whole job, a checkpoint
    included."""
    env = {**os.environ, "PYTHONPATH": str(Path(train_module.__file__).parents[2])}
    done = subprocess.run(
        [sys.executable, "-c", DYNAMO_SCRIPT, str(synthetic_manifest), str(tmp_path / "cell")],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "torch._dynamo imported: False" in done.stdout, done.stdout + done.stderr


def test_evaluating_on_a_missing_split_fails_before_training(
    synthetic_manifest: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    evaluated = dataclasses.replace(SHORT, hyp=dataclasses.replace(SHORT.hyp,
                                                                   eval_interval_epochs=1))
    with (
        caplog.at_level(logging.INFO, logger="detbench.training.train"),
        pytest.raises(DetbenchError, match="no split 'holdout'") as error,
    ):
        train(evaluated, synthetic_manifest, TrainOutputs.in_folder(tmp_path / "cell"),
              interim_evaluation=InterimEvaluation("holdout", EvalSettings()))
    assert str(synthetic_manifest) in str(error.value)
    assert "epoch 1/" not in caplog.text  # not one epoch trained before saying so
