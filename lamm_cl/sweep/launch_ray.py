"""The ``ray`` launcher: one Ray task per job, with ``num_gpus`` each, retried on worker loss.

``address`` is what ``ray.init`` gets: null starts Ray on this machine, ``auto`` joins the
running cluster, ``ray://host:10001`` a remote one. If Ray is already initialised in this
process (e.g. ``ray.init(num_cpus=2)`` in a test or a notebook), that session is used. A
retried task resumes the job from its last per-experience checkpoint. A Ray started here leaves the
process's SIGTERM handler as it was (``ray.init`` would make it a bare exit).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from typing import Optional

from lamm_cl.sweep.launchers import Call, OnDone, at_least, call, failed, require


@dataclass
class Options:
    address: Optional[str] = None  # null: a local Ray; auto: the running cluster; ray://...: a remote one
    num_gpus: Optional[float] = None  # GPUs per job; null: 1 where the cluster has GPUs, else 0
    num_cpus: float = 1.0  # CPU cores per job
    max_retries: int = 3  # retries of a job whose worker died (node loss, pre-emption)


def validate(options: Options) -> None:
    """Values the types allow but Ray cannot use, refused when the sweep is loaded."""
    at_least(options, "num_gpus", 0, whole=False)
    at_least(options, "num_cpus", 0, whole=False)
    at_least(options, "max_retries", 0)


def check(options: Options) -> None:
    """Refuse before anything is written: Ray missing."""
    require("ray", "ray", "ray")


def _run(c: Call) -> dict:
    return call(c)


def launch(phases: list[list[Call]], options: Options, output: str, on_done: OnDone) -> None:
    """Run each phase's calls as Ray tasks, reporting each as it finishes."""
    ray = require("ray", "ray", "ray")
    started = False
    on_main = threading.current_thread() is threading.main_thread()
    sigterm = signal.getsignal(signal.SIGTERM) if on_main else None
    if not ray.is_initialized():
        ray.init(address=options.address, log_to_driver=False)
        started = True
        if sigterm is not None:
            # ray.init makes SIGTERM a plain sys.exit(15) in the driver: keep the process's own handler (the
            # CLI's: finished work kept, "terminated (SIGTERM)", exit status 143), here and after the sweep
            signal.signal(signal.SIGTERM, sigterm)
    try:
        gpus = options.num_gpus
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
        task = ray.remote(num_cpus=options.num_cpus, num_gpus=gpus, max_retries=options.max_retries)(_run)
        refs: dict = {}
        try:
            _run_phases(ray, task, phases, on_done, refs)
        except BaseException:  # Ctrl-C, SIGTERM: no queued task may start; running ones get KeyboardInterrupt
            for r in list(refs):
                with contextlib.suppress(Exception):
                    ray.cancel(r)
            raise
    finally:
        if started:
            ray.shutdown()


def _run_phases(ray, task, phases: list[list[Call]], on_done: OnDone, refs: dict) -> None:
    """Each phase's calls as tasks of ``task``; ``refs`` holds those not yet reported (for cancelling)."""
    for calls in phases:
        refs.update({task.remote(c): c for c in calls})
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            for r in done:
                c = refs.pop(r)
                try:
                    result = ray.get(r)
                except Exception as e:  # noqa: BLE001 - a task that failed for good fails its job alone
                    result = failed(c, f"ray task: {type(e).__name__}: {' '.join(str(e).split())[-300:]}")
                on_done(c, result)
