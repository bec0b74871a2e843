"""Glue for the thin rule scripts in ``workflow/scripts/``: logging and user-facing errors.

A rule script calls :func:`run_rule` with a function doing the work. Log records go to the
rule's ``log:`` file; a :class:`DetbenchError` becomes one line on stderr (and in the log)
and exit status 1, instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detbench.errors import DetbenchError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(
    log_path: str | Path | None = None, level: int = logging.INFO, mode: str = "w"
) -> None:
    """Log records to ``log_path`` (``mode`` "a": after what it holds) or else to stderr."""
    handlers: list[logging.Handler] = []
    if log_path is not None:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_path, mode=mode, encoding="utf-8"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=level, format=LOG_FORMAT, handlers=handlers, force=True)


def run_rule(snakemake: Any, body: Callable[[], object], log_mode: str = "w") -> None:
    """Run a rule script's body with logging to its log file and one-line errors
    (``log_mode`` "a": after what the log file holds, a resumed job's earlier segments)."""
    log_path = snakemake.log[0] if len(snakemake.log) else None
    configure_logging(log_path, mode=log_mode)
    logger = logging.getLogger(f"detbench.rule.{snakemake.rule}")
    try:
        body()
    except DetbenchError as error:
        logger.error("%s", error)
        print(f"detbench error: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception:
        logger.exception("rule %s failed", snakemake.rule)
        raise
