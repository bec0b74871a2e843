"""A real single-node Slurm on 127.0.0.1, for the tests of ``profiles/slurm``.

:func:`running_slurm` starts Debian's munged, slurmctld and slurmd with one node (this machine,
its CPUs and most of its memory) and two fake GPUs (``gres/gpu`` backed by /dev/null and
/dev/zero), waits until the node is idle, and on exit stops everything in reverse order and
puts back any file of /etc/slurm/ it replaced. :func:`skip_reason` says why it cannot run here
(no binaries, not root); :class:`SlurmBusy` says another Slurm is up. Written for Debian 12's
Slurm 22.05 and munge 0.5, with snakemake-executor-plugin-slurm 2.8.

By hand, to try a profile against it:  sudo .venv/bin/python tests/slurm_cluster.py
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# The jobstep plugin drops SLURM_CONF before its inner srun, so the configuration must sit where
# every Slurm command finds it without one ("Could not establish a configuration source").
SLURM_ETC = Path("/etc/slurm")
CONFIG_FILES = ("slurm.conf", "gres.conf")
CONF_MARKER = "# Written by tests/slurm_cluster.py"
# Two fake GPUs: a cell on 2 ranks asks for one per rank (--gpus=2 --ntasks-per-gpu=1).
GRES_CONF = "Name=gpu File=/dev/null\nName=gpu File=/dev/zero\n"
BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")
BINARIES += ("scancel", "sinfo", "srun")
PORTS = (6817, 6818)  # slurmctld, slurmd
LOCK_FILE = Path(tempfile.gettempdir()) / "detbench-slurm-test.lock"
PARTITION = "detbench"

# squeue reports a finished job for MinJobAge seconds. The plugin's squeue status needs at least
# 3 x its first status delay (else it falls back to sacct, which fails without accounting and
# leaves the run waiting), and tests read finished jobs' requests afterwards.
MIN_JOB_AGE = 600


class SlurmBusy(RuntimeError):
    """Another Slurm runs on this machine (or another test holds ours for too long)."""


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """The running cluster: its node, partition and the folder of its state and logs."""

    node: str
    partition: str
    state_dir: Path

    def jobs(self) -> list[dict[str, str]]:
        """Every job Slurm still remembers (MinJobAge), with what it asked for.

        Keys: id, name (the Snakemake run), comment (rule and wildcards), state, gpus (the
        request, e.g. gres:gpu:1, or N/A), cpus, time_limit (as squeue prints it).
        """
        fields = {
            "id": "JobID",
            "name": "Name",
            "comment": "Comment",
            "state": "State",
            "gpus": "tres-per-job",
            "cpus": "NumCPUs",
            "time_limit": "TimeLimit",
        }
        # `:|` sets "|" as the field separator and keeps each field at its full width.
        out = _run(
            [
                "squeue",
                "--noheader",
                "--states=all",
                "--Format=" + ",".join(f"{field}:|" for field in fields.values()),
            ]
        )
        return [
            dict(zip(fields, (value.strip() for value in line.split("|")), strict=False))
            for line in out.splitlines()
            if line.strip()
        ]

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as a dict (Key=Value pairs), for a job Slurm still remembers."""
        out = _run(["scontrol", "--oneliner", "show", "job", job_id])
        return dict(re.findall(r"(\w[\w/:]*)=(\S*)", out))

    def batch_script(self, job_id: str) -> str:
        """The script a job runs (for a Snakemake job: which rule jobs it targets)."""
        return _run(["scontrol", "write", "batch_script", job_id, "-"])

    def logs(self) -> str:
        """The tail of the daemons' logs, for a failure message."""
        parts = []
        for name in ("slurmctld.log", "slurmd.log"):
            path = self.state_dir / name
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-30:]
                parts.append(f"--- {path}\n" + "\n".join(lines))
        return "\n".join(parts)


