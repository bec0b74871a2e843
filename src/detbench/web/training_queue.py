"""The training runs' queue: persistent (SQLite, from the standard library), bounded, and run
by one scheduler thread that starts each run's Snakemake as a child process group.

States: ``queued`` -> ``running`` -> ``done`` | ``failed`` | ``cancelled``. Every change is one
``UPDATE ... WHERE state = <the expected one>``, so a run leaves ``running`` exactly once.

* At most ``max_waiting`` runs wait; one more is refused (:class:`QueueFull`, HTTP 429).
* At most ``concurrency`` run at once.
* A server that stops (or dies) mid-run: the next one to open the queue finds the run still
  ``running``, ends what is left of its process group and queues it again, marked to resume:
  Snakemake is unlocked and run with the same config, and its own resume (rerun-incomplete,
  the train job's checkpoint) carries on where it stopped. After ``max_attempts`` starts the run
  fails, saying so. Only one server may use a queue at a time (a lock file).
* Cancel: a waiting run is dropped; a running one's process group gets SIGTERM, then SIGKILL
  after a grace period. Outputs are written atomically and Snakemake removes the outputs of the
  jobs it was running, so a cancelled cell never looks finished; its checkpoint stays, and
  ``resume`` queues the run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from detbench.errors import DetbenchError
from detbench.web.runs import WorkflowCommand, failure_line, run_cell, run_folder

log = logging.getLogger("detbench.web.training")

ACTIVE = ("queued", "running")
CANCEL_GRACE_S = 20.0
POLL_S = 0.25

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    request TEXT NOT NULL,
    cell TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    pgid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    resume INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    reason TEXT
)
"""


class QueueFull(DetbenchError):
    """More runs would wait than the queue holds."""


@dataclasses.dataclass(frozen=True)
class Run:
    id: int
    state: str
    request: dict[str, Any]
    cell: str
    created: float
    started: float | None
    finished: float | None
    pgid: int | None
    attempts: int
    resume: bool
    cancel_requested: bool
    reason: str | None

    def to_json(self) -> dict[str, Any]:
        body = dataclasses.asdict(self)
        body["resume"], body["cancel_requested"] = self.resume, self.cancel_requested
        return body


def _row_to_run(row: sqlite3.Row) -> Run:
    values = dict(row)
    values["request"] = json.loads(values["request"])
    values["resume"] = bool(values["resume"])
    values["cancel_requested"] = bool(values["cancel_requested"])
    return Run(**values)


