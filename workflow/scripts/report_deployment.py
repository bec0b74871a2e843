"""Rule report_deployment: the Deployment section (Markdown, HTML) from summary.csv."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.report.deployment import write_deployment
from detbench.workflow.runner import run_rule


def main() -> None:
    markdown, html = snakemake.output
    write_deployment(snakemake.input.summary, markdown, html)


run_rule(snakemake, main)
