"""``detbench serve``'s training options (``--allow-training`` and the rest), read into
:class:`detbench.web.settings.TrainingSettings`. No heavy imports: the command line reads it."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from detbench.errors import DetbenchError
from detbench.web import settings
from detbench.web.settings import TRAIN_TOKEN_VARIABLE, TrainingSettings

# Shorter tokens can be guessed over the network; secrets.token_urlsafe(32) gives 43 characters.
MIN_TOKEN_LENGTH = 16


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def add_training_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "training from the page",
        f"A Train page at /train that runs the workflow with the user's values; every request "
        f"must carry the token in ${TRAIN_TOKEN_VARIABLE}. See docs/web-training.md.",
    )
    group.add_argument(
        "--allow-training", action="store_true", help="serve the Train page and its API"
    )
    group.add_argument(
        "--train-dir", type=Path, default=Path("web-runs"), metavar="DIR",
        help="where runs (a study folder each) and the queue live (default web-runs)",
    )  # fmt: skip
    group.add_argument(
        "--train-config", type=Path, default=Path("config/config.yaml"), metavar="PATH",
        help="config the form's values go over; its dataset is the 'configured' one "
        "(default config/config.yaml)",
    )  # fmt: skip
    group.add_argument(
        "--train-profile", type=Path, default=Path("profiles/local"), metavar="DIR",
        help="Snakemake profile of the runs: profiles/local (default) or profiles/slurm",
    )  # fmt: skip
    group.add_argument(
        "--workflow", type=Path, default=Path("Snakefile"), metavar="PATH",
        help="the workflow's Snakefile (default ./Snakefile)",
    )  # fmt: skip
    group.add_argument(
        "--train-queue", type=_positive_int, default=settings.DEFAULT_TRAIN_QUEUE, metavar="N",
        help=f"runs that may wait; more get 429 (default {settings.DEFAULT_TRAIN_QUEUE})",
    )  # fmt: skip
    group.add_argument(
        "--train-concurrency", type=_positive_int, default=settings.DEFAULT_TRAIN_CONCURRENCY,
        metavar="N", help="runs at once (default 1)",
    )  # fmt: skip
    group.add_argument(
        "--train-cores", type=_positive_int, default=None, metavar="N",
        help="--cores for each run's Snakemake (default: the profile's)",
    )  # fmt: skip
    group.add_argument(
        "--train-max-zip-mb", type=_positive_float, default=settings.DEFAULT_TRAIN_ZIP_MB,
        metavar="MB", help="largest dataset zip accepted, MiB (default "
        f"{settings.DEFAULT_TRAIN_ZIP_MB:g}); it may unpack to "
        f"{settings.DEFAULT_TRAIN_UNPACKED_MB:g} MiB and "
        f"{settings.DEFAULT_TRAIN_ZIP_MEMBERS:,} files",
    )  # fmt: skip


def training_settings(args: argparse.Namespace) -> TrainingSettings | None:
    """The training settings of parsed ``serve`` arguments, None without --allow-training."""
    if not args.allow_training:
        return None
    token = os.environ.get(TRAIN_TOKEN_VARIABLE, "")
    if len(token) < MIN_TOKEN_LENGTH:
        raise DetbenchError(
            f"--allow-training: set {TRAIN_TOKEN_VARIABLE} to a secret of at least "
            f"{MIN_TOKEN_LENGTH} characters (python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    beside_python = Path(sys.executable).with_name("snakemake")
    snakemake = beside_python if beside_python.is_file() else shutil.which("snakemake")
    if snakemake is None:
        raise DetbenchError("--allow-training: snakemake is not installed here")
    return TrainingSettings(
        token=token,
        runs_dir=args.train_dir.resolve(),
        base_config=args.train_config.resolve(),
        snakefile=args.workflow.resolve(),
        profile=args.train_profile.resolve(),
        snakemake=Path(snakemake),
        cores=args.train_cores,
        max_waiting=args.train_queue,
        concurrency=args.train_concurrency,
        max_zip_mb=args.train_max_zip_mb,
    )
