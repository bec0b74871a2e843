"""Rule download_weights: one official Darknet weights file, verified, into results/weights/."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.models.darknet_files import weights_file_named
from detbench.models.pretrained import fetch_weights
from detbench.workflow.runner import run_rule


def main() -> None:
    output = Path(snakemake.output[0])
    file = weights_file_named(output.name)
    local_dir = snakemake.params.local_dir
    local_copy = Path(local_dir) / file.name if local_dir else None
    if local_copy is not None and not local_copy.exists():
        local_copy = None
    fetch_weights(file, output.parent, local_copy=local_copy)


run_rule(snakemake, main)
