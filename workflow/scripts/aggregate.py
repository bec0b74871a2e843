"""Rule aggregate: every finished cell under results/ into results/summary.csv."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.summary.aggregate import write_summary
from detbench.workflow.runner import run_rule


def main() -> None:
    cells = sorted({Path(path).parent for path in snakemake.input.metrics})
    write_summary(
        cells, snakemake.output.summary, stats_path=snakemake.output.stats, **snakemake.params.cost
    )


run_rule(snakemake, main)
