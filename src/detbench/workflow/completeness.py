"""Which cells of the study are only partly there, so that they are rebuilt, not summarised.

A cell is complete only when all of its files are: the train outputs (weights, history, run
record, GPU samples) and the evaluate outputs (metrics, detections). Snakemake alone does not
see a cell whose train outputs are gone while its metrics.json stays (a forced retrain that was
cancelled with --retries 0 leaves that): it never reruns a missing intermediate file whose
consumers exist, so the summary would keep the cell's stale row. The workflow forces the
evaluation of such a cell (rules/checks.smk), which retrains what is missing first.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class IncompleteCell:
    """A cell that has an evaluation but lacks some of its files."""

    folder: Path
    missing: tuple[str, ...]
    evaluation: Path  # the file whose rebuild brings the rest back (metrics.json)

    def describe(self, *, rebuilt: bool = True) -> str:
        """One line for the log; ``rebuilt`` False for a run that builds nothing (-n)."""
        what = "the cell is rebuilt" if rebuilt else "a run (without -n) rebuilds the cell"
        return (
            f"{self.folder}: {', '.join(self.missing)} missing (a cancelled or interrupted "
            f"job?): {self.evaluation.name} is stale, {what}"
        )


def incomplete_cells(
    cells: Iterable[str | Path], file_names: Sequence[str], evaluation: str
) -> list[IncompleteCell]:
    """Cells under ``cells`` whose ``evaluation`` file exists while one of ``file_names``
    does not. A cell without its evaluation is left to Snakemake, which builds it anyway."""
    return [
        dataclasses.replace(cell, evaluation=cell.folder / evaluation)
        for cell in partial_cells(cells, file_names)
        if (cell.folder / evaluation).is_file()
    ]


def partial_cells(cells: Iterable[str | Path], file_names: Sequence[str]) -> list[IncompleteCell]:
    """Cells under ``cells`` that have some of ``file_names`` but not all (a cell with none has
    not run yet). Their evaluation is whichever file they kept first."""
    found = []
    for cell in map(Path, cells):
        present = [name for name in file_names if (cell / name).exists()]
        missing = tuple(name for name in file_names if name not in present)
        if missing and (present or (cell / "logs").is_dir()):
            found.append(IncompleteCell(cell, missing, cell / (present or missing)[0]))
    return found
