"""src/detbench/workflow/invocation.py: the command line with its profiles, and the platform
label."""

from __future__ import annotations

from pathlib import Path

import pytest

from detbench.errors import DetbenchError
from detbench.workflow.invocation import (
    check_profile_config_kept,
    current_invocation,
    parse_invocation,
)

REPO = Path(__file__).resolve().parents[1]
SLURM = ["--profile", str(REPO / "profiles" / "slurm")]
SLURM_TEST = [*SLURM, "--profile", str(REPO / "tests" / "profiles" / "slurm-test")]


def test_the_profiles_settings_are_read_as_snakemake_merges_them() -> None:
    invocation = parse_invocation(SLURM_TEST)
    assert invocation.executor == "slurm"
    assert invocation.config_args == ("platform=baremetal-p40",)
    assert invocation.max_threads == 1  # the test profile's
    # The second profile has no config: block; the first one's is in effect.
    assert invocation.profile_config is not None
    assert invocation.profile_config.file == REPO / "profiles" / "slurm" / "config.yaml"
    assert invocation.profile_config.values == {"platform": "baremetal-p40"}
    assert invocation.runs_jobs and not invocation.dryrun


@pytest.mark.parametrize(
    ("extra", "runs_jobs", "dryrun"),
    [
        ([], True, False),
        (["-n"], False, True),
        (["--report", "r.html"], False, False),
        (["--unlock"], False, False),
    ],
)
def test_modes_that_run_no_job(extra: list[str], runs_jobs: bool, dryrun: bool) -> None:
    invocation = parse_invocation([*SLURM, *extra])
    assert (invocation.runs_jobs, invocation.dryrun) == (runs_jobs, dryrun)


def test_a_config_on_the_command_line_that_drops_the_profiles_label_is_refused() -> None:
    invocation = parse_invocation([*SLURM, "--config", "seed=1"])
    assert invocation.config_args == ("seed=1",)  # Snakemake replaced the profile's block
    with pytest.raises(DetbenchError) as error:
        check_profile_config_kept(invocation, "platform", "demo-cpu")
    assert str(error.value) == (
        f"{REPO / 'profiles' / 'slurm' / 'config.yaml'}: sets platform: baremetal-p40 under "
        "config:, but --config seed=1 on the command line replaces that whole block (platform "
        "would be demo-cpu); add platform=baremetal-p40 to --config, e.g. --config seed=1 "
        "platform=baremetal-p40"
    )


@pytest.mark.parametrize(
    "args",
    [
        [*SLURM],  # the profile's label
        [*SLURM, "--config", "seed=1", "platform=baremetal-p40"],  # the fix the message names
        [*SLURM, "--config", "platform=cloud-t4"],  # another label, on purpose
        [*SLURM, "--configfile", "config/demo.yaml"],  # the profile's config: still applies
        ["--config", "seed=1"],  # no profile, no label to lose
    ],
)
def test_a_kept_or_explicit_label_passes(args: list[str]) -> None:
    check_profile_config_kept(parse_invocation(args), "platform", "whatever")


def test_only_a_snakemake_command_line_is_read() -> None:
    assert current_invocation(["/usr/bin/pytest", "-q"]) is None
    assert current_invocation([]) is None
    module = current_invocation(["/venv/lib/snakemake/__main__.py", *SLURM])
    script = current_invocation(["/venv/bin/snakemake", *SLURM])
    assert module is not None and script is not None
    assert module.executor == script.executor == "slurm"
