"""The srun launch: a cell's ranks as one ``srun`` step of the Slurm job that runs its train
rule (``--overlap``: the step shares that job step's CPUs and GPUs; ``--kill-on-bad-exit`` ends
the other ranks when one dies)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys

from detbench.errors import DetbenchError

log = logging.getLogger("detbench.cluster.srun")

# The SLURM_ variables a nested srun keeps: the job's identity. The calling step's task and
# resource settings (SLURM_NTASKS=1, SLURM_CPUS_PER_TASK, ...) would override the new step's.
SLURM_KEPT = ("SLURM_JOB_ID", "SLURM_JOBID", "SLURM_CLUSTER_NAME", "SLURM_SUBMIT_DIR")
SLURM_TASK_FAILURE = re.compile(r"task (\d+): (.+)$")


def under_slurm(env: dict[str, str] | None = None) -> bool:
    env = dict(os.environ) if env is None else env
    return "SLURM_JOB_ID" in env and shutil.which("srun") is not None



def srun_ranks(job_file: str, ranks: int, nodes: int, threads: int, *, port: int) -> None:
    """Run ``ranks`` tasks of ``python -m detbench.training.launch JOB_FILE`` as one srun step
    inside this Slurm job; a dead task fails it with one line naming the rank."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("SLURM_", "SRUN_", "SBATCH_")) or key in SLURM_KEPT
    }
    env["MASTER_PORT"] = str(port)  # on this host, the first of the job's nodes
    command = ["srun", "--overlap", f"--ntasks={ranks}", f"--nodes={nodes}"]
    command += [f"--cpus-per-task={threads}", "--mem=0", "--kill-on-bad-exit=1"]
    command += [sys.executable, "-m", "detbench.training.launch", job_file]
    log.info("starting %d ranks: %s", ranks, " ".join(command))
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    failed: list[str] = []
    assert process.stderr is not None
    for line in process.stderr:
        sys.stderr.write(line)
        match = SLURM_TASK_FAILURE.search(line.strip())
        if match and line.startswith("srun: error"):
            failed.append(f"rank {match.group(1)} {match.group(2).lower()}")
    if process.wait() != 0:
        how = "; ".join(failed) or f"srun exited with code {process.returncode}"
        raise DetbenchError(f"training on {ranks} ranks (srun) failed: {how}; rerun to resume")
