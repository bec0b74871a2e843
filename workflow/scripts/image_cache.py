"""Rule image_cache: one split of the converted dataset decoded once into a disk cache."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.data.image_cache import build_from_manifest
from detbench.workflow.runner import run_rule


def main() -> None:
    wildcards = snakemake.wildcards
    manifest = Path(snakemake.input.dataset) / "manifest.json"
    build_from_manifest(manifest, wildcards.split, int(wildcards.img_size), snakemake.output[0])


run_rule(snakemake, main)
