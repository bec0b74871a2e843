"""Starting a cell's ranks (``train.ranks``): in the train job's own process for one rank,
torchrun's elastic launch on one machine, ``srun`` inside a Slurm job.

``train_cell`` is what the train rule calls. With ``ranks: 1`` it calls
detbench.training.train.train in
this process, exactly as without ranks. With more, it writes the call's arguments to a file
beside the checkpoints and starts ``ranks`` workers, each ``python -m detbench.training.launch
FILE``:

- on one machine through torch.distributed.launcher.api.elastic_launch (the machinery behind
  torchrun): a c10d rendezvous on a free port of 127.0.0.1, no restarts (a rerun of the job
  resumes from its checkpoint instead), a dead worker ending the others;
- inside a Slurm job (SLURM_JOB_ID set, srun on PATH) through one ``srun`` step of ``ranks``
  tasks over ``train.nodes`` nodes (``--overlap``: the step shares the CPUs and GPUs of the
  job step that runs this script), each task one rank (SLURM_PROCID, SLURM_NTASKS; rank 0's
  host is the first of SLURM_JOB_NODELIST), ``--kill-on-bad-exit`` ending the others.

Either way a rank that dies fails the job with one line naming it and how it ended.
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

from detbench.cluster.srun import srun_ranks, under_slurm
from detbench.errors import DetbenchError

log = logging.getLogger("detbench.training.launch")

def train_cell(
    kwargs: dict[str, Any], *, ranks: int, nodes: int, threads: int | None, log_path: str | None
) -> None:
    """Train one cell: ``detbench.training.train.train(**kwargs)`` on ``ranks`` processes, each with
    ``threads / ranks`` torch threads."""
    if ranks == 1:
        from detbench.training.train import train

        train(**kwargs, threads=threads)
        return
    kwargs = {**kwargs, "threads": max(1, (threads or ranks) // ranks)}
    _import_this_detbench()
    folder = Path(kwargs["outputs"].record).parent
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".ranks-", suffix=".pkl") as job:
        pickle.dump({"kwargs": kwargs, "log_path": log_path}, job)
        job.flush()
        if under_slurm():
            srun_ranks(job.name, ranks, nodes, kwargs["threads"], port=free_port())
        else:
            _elastic(job.name, ranks)


def _import_this_detbench() -> None:
    """The ranks import the detbench this process runs (the workflow's src/, say, where the
    package is installed elsewhere or not at all): its folder first on their PYTHONPATH."""
    source = str(Path(__file__).resolve().parents[2])
    rest = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != source]
    os.environ["PYTHONPATH"] = os.pathsep.join([source, *rest])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("", 0))
        return int(probe.getsockname()[1])


def _elastic(job_file: str, ranks: int) -> None:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(
        min_nodes=1,
        max_nodes=1,
        nproc_per_node=ranks,
        run_id=f"detbench-{os.getpid()}",
        rdzv_backend="c10d",
        rdzv_endpoint=f"127.0.0.1:{free_port()}",
        max_restarts=0,
        monitor_interval=0.5,
    )
    log.info("starting %d ranks (torch elastic launch on 127.0.0.1)", ranks)
    try:
        elastic_launch(config, sys.executable)("-m", "detbench.training.launch", job_file)
    except ChildFailedError as error:
        raise DetbenchError(describe_failures(error.failures, ranks)) from None


def describe_failures(failures: dict[int, Any], ranks: int) -> str:
    """One line for the ranks that failed (torch elastic's ProcessFailure per global rank).
    The ranks the launcher stopped with SIGTERM once another had died are left out, unless
    SIGTERM is all there is (the job itself was stopped)."""
    stopped = {r for r, failure in failures.items() if failure.exitcode == -signal.SIGTERM}
    causes = {r: f for r, f in failures.items() if r not in stopped} or failures
    parts = []
    for rank, failure in sorted(causes.items()):
        code = failure.exitcode
        how = f"killed by {failure.signal_name()}" if code < 0 else f"exited with code {code}"
        parts.append(f"rank {rank} (pid {failure.pid}) {how}")
    line = f"training on {ranks} ranks failed: {'; '.join(parts)}"
    if len(causes) < len(failures):
        line += f" (then the launcher stopped rank{'s' * (len(stopped) > 1)} "
        line += f"{', '.join(map(str, sorted(stopped)))})"
    return line + "; rerun to resume"


def rank_main(job_file: str) -> None:
    """One rank: join the others, train, leave. Rank 0 logs to the rule's log; the others
    add their warnings and errors to it."""
    from detbench.training import distributed
    from detbench.training.train import train

    with open(job_file, "rb") as handle:
        job = pickle.load(handle)
    env = distributed.RankEnv.from_env()
    if env is None:
        raise SystemExit(
            "detbench.training.launch: no RANK/WORLD_SIZE nor SLURM_PROCID in the environment"
        )
    _configure_logging(job["log_path"], env.rank)
    try:
        distributed.init_process_group(env, job["kwargs"]["settings"].hyp.device)
        train(**job["kwargs"])
    except DetbenchError as error:
        logging.getLogger("detbench.training.launch").error("%s", error)
        print(f"detbench error: rank {env.rank}: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    finally:
        from torch import distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _configure_logging(log_path: str | None, rank: int) -> None:
    handler: logging.Handler = (
        logging.FileHandler(log_path, mode="a", encoding="utf-8")
        if log_path
        else logging.StreamHandler(sys.stderr)
    )
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING,
        format=f"%(asctime)s %(levelname)s rank {rank} %(name)s: %(message)s",
        handlers=[handler],
        force=True,
    )


if __name__ == "__main__":
    rank_main(sys.argv[1])
