"""Rule convert: VOC XML -> YOLO labels and a dataset manifest."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.data.prepare import convert_dataset
from detbench.workflow.runner import run_rule


def main() -> None:
    convert_dataset(snakemake.params.dataset, Path(snakemake.input.voc), Path(snakemake.output[0]))


run_rule(snakemake, main)
