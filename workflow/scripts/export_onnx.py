"""Rule export_onnx: a trained cell's weights.pt as model.onnx (detbench.deploy.export)."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.workflow.runner import run_rule


def main() -> None:
    import logging

    import torch

    from detbench.deploy.export import export_onnx

    torch.set_num_threads(snakemake.threads)
    # Dynamic batch: the benchmark times batches of 1 to 32 with the one file.
    result = export_onnx(snakemake.input.weights, snakemake.output[0], dynamic_batch=True)
    logging.getLogger("detbench.deploy.export").info("%s", result.summary())


run_rule(snakemake, main)
