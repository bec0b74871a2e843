"""Rule download: put the configured dataset in VOC layout at the rule's output folder."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.data.prepare import prepare_voc_dataset
from detbench.workflow.runner import run_rule


def main() -> None:
    prepare_voc_dataset(
        snakemake.params.dataset, Path(snakemake.output[0]), seed=snakemake.params.seed
    )


run_rule(snakemake, main)