def group_alive(pgid: int | None) -> bool:
    """Whether any process of group ``pgid`` still runs. A zombie does not count: an orphaned
    Snakemake that finished stays one until init reaps it, yet kill(0) still reaches it."""
    if pgid is None:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for stat_file in proc.glob("[0-9]*/stat"):
        try:
            # "pid (comm) state ppid pgrp ...": comm may hold spaces, so split after its ")".
            fields = stat_file.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def runs_folder(pgid: int, folder: Path) -> bool:
    """Whether process ``pgid`` is this run's Snakemake (its command line names the run's
    folder): after a reboot the number may belong to someone else's process."""
    try:
        arguments = Path(f"/proc/{pgid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return str(folder.resolve()).encode() in arguments


def end_group(pgid: int, grace_s: float = CANCEL_GRACE_S) -> None:
    """SIGTERM a process group, SIGKILL what is left of it after ``grace_s``."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


class TrainingQueue:
    def __init__(
        self,
        runs_dir: Path,
        command: WorkflowCommand,
        *,
        max_waiting: int = 4,
        concurrency: int = 1,
        max_attempts: int = 3,
        cancel_grace_s: float = CANCEL_GRACE_S,
    ) -> None:
        self.runs_dir = Path(runs_dir)
        self.command = command
        self.max_waiting = max_waiting
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.cancel_grace_s = cancel_grace_s
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.database = self.runs_dir / "queue.sqlite3"
        self._lock_file = (self.runs_dir / "queue.lock").open("w")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            raise DetbenchError(
                f"--train-dir {self.runs_dir}: another detbench serve is running its queue"
            ) from None
        with self._connect() as db:
            db.execute(_SCHEMA)
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._cancel_deadline: dict[int, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._recover()

    # ---------------------------------------------------------------------------- database

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def get(self, run_id: int) -> Run | None:
        with self._connect() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _row_to_run(row) if row is not None else None

    def runs(self) -> list[Run]:
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs ORDER BY id DESC").fetchall()
        return [_row_to_run(row) for row in rows]

    def waiting(self) -> int:
        with self._connect() as db:
            return int(db.execute("SELECT COUNT(*) FROM runs WHERE state = 'queued'").fetchone()[0])

    def _set(self, run_id: int, expected: str, **values: Any) -> bool:
        """Move run ``run_id`` from state ``expected``; False when it was not in it."""
        columns = ", ".join(f"{name} = ?" for name in values)
        with self._connect() as db:
            changed = db.execute(
                f"UPDATE runs SET {columns} WHERE id = ? AND state = ?",
                (*values.values(), run_id, expected),
            ).rowcount
        return changed == 1

    # ------------------------------------------------------------------------------ submit

    def submit(self, request: dict[str, Any], prepare: Callable[[int, Path], str]) -> Run:
        """Queue a run. ``prepare(run_id, folder)`` writes its folder (config, dataset) and
        returns its cell id; it runs inside the transaction, so a run whose preparation fails
        is never queued, and QueueFull leaves nothing behind."""
        with self._transaction() as db:
            waiting = db.execute("SELECT COUNT(*) FROM runs WHERE state = 'queued'").fetchone()[0]
            if waiting >= self.max_waiting:
                raise QueueFull(
                    f"the training queue is full: {waiting} runs waiting, at most "
                    f"{self.max_waiting}; try again when one has started"
                )
            cursor = db.execute(
                "INSERT INTO runs (state, request, created) VALUES ('queued', ?, ?)",
                (json.dumps(request), time.time()),
            )
            run_id = int(cursor.lastrowid or 0)
            cell = prepare(run_id, run_folder(self.runs_dir, run_id))
            db.execute("UPDATE runs SET cell = ? WHERE id = ?", (cell, run_id))
        self._wake.set()
        run = self.get(run_id)
        assert run is not None
        log.info("training run %d queued: %s", run_id, cell)
        return run

    def cancel(self, run_id: int) -> Run | None:
        run = self.get(run_id)
        if run is None:
            return None
        if run.state == "queued" and self._set(
            run_id, "queued", state="cancelled", finished=time.time(), reason="cancelled"
        ):
            log.info("training run %d cancelled before it started", run_id)
        elif run.state == "running" and self._set(run_id, "running", cancel_requested=1):
            log.info("training run %d: cancelling", run_id)
            self._wake.set()  # the scheduler signals the process group
        return self.get(run_id)

    def resume(self, run_id: int) -> Run | None:
        """Queue a cancelled or failed run again; it resumes from its checkpoint."""
        run = self.get(run_id)
        if run is None or run.state not in ("cancelled", "failed"):
            return run
        with self._transaction() as db:
            waiting = db.execute("SELECT COUNT(*) FROM runs WHERE state = 'queued'").fetchone()[0]
            if waiting >= self.max_waiting:
                raise QueueFull(f"the training queue is full: {waiting} runs waiting")
            db.execute(
                "UPDATE runs SET state = 'queued', resume = 1, cancel_requested = 0, "
                "reason = NULL, finished = NULL, attempts = 0 WHERE id = ? AND state = ?",
                (run_id, run.state),
            )
        self._wake.set()
        return self.get(run_id)

    # -------------------------------------------------------------------------- scheduling

    def _recover(self) -> None:
        """Runs a previous server left ``running``: end their process group, queue them to
        resume, or fail them once they have been started ``max_attempts`` times."""
        with self._connect() as db:
            rows = db.execute("SELECT * FROM runs WHERE state = 'running'").fetchall()
        for run in map(_row_to_run, rows):
            folder = run_folder(self.runs_dir, run.id)
            if run.pgid is not None and group_alive(run.pgid):
                if runs_folder(run.pgid, folder):
                    log.warning("training run %d: ending its orphaned process group", run.id)
                    end_group(run.pgid, self.cancel_grace_s)
                else:
                    log.warning(
                        "training run %d: process %d is not its Snakemake; left alone",
                        run.id,
                        run.pgid,
                    )
            if run.cancel_requested:
                self._set(run.id, "running", state="cancelled", finished=time.time(),
                          reason="cancelled", pgid=None)  # fmt: skip
            elif run.attempts >= self.max_attempts:
                reason = (
                    f"the server stopped during this run {run.attempts} times; not resumed "
                    "again (resume it by hand)"
                )
                self._set(run.id, "running", state="failed", finished=time.time(),
                          reason=reason, pgid=None)  # fmt: skip
            else:
                self._set(run.id, "running", state="queued", resume=1, pgid=None)
                log.info("training run %d: the server stopped mid-run; it resumes", run.id)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="training-queue", daemon=True)
        self._thread.start()

    def close(self, *, end_runs: bool = True) -> None:
        """Stop the scheduler. Running runs' process groups are ended (they stay ``running``
        in the queue, so the next server resumes them)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if end_runs:
            for process in list(self._processes.values()):
                end_group(process.pid, self.cancel_grace_s)
                process.wait()
        self._processes.clear()
        self._lock_file.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._signal_cancels()
                self._start_waiting()
            except Exception:
                log.exception("training queue: scheduler step failed")
            self._wake.wait(POLL_S)
            self._wake.clear()

    def _start_waiting(self) -> None:
        while len(self._processes) < self.concurrency and not self._stop.is_set():
            with self._connect() as db:
                row = db.execute(
                    "SELECT * FROM runs WHERE state = 'queued' ORDER BY id LIMIT 1"
                ).fetchone()
            if row is None:
                return
            run = _row_to_run(row)
            if not self._set(run.id, "queued", state="running", started=time.time(),
                             attempts=run.attempts + 1):  # fmt: skip
                continue  # cancelled meanwhile
            try:
                self._launch(run)
            except (OSError, ValueError) as error:
                reason = f"could not start snakemake: {error}"
                self._set(run.id, "running", state="failed", finished=time.time(), reason=reason)
                log.error("training run %d: %s", run.id, reason)

    def _launch(self, run: Run) -> None:
        folder = run_folder(self.runs_dir, run.id)
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        log_path = folder / "snakemake.log"
        with log_path.open("ab") as output:
            if run.resume:
                # A Snakemake killed mid-run leaves its lock behind.
                output.write(b"--- resuming: unlocking the working directory\n")
                output.flush()
                subprocess.run(
                    self.command.args(folder, config, unlock=True),
                    stdout=output, stderr=subprocess.STDOUT, cwd=folder, check=False,
                )  # fmt: skip
            # Its own process group: cancel ends Snakemake and every job it started.
            process = subprocess.Popen(
                self.command.args(folder, config),
                stdout=output, stderr=subprocess.STDOUT, cwd=folder, start_new_session=True,
            )  # fmt: skip
        self._processes[run.id] = process
        self._set(run.id, "running", pgid=process.pid)
        log.info("training run %d started: snakemake as process group %d", run.id, process.pid)

    def _reap(self) -> None:
        for run_id, process in list(self._processes.items()):
            returncode = process.poll()
            if returncode is None:
                continue
            # Whatever a job left behind in the group goes with Snakemake.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            del self._processes[run_id]
            self._cancel_deadline.pop(run_id, None)
            self._finish(run_id, returncode)

    def _finish(self, run_id: int, returncode: int) -> None:
        run = self.get(run_id)
        if run is None:
            return
        folder = run_folder(self.runs_dir, run_id)
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        finished = run_cell(config).file("metrics.json", folder / "results").is_file()
        if run.cancel_requested:
            state, reason = "cancelled", "cancelled"
        elif returncode == 0 and finished:
            state, reason = "done", None
        else:
            state, reason = "failed", failure_line(folder, config, returncode)
        if self._set(run_id, "running", state=state, finished=time.time(), reason=reason):
            log.info("training run %d %s%s", run_id, state, f": {reason}" if reason else "")

    def _signal_cancels(self) -> None:
        """SIGTERM the process group of a run whose cancel was asked for, SIGKILL it after the
        grace period. Here, not in the request, so a run cancelled while it was being started
        is stopped too."""
        if not self._processes:
            return
        with self._connect() as db:
            rows = db.execute(
                "SELECT id FROM runs WHERE state = 'running' AND cancel_requested = 1"
            ).fetchall()
        for (run_id,) in rows:
            process = self._processes.get(run_id)
            if process is None:
                continue
            if run_id not in self._cancel_deadline:
                log.info("training run %d: SIGTERM to process group %d", run_id, process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                self._cancel_deadline[run_id] = time.monotonic() + self.cancel_grace_s
            elif time.monotonic() > self._cancel_deadline[run_id]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)

    def results_dirs(self) -> list[Path]:
        """Every run's results folder (for the model picker)."""
        return sorted(
            self.runs_dir.glob("run-*/results"), key=lambda p: int(p.parent.name.split("-")[1])
        )
