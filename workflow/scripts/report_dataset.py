"""Rule report_dataset: the dataset manifest as a table (CSV, Markdown, HTML)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.report.dataset import write_dataset
from detbench.report.layout import ReportLayout
from detbench.workflow.runner import run_rule


def main() -> None:
    layout = ReportLayout.from_params(snakemake.params.layout)
    manifest = Path(snakemake.input.dataset) / "manifest.json"
    write_dataset(manifest, snakemake.params.dataset, layout)


run_rule(snakemake, main)
