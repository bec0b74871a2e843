"""detbench.study.cells: one cell's folder, its files and parsing them back; the workflow's
patterns."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from detbench.study import cells
from detbench.study.cells import Cell


def test_repeat_zero_is_the_folder_a_study_without_repeats_has() -> None:
    cell = Cell("cloud-t4", "yolov3", 8, 20)
    assert cell.folder() == Path("results/cloud-t4/yolov3/b8_e20")
    assert cell.profile_folder() == Path("results/cloud-t4/yolov3/profile_b8")
    assert Cell("cloud-t4", "yolov3", 8, 20, repeat=2).folder("out") == Path(
        "out/cloud-t4/yolov3/b8_e20_r2"
    )
    assert cell.file(cells.RUN_RECORD) == Path("results/cloud-t4/yolov3/b8_e20/run.json")


@pytest.mark.parametrize("repeat", [0, 1, 12])
def test_folder_parses_back_to_its_cell(repeat: int) -> None:
    cell = Cell("baremetal-p40", "yolov3-tiny", 16, 5, repeat)
    assert Cell.from_folder(cell.folder("/data/results")) == cell
    assert Cell.from_file(cell.file(cells.METRICS)) == cell


@pytest.mark.parametrize(
    "folder",
    [
        "results/p/yolov3/b08_e5",  # a leading zero would alias b8_e5
        "results/p/yolov3/b8_e0",
        "results/p/yolov3/b8_e5_r0",  # repeat 0 has no suffix
        "results/p/yolov3/b8_e5_x",
        "results/p/yolov3/profile_b8",
        "results/datasets/bccd/b8_e5",  # not a platform
        "b8_e5",
    ],
)
def test_other_folders_are_no_cells(folder: str) -> None:
    assert Cell.from_folder(folder) is None


def test_cells_order_numerically() -> None:
    unordered = [Cell("p", "yolov3", 16, 1), Cell("p", "yolov3", 4, 10, 1)]
    unordered.append(Cell("p", "yolov3", 4, 10))
    assert [c.name for c in sorted(unordered)] == ["b4_e10", "b4_e10_r1", "b16_e1"]


def test_find_cells_takes_cell_folders_holding_the_file(tmp_path: Path) -> None:
    for folder in ["p/yolov3/b4_e1", "p/yolov3/b4_e1_r1", "p/yolov3/b16_e1", "logs/x/b4_e1"]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / cells.METRICS).write_text("{}")
    (tmp_path / "p/yolov3/b8_e1").mkdir()  # not evaluated
    found = cells.find_cells(tmp_path)
    assert [c.name for c in found] == ["b4_e1", "b4_e1_r1", "b16_e1"]


def test_profile_files_of_other_platforms(tmp_path: Path) -> None:
    for folder in ["a/yolov3/profile_b4", "b/yolov3/profile_b8", "report/x/profile_b4"]:
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / "summary.json").write_text("{}")
    found = cells.find_profile_files(tmp_path, "summary.json", except_platform="a")
    assert found == [tmp_path / "b/yolov3/profile_b8/summary.json"]


def test_snakemake_pattern_and_constraints_match_the_folders() -> None:
    """The workflow's pattern with its wildcard constraints matches exactly the folders Cell
    builds, as Snakemake would match them."""
    constraints = cells.wildcard_constraints("cloud-t4")
    pattern = cells.snakemake_cell_pattern()
    regex = re.escape(pattern)
    for name, constraint in constraints.items():
        regex = regex.replace(re.escape("{" + name + "}"), f"(?P<{name}>{constraint})")
    for repeat in (0, 3):
        cell = Cell("cloud-t4", "yolov3-tiny", 32, 10, repeat)
        match = re.fullmatch(regex, cell.folder().as_posix())
        assert match is not None
        assert cells.repeat_from_suffix(match["repeat_suffix"]) == repeat
    assert re.fullmatch(regex, "results/other/yolov3/b4_e1") is None
