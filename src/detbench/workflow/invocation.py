"""What the `snakemake` command line asked for, with the profiles it names (``--profile``).

The workflow reads this in the process the user started, to check what a profile set before
any job runs: Snakemake's own settings do not say which profile a value came from, nor which
executor will run the jobs while the Snakefile is parsed. The command line is parsed by
Snakemake's own parser (``snakemake.cli.parse_args``), so profiles merge exactly as for the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from detbench.errors import DetbenchError

# Options under which Snakemake plans, reports or inspects but runs no job.
NO_JOB_OPTIONS = (
    "dryrun",
    "touch",
    "report",
    "lint",
    "unlock",
    "list_rules",
    "list_target_rules",
    "list_changes",
    "summary",
    "detailed_summary",
    "dag",
    "rulegraph",
    "filegraph",
    "d3dag",
    "cleanup_metadata",
    "cleanup_shadow",
    "delete_all_output",
    "delete_temp_output",
    "print_compilation",
    "containerize",
    "archive",
    "export_cwl",
    "generate_unit_tests",
    "conda_create_envs_only",
    "conda_cleanup_envs",
    "edit_notebook",
)


@dataclasses.dataclass(frozen=True)
class ProfileConfig:
    """The ``config:`` block of a profile (the last one naming it: later profiles replace
    whole top-level keys) and the file it is in."""

    file: Path
    values: Mapping[str, Any]


@dataclasses.dataclass(frozen=True)
class Invocation:
    """The parts of a Snakemake command line (profiles merged) the checks need."""

    executor: str | None
    config_args: tuple[str, ...]  # the --config values in effect: the profile's or the command's
    profile_config: ProfileConfig | None
    max_threads: int | None
    dryrun: bool
    runs_jobs: bool  # False for -n, --report, --lint, --unlock and other no-job modes

    def config_keys(self) -> set[str]:
        """Top-level keys the --config values in effect set (``a.b=1`` sets ``a``)."""
        return {arg.split("=", 1)[0].split(".", 1)[0] for arg in self.config_args if "=" in arg}


def current_invocation(argv: Sequence[str] | None = None) -> Invocation | None:
    """This process's `snakemake` command line, or None where Snakemake was not started from
    one (its Python API, a test runner)."""
    argv = list(sys.argv if argv is None else argv)
    program = Path(argv[0]) if argv else Path()
    if program.name != "snakemake" and program.parts[-2:] != ("snakemake", "__main__.py"):
        return None
    return parse_invocation(argv[1:])


def parse_invocation(args: Sequence[str]) -> Invocation:
    """Parse `snakemake` arguments (without the program name) as Snakemake does."""
    from snakemake.cli import parse_args

    # parse_args says which profiles it uses; the run itself has said so already.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        _parser, parsed = parse_args(list(args))
    return Invocation(
        executor=parsed.executor,
        config_args=tuple(parsed.config or ()),
        profile_config=profile_config(profile_files(parsed.profile or ())),
        max_threads=parsed.max_threads,
        dryrun=bool(parsed.dryrun),
        runs_jobs=not any(getattr(parsed, option, None) for option in NO_JOB_OPTIONS),
    )


def profile_files(profiles: Sequence[str]) -> list[Path]:
    """The YAML file of each profile, in command-line order (Snakemake's lookup)."""
    from snakemake.cli import get_profile_dir

    files = []
    for profile in profiles:
        found = get_profile_dir(str(profile))
        if found is not None:
            files.append(found[1])
    return files


def profile_config(files: Sequence[Path]) -> ProfileConfig | None:
    """The ``config:`` block in effect among profile ``files`` (the last one that has one)."""
    found = None
    for file in files:
        try:
            settings = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as error:
            raise DetbenchError(f"{file}: not a readable profile ({error})") from None
        if isinstance(settings, dict) and isinstance(settings.get("config"), dict):
            found = ProfileConfig(file, settings["config"])
    return found


def check_profile_config_kept(invocation: Invocation, key: str, value: Any) -> None:
    """Stop when a profile sets ``key`` in its ``config:`` block and a --config on the command
    line replaced that block without setting ``key``.

    Snakemake takes --config from the command line instead of the profile's, not merged with
    it: `--config seed=1` would silently drop the profile's platform label and the cells would
    land under another platform's results. ``value`` is what the run would use instead.
    """
    profile = invocation.profile_config
    if profile is None or key not in profile.values or key in invocation.config_keys():
        return
    wanted = profile.values[key]
    given = " ".join(invocation.config_args)
    raise DetbenchError(
        f"{profile.file}: sets {key}: {wanted} under config:, but --config {given} on the command "
        f"line replaces that whole block ({key} would be {value}); add {key}={wanted} to "
        f"--config, e.g. --config {given} {key}={wanted}"
    )
