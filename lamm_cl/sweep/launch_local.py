"""The ``local`` launcher: N worker processes on this machine, one GPU each where there are GPUs.

Workers are started fresh (``spawn``), so each sets ``CUDA_VISIBLE_DEVICES`` to its own GPU
before CUDA starts; without GPUs they are plain CPU processes. A worker that gets SIGTERM
stops its job like Ctrl-C (finished work and the last checkpoint kept) and takes the next.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Callable, Optional

from lamm_cl.config import ConfigError
from lamm_cl.sweep.launchers import Call, OnDone, call, failed


@dataclass
class Options:
    workers: Optional[int] = None  # parallel jobs; default: one per visible GPU, else 1
    gpus: Optional[list[int]] = None  # GPU ids to hand out, one per worker; default: every visible GPU


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        return []


def _sigterm_as_ctrl_c(signum, frame):  # pre-emption and kill(1) end a job the way Ctrl-C does
    raise KeyboardInterrupt


def _worker_init(slots, threads: int, user_init: Optional[Callable[[], None]]) -> None:
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    else:  # CPU workers share the cores instead of each spinning up one thread per core
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    signal.signal(signal.SIGTERM, _sigterm_as_ctrl_c)
    if user_init is not None:
        user_init()


def _run(c: Call) -> dict:
    try:
        return call(c)
    except KeyboardInterrupt:
        return {"job": c[2], "state": "interrupted", "message": "interrupted (Ctrl-C or SIGTERM)"}


def launch(phases: list[list[Call]], options: Options, output: str, on_done: OnDone,
           initializer: Optional[Callable[[], None]] = None) -> None:
    """Run the calls of each phase on ``options.workers`` processes; all of a phase before the next.

    Args:
        initializer: run once in every worker before its first call (picklable by reference).
    """
    gpus = [str(g) for g in options.gpus] if options.gpus is not None else visible_gpus()
    workers = options.workers if options.workers is not None else max(1, len(gpus))
    if workers < 1:
        raise ConfigError(f"launcher.workers: expected 1 or more, got {workers}")
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    for i in range(workers):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(slots, threads, initializer))
    try:
        for calls in phases:
            futures = {pool.submit(_run, c): c for c in calls}
            for f in as_completed(futures):
                c = futures[f]
                try:
                    result = f.result()
                except Exception as e:  # noqa: BLE001 - a dead worker fails its job, not the sweep
                    result = failed(c, f"worker process died ({type(e).__name__}: {e})")
                on_done(c, result)
    except BaseException:  # Ctrl-C: the running jobs stop too (same process group); start no more
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
