"""src/detbench/workflow/completeness.py: cells with an evaluation but not all of their files."""

from __future__ import annotations

from pathlib import Path

from detbench.workflow.completeness import incomplete_cells

FILES = ("weights.pt", "history.csv", "run.json", "metrics.json", "detections.json")


def cell(root: Path, name: str, files: tuple[str, ...]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    for file in files:
        (folder / file).write_text("x")
    return folder


def test_a_cell_whose_training_outputs_are_gone_is_incomplete(tmp_path: Path) -> None:
    stale = cell(tmp_path, "b4_e1", ("metrics.json", "detections.json", "history.csv"))
    (found,) = incomplete_cells([stale], FILES, "metrics.json")
    assert found.folder == stale
    assert found.missing == ("weights.pt", "run.json")
    assert found.evaluation == stale / "metrics.json"
    assert found.describe() == (
        f"{stale}: weights.pt, run.json missing (a cancelled or interrupted job?): "
        "metrics.json is stale, the cell is rebuilt"
    )
    assert found.describe(rebuilt=False).endswith("a run (without -n) rebuilds the cell")


def test_complete_and_not_yet_evaluated_cells_are_left_alone(tmp_path: Path) -> None:
    complete = cell(tmp_path, "b4_e1", FILES)
    training = cell(tmp_path, "b4_e5", ("history.csv",))  # Snakemake builds it anyway
    absent = tmp_path / "b4_e10"
    assert incomplete_cells([complete, training, absent], FILES, "metrics.json") == []


def test_a_missing_evaluate_output_beside_the_metrics_counts_too(tmp_path: Path) -> None:
    folder = cell(tmp_path, "b8_e1", tuple(f for f in FILES if f != "detections.json"))
    (found,) = incomplete_cells([str(folder)], FILES, "metrics.json")
    assert found.missing == ("detections.json",)


def test_partial_cells_lack_some_files_or_ran_and_lost_all(tmp_path: Path) -> None:
    from detbench.workflow.completeness import partial_cells

    names = ("weights.pt", "run.json", "metrics.json")
    untouched, ran, half = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    untouched.mkdir()
    (ran / "logs").mkdir(parents=True)  # a cancelled job group removed every output
    half.mkdir()
    (half / "weights.pt").write_text("w")
    found = {cell.folder: cell.missing for cell in partial_cells([untouched, ran, half], names)}
    assert found == {ran: names, half: ("run.json", "metrics.json")}
