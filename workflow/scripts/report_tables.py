"""Rule report_tables: the study's tables, one per platform × model (CSV, Markdown, HTML)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.report.frame import load_cells
from detbench.report.layout import ReportLayout
from detbench.report.tables import write_tables
from detbench.workflow.runner import run_rule


def main() -> None:
    layout = ReportLayout.from_params(snakemake.params.layout)
    frame = load_cells(snakemake.input.summary, snakemake.input.reference)
    write_tables(frame, layout)


run_rule(snakemake, main)
