"""Rule report_joint: the joint-against-separate table (CSV, Markdown, HTML)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.report.joint import write_joint
from detbench.report.layout import ReportLayout
from detbench.workflow.runner import run_rule


def main() -> None:
    layout = ReportLayout.from_params(snakemake.params.layout)
    paths = {e.path.rsplit(".", 1)[-1]: e.path for e in layout.joint_models()}
    write_joint([Path(m).parent for m in snakemake.input.metrics], paths)


run_rule(snakemake, main)