def skip_reason() -> str | None:
    """Why a real Slurm cannot be started here, or None when it can."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return (
            f"Slurm/munge binaries missing ({', '.join(missing)}): "
            "apt-get install munge slurmctld slurmd slurm-client"
        )
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd and writing /etc/slurm/ needs root"
    if not Path("/etc/munge/munge.key").exists():
        return "/etc/munge/munge.key is missing (reinstall the munge package)"
    return None


@contextlib.contextmanager
def running_slurm(state_dir: Path, *, lock_timeout: float = 900) -> Iterator[SlurmCluster]:
    """Start munged (unless one answers), slurmctld and slurmd; stop them all on exit.

    Raises SlurmBusy when another Slurm holds the ports, or another test session holds this
    machine's cluster for longer than lock_timeout seconds.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    with _exclusive(LOCK_FILE, lock_timeout), contextlib.ExitStack() as stack:
        busy = [port for port in PORTS if _port_open(port)]
        if busy:
            raise SlurmBusy(f"port(s) {busy} already in use: another Slurm runs on this machine")
        node = socket.gethostname().split(".")[0]
        cluster = SlurmCluster(node=node, partition=PARTITION, state_dir=state_dir)
        stack.enter_context(_munged(state_dir))
        stack.enter_context(_slurm_config(state_dir, node))
        stack.enter_context(_daemon(["slurmctld", "-D"], state_dir / "slurmctld.out"))
        _wait(lambda: "UP" in _run(["scontrol", "ping"], check=False), 30, "slurmctld", cluster)
        stack.callback(_cancel_jobs, cluster)  # runs before slurmd stops
        stack.enter_context(_daemon(["slurmd", "-D"], state_dir / "slurmd.out"))
        _wait(lambda: _node_state(node) == "idle", 60, "slurmd (node idle)", cluster)
        yield cluster


# --------------------------------------------------------------------------- pieces


def _run(command: list[str], *, check: bool = True, timeout: float = 30) -> str:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")
    return result.stdout


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _wait(ready, seconds: float, what: str, cluster: SlurmCluster | None = None) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            if ready():
                return
        time.sleep(0.3)
    details = cluster.logs() if cluster else ""
    raise RuntimeError(f"{what} not ready after {seconds:.0f} s\n{details}")


@contextlib.contextmanager
def _exclusive(path: Path, timeout: float) -> Iterator[None]:
    # One cluster per machine: two test sessions would fight over /etc/slurm and the ports.
    with path.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmBusy(f"{path}: held by another Slurm test") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _munge_works() -> bool:
    credential = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if credential.returncode != 0:
        return False
    decoded = subprocess.run(["unmunge"], input=credential.stdout, capture_output=True, timeout=10)
    return decoded.returncode == 0


@contextlib.contextmanager
def _munged(state_dir: Path) -> Iterator[None]:
    """munged as user munge, unless one already answers (then it is left running)."""
    if _munge_works():
        yield
        return
    run_dir = Path("/run/munge")  # where munge clients look for the socket
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.chown(run_dir, "munge", "munge")
    run_dir.chmod(0o755)
    for folder in (Path("/var/lib/munge"), Path("/var/log/munge")):
        folder.mkdir(parents=True, exist_ok=True)
        shutil.chown(folder, "munge", "munge")
    with _daemon(["munged", "--foreground"], state_dir / "munged.out", user="munge"):
        _wait(_munge_works, 20, "munged")
        yield


@contextlib.contextmanager
def _daemon(command: list[str], log: Path, *, user: str | None = None) -> Iterator[int]:
    """A daemon in the foreground as our child; SIGTERM on exit (SIGKILL if it lingers)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            start_new_session=True,
        )
    try:
        time.sleep(0.2)
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{command[0]} exited with {process.returncode}:\n{tail}")
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)  # slurmctld saves its state first
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _node_config(node: str) -> str:
    """The node line from `slurmd -C`, memory lowered (the OS and page cache need some)."""
    line = _run(["slurmd", "-C"]).splitlines()[0]
    reported = int(re.search(r"RealMemory=(\d+)", line).group(1))  # type: ignore[union-attr]
    line = re.sub(r"RealMemory=\d+", f"RealMemory={int(reported * 0.85)}", line)
    line = re.sub(r"NodeName=\S+", f"NodeName={node}", line)
    return f"{line} NodeAddr=127.0.0.1 Gres=gpu:2 State=UNKNOWN"


def _slurm_conf(state_dir: Path, node: str) -> str:
    return f"""\
