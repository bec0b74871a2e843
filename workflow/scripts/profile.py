"""Rule profile: torch.profiler over a few training steps of one {model, batch}."""

import sys
from pathlib import Path

# detbench from this checkout, also where it is not installed (e.g. a conda env of its own).
sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))

from detbench.data.cache_plan import image_caches_of
from detbench.study.config import ProfileSettings, train_settings_from_config
from detbench.telemetry.kernels import ProfileOutputs, profile_cell
from detbench.workflow.runner import run_rule


def main() -> None:
    config = snakemake.params.config
    settings = train_settings_from_config(
        config,
        model=snakemake.wildcards.model,
        batch=int(snakemake.wildcards.batch),
        epochs=1,
    )
    outputs = ProfileOutputs(
        kernels=Path(snakemake.output.kernels),
        summary=Path(snakemake.output.summary),
        trace=Path(snakemake.output.trace),
    )
    profile_cell(
        settings,
        Path(snakemake.input.dataset) / "manifest.json",
        outputs,
        ProfileSettings.from_dict(config["profile"]),
        threads=snakemake.threads,
        platform=snakemake.wildcards.platform,
        config=config,
        image_caches=image_caches_of(snakemake.input),
    )


run_rule(snakemake, main)
