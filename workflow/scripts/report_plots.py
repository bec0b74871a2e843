"""Rule report_plots: the report's figures (PNG, SVG beside)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

import pandas as pd

from detbench.report.frame import load_cells
from detbench.report.layout import ReportLayout
from detbench.report.plots import write_plots
from detbench.workflow.runner import run_rule


def main() -> None:
    layout = ReportLayout.from_params(snakemake.params.layout)
    frame = load_cells(snakemake.input.summary, snakemake.input.reference)
    # Cell folders (history.csv, gpu_samples.csv) sit beside the summary, under results/.
    runs = pd.read_csv(snakemake.input.summary)  # one row per run: the time breakdown
    write_plots(frame, layout, Path(snakemake.input.summary).parent, runs)


run_rule(snakemake, main)