# Written by tests/slurm_cluster.py for a test run; put back when the run ends.
ClusterName=detbench-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={state_dir}/state
SlurmdSpoolDir={state_dir}/spool
SlurmctldPidFile={state_dir}/slurmctld.pid
SlurmdPidFile={state_dir}/slurmd.pid
SlurmctldLogFile={state_dir}/slurmctld.log
SlurmdLogFile={state_dir}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
MpiDefault=none
ReturnToService=2
MinJobAge={MIN_JOB_AGE}
KillWait=5
InactiveLimit=0
{_node_config(node)}
PartitionName={PARTITION} Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@contextlib.contextmanager
def _slurm_config(state_dir: Path, node: str) -> Iterator[None]:
    """slurm.conf and gres.conf in /etc/slurm/, the files they replace kept and put back."""
    for folder in ("state", "spool"):
        (state_dir / folder).mkdir(parents=True, exist_ok=True)
    backup = state_dir / "etc-slurm-backup"
    backup.mkdir(exist_ok=True)
    SLURM_ETC.mkdir(parents=True, exist_ok=True)
    saved = []
    for name in CONFIG_FILES:
        if (SLURM_ETC / name).exists() and not _left_by_a_killed_run(SLURM_ETC / name):
            shutil.copy2(SLURM_ETC / name, backup / name)
            saved.append(name)
    try:
        (SLURM_ETC / "slurm.conf").write_text(_slurm_conf(state_dir, node))
        # A File is needed: without one slurmd reports no GPU and the node is drained.
        (SLURM_ETC / "gres.conf").write_text(GRES_CONF)
        yield
    finally:
        for name in CONFIG_FILES:
            if name in saved:
                shutil.copy2(backup / name, SLURM_ETC / name)
            else:
                (SLURM_ETC / name).unlink(missing_ok=True)


def _left_by_a_killed_run(path: Path) -> bool:
    """Our own file, left behind by a test run that was killed before it could put the
    original back: not worth keeping (it points at a controller that is gone, and every
    `scontrol` would wait for it)."""
    if path.name == "gres.conf":
        return path.read_text() == GRES_CONF
    return path.read_text().startswith(CONF_MARKER)


def _node_state(node: str) -> str:
    state = _run(["sinfo", "--noheader", "--nodes", node, "--format=%T"], check=False).strip()
    if state.startswith(("drain", "down")):
        # A node seen before its gres was right stays drained until resumed.
        _run(["scontrol", "update", f"nodename={node}", "state=resume"], check=False)
    return state


def _cancel_jobs(cluster: SlurmCluster) -> None:
    """Cancel what is left and let it end, so no job step outlives slurmd."""
    _run(["scancel", "--partition", cluster.partition], check=False)
    with contextlib.suppress(RuntimeError):
        _wait(
            lambda: (
                not _run(
                    ["squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,SUSPENDED"]
                ).strip()
            ),
            30,
            "jobs to end",
        )


def _stop(signum: int, frame: object) -> None:
    raise SystemExit(0)


if __name__ == "__main__":
    reason = skip_reason()
    if reason:
        raise SystemExit(reason)
    # Stop cleanly on Ctrl-C and on kill, also where a shell started this in the background
    # (which ignores SIGINT): the daemons go and /etc/slurm is put back.
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    with (
        tempfile.TemporaryDirectory(prefix="detbench-slurm-") as tmp,
        running_slurm(Path(tmp)) as running,
    ):
        print(f"Slurm up: node {running.node}, partition {running.partition}, state {tmp}")
        print("Ctrl-C (or kill) stops it and restores /etc/slurm.", flush=True)
        signal.pause()
