"""The ``slurm`` launcher: submitit job arrays, requeued on time-out and pre-emption.

Each phase is one job array (``max_parallel`` at a time). A job that gets submitit's
pre-emption signal (USR2, sent ``signal_delay_s`` before the time limit) or SIGTERM (what
SLURM sends on pre-emption) is requeued and, as every sweep job resumes, continues from
its last per-experience checkpoint. ``cluster: local`` runs the same path on this machine
(submitit's local executor), for trying a sweep before sending it to the cluster.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lamm_cl.config import ConfigError
from lamm_cl.sweep.launchers import Call, OnDone, at_least, call, failed, require
from lamm_cl.sweep.spec import JOBS_DIR


@dataclass
class Options:
    partition: Optional[str] = None  # SLURM partition (default: the cluster's)
    account: Optional[str] = None  # SLURM account
    gpus_per_job: int = 1  # GPUs of one job
    cpus_per_job: int = 8  # CPU cores of one job (image decoding for feature extraction)
    mem_gb: int = 32  # memory of one job
    time_min: int = 240  # time limit of one job; a longer job is requeued and resumes
    max_parallel: int = 64  # jobs of an array running at once
    max_requeues: int = 3  # time-outs before a job is given up (pre-emptions do not count)
    sbatch: list[str] = field(default_factory=list)  # extra sbatch options, e.g. ["--qos=high"]
    cluster: Optional[str] = None  # null: SLURM (refused where there is none); local: this machine (testing)
    poll_s: float = 5.0  # how often the submitting process checks its jobs


def sbatch_options(lines: list[str]) -> dict:
    """``["--qos=high", "#SBATCH --constraint=a100", "--exclusive"]`` -> ``{"qos": "high", ...}``."""
    out = {}
    for i, line in enumerate(lines):
        text = line.strip().removeprefix("#SBATCH").strip()
        if not text.startswith("--") or len(text) < 3:
            raise ConfigError(f"launcher.sbatch[{i}]: expected an option like --qos=high, got {line!r}")
        key, sep, value = text[2:].partition("=")
        out[key.strip()] = value.strip() if sep else ""
    return out


class SweepTask:
    """One call, as submitit runs it; checkpointable (the state lives in the run folder, so
    requeuing is submitting the same call again)."""

    def __init__(self, c: Call):
        self.c = tuple(c)

    def __call__(self) -> dict:
        # SLURM pre-empts with SIGTERM; submitit only acts on its own signal (USR2) and ignores
        # SIGTERM. Make SIGTERM do what USR2 does: requeue (the job's SystemExit keeps its checkpoint).
        from submitit.core.job_environment import JobEnvironment

        requeue = signal.getsignal(JobEnvironment._usr_sig())
        if callable(requeue):
            signal.signal(signal.SIGTERM, requeue)
        return call(self.c)

    def checkpoint(self, *args, **kwargs):
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(SweepTask(self.c))


def validate(options: Options) -> None:
    """Values the types allow but SLURM cannot use, refused when the sweep is loaded."""
    for name in ("gpus_per_job", "max_requeues"):
        at_least(options, name, 0)
    for name in ("cpus_per_job", "mem_gb", "time_min", "max_parallel"):
        at_least(options, name, 1)
    at_least(options, "poll_s", 0.1, whole=False)
    if options.cluster not in (None, "local", "slurm", "debug"):
        raise ConfigError(f"launcher.cluster: expected null (SLURM), slurm or local, got {options.cluster!r}")
    sbatch_options(options.sbatch)


def check(options: Options) -> None:
    """Refuse before anything is written: submitit missing, bad sbatch lines, or no SLURM here while the jobs
    were meant for it (submitit would quietly run them all on this machine instead)."""
    require("submitit", "slurm", "slurm")
    sbatch_options(options.sbatch)
    if options.cluster in (None, "slurm") and shutil.which("sbatch") is None:
        raise ConfigError("launcher slurm: no SLURM reachable from here (no sbatch command); run the sweep from a "
                          "SLURM login node, or set launcher.cluster: local to run every job on this machine "
                          "through submitit's local executor")


def executor(options: Options, output: str):
    """The submitit executor for ``options`` (its files in ``<output>/_jobs/submitit``)."""
    submitit = require("submitit", "slurm", "slurm")
    ex = submitit.AutoExecutor(folder=Path(output) / JOBS_DIR / "submitit" / "%j", cluster=options.cluster,
                               slurm_max_num_timeout=options.max_requeues)
    params = dict(timeout_min=options.time_min, gpus_per_node=options.gpus_per_job,
                  cpus_per_task=options.cpus_per_job, mem_gb=options.mem_gb, name="lamm-cl-sweep",
                  slurm_array_parallelism=options.max_parallel)
    if options.partition:
        params["slurm_partition"] = options.partition
    if options.account:
        params["slurm_account"] = options.account
    extra = sbatch_options(options.sbatch)
    if extra:
        params["slurm_additional_parameters"] = extra
    ex.update_parameters(**params)
    return ex


def launch(phases: list[list[Call]], options: Options, output: str, on_done: OnDone) -> None:
    """Submit each phase as a job array and wait for it (results reported as jobs finish).

    On Ctrl-C or SIGTERM the jobs still queued in SLURM are cancelled, so none starts afterwards.
    """
    ex = executor(options, output)
    pending: list = []
    try:
        for calls in phases:
            if not calls:
                continue
            with ex.batch():
                pending = [(c, ex.submit(SweepTask(c))) for c in calls]
            _wait(pending, options, on_done)
    except BaseException:  # Ctrl-C, SIGTERM: no queued job may start; the running ones go on and requeue
        for _, j in pending:
            with contextlib.suppress(Exception):
                if j.state in ("PENDING", "REQUEUED", "UNKNOWN"):
                    j.cancel(check=False)
        raise


def _wait(pending: list, options: Options, on_done: OnDone) -> None:
    """Report each job of ``pending`` as it finishes."""
    while pending:
        still = []
        for c, j in pending:
            if not j.done():
                still.append((c, j))
                continue
            try:
                result = j.result()
            except Exception as e:  # noqa: BLE001 - a lost or cancelled job fails alone
                result = failed(c, f"submitit job {j.job_id}: {' '.join(str(e).split())[-300:]}")
            on_done(c, result)
        pending = still
        if pending:
            time.sleep(options.poll_s)
