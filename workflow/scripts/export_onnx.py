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
    # Dynamic batch: the benchmark times batches of 1 to 32 with the one file. The traced
    # graph is shared by the model's cells (results/<platform>/<model>/.onnx_graphs): each
    # cell's export then only puts its weights into it.
    output = Path(snakemake.output[0])
    graphs = output.parents[1] / ".onnx_graphs"
    result = export_onnx(
        snakemake.input.weights, output, dynamic_batch=True, graph_cache=graphs
    )
    logging.getLogger("detbench.deploy.export").info("%s", result.summary())


run_rule(snakemake, main)
