"""Job state, read from the output folder alone (no torch import): what ``--status`` prints.

Each job keeps two files in ``<output>/_jobs/``: ``<id>.log`` (everything the job
printed) and ``<id>.json`` (its state, written by the job itself: running, failed,
interrupted, done, with the pid, the process's start time and the host). A job is *running* only
while that very process lives (pid and start time agree, :func:`lamm_cl.safe_io.process_is`). A job is *done* exactly when its run
folder holds ``summary.json``, whatever the state file says, so results written by a
plain ``lamm-cl run`` count too.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lamm_cl.errors import UserError
from lamm_cl.safe_io import atomic_write_text, process_is, process_start
from lamm_cl.sweep.spec import JOBS_DIR, Job, Sweep

STATES = ("done", "running", "failed", "interrupted", "pending")


def log_path(output: Path, job: Job) -> Path:
    return Path(output) / JOBS_DIR / f"{job.id}.log"


def state_path(output: Path, job: Job) -> Path:
    return Path(output) / JOBS_DIR / f"{job.id}.json"


def write_state(output: Path, job: Job, state: str, message: str = "") -> None:
    """Record ``state`` of ``job`` (with this process's pid, its start time and the host)."""
    info = {"state": state, "pid": os.getpid(), "start": process_start(os.getpid()), "host": socket.gethostname(),
            "time": time.time(), "message": message}
    atomic_write_text(state_path(output, job), json.dumps(info) + "\n")


def read_state(output: Path, job: Job) -> Optional[dict]:
    """The state file of ``job`` (None when there is none).

    Raises:
        UserError: it is not a JSON object with a known ``state`` (the message names the file).
    """
    path = state_path(output, job)
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: malformed job state ({type(e).__name__}); delete it to run the job again") from None
    if not isinstance(info, dict) or info.get("state") not in STATES:
        raise UserError(f"{path}: malformed job state (expected an object with a state); delete it to run "
                        "the job again")
    pid = info.get("pid")
    if pid is not None and (isinstance(pid, bool) or not isinstance(pid, int)):
        raise UserError(f"{path}: malformed job state (pid {pid!r} is not a process id); delete it to run "
                        "the job again")
    return info


def last_line(path: Path) -> str:
    """The last non-empty line of a log file ('' when there is none)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [ln.strip() for ln in tail.replace("\r", "\n").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


STALE_S = 2 * 3600  # a job on another host silent this long (no log line, e.g. its node died) counts as interrupted


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


@dataclass
class JobStatus:
    job: Job
    state: str  # one of STATES
    detail: str  # the last log line (failed, interrupted, running), or where it stopped


def job_status(output: Path, job: Job) -> JobStatus:
    """Where ``job`` stands, from its run folder and state file.

    A job recorded as running whose process is gone (same host) counts as interrupted:
    it was killed, and the next run of the sweep continues it from its checkpoint.
    """
    if (job.run_dir / "summary.json").is_file():
        return JobStatus(job, "done", "")
    info = read_state(output, job)
    log = last_line(log_path(output, job))
    if info is None:
        return JobStatus(job, "pending", "")
    state = info["state"]
    if state == "running" and info.get("host") == socket.gethostname():
        if not process_is(info.get("pid"), info.get("start")):
            state = "interrupted"  # killed, or a state from before a reboot, or its pid is another process now
    elif state == "running" and (not isinstance(info.get("host"), str) or _age(log_path(output, job)) > STALE_S):
        state = "interrupted"  # another host's job that has not logged a line for hours: it was lost
    if state == "done":  # the state says done but the results are gone: run it again
        state = "pending"
    message = info.get("message") if isinstance(info.get("message"), str) else ""
    detail = message or log if state == "failed" else log
    return JobStatus(job, state, detail)


def sweep_status(sweep: Sweep) -> list[JobStatus]:
    """The status of every job of ``sweep``, in job order."""
    return [job_status(sweep.output, j) for j in sweep.jobs]


def status_table(statuses: list[JobStatus], extra: Optional[dict[str, str]] = None) -> list[str]:
    """Lines of the status table: counts per state, then one line per job that is not done or pending.

    Args:
        extra: job id -> a state to show instead (``skipped`` for jobs this invocation did not run).
    """
    extra = extra or {}
    shown = [(s, extra.get(s.job.id, s.state)) for s in statuses]
    order = ("done", "skipped", "running", "interrupted", "failed", "pending")
    counts = {k: sum(1 for _, st in shown if st == k) for k in order}
    lines = [f"{len(statuses)} jobs: " + ", ".join(f"{counts[k]} {k}" for k in order if counts[k])]
    width = max((len(s.job.id) for s, _ in shown), default=10)
    for s, st in shown:
        if st in ("running", "interrupted", "failed"):
            lines.append(f"  {st:<11} {s.job.id:<{width}}  {s.detail}".rstrip())
    return lines
