"""Rule report_waiting: the section "Waiting and allocation" (Markdown, HTML)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.report.layout import ReportLayout
from detbench.report.waiting import write_waiting
from detbench.workflow.runner import run_rule


def main() -> None:
    layout = ReportLayout.from_params(snakemake.params.layout)
    markdown, page = (entry.path for entry in layout.waiting())
    write_waiting(snakemake.input.summary, Path(snakemake.input.summary).parent, markdown, page)


run_rule(snakemake, main)
