"""The ``local`` launcher: N worker processes on this machine, one GPU each where there are GPUs.

Workers are started fresh (``spawn``), so each sets ``CUDA_VISIBLE_DEVICES`` to its own GPU
before CUDA starts; without GPUs they are plain CPU processes. SIGINT or SIGTERM, to the driver or to a
worker, stops the sweep: every running job stops like Ctrl-C (finished work and the last checkpoint
kept) and no worker starts another job. A worker whose driver died (SIGKILL) interrupts its job the
same way and exits.
"""
from __future__ import annotations

import contextlib
import glob
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Callable, Optional

from lamm_cl.config import ConfigError
from lamm_cl.sweep.launchers import Call, OnDone, at_least, call, failed


@dataclass
class Options:
    workers: Optional[int] = None  # parallel jobs; default: one per visible GPU, else 1
    gpus: Optional[list[int]] = None  # GPU ids to hand out, one per worker; default: every visible GPU


def validate(options: Options) -> None:
    """Values the types allow but a pool cannot use (``workers: 0``), refused when the sweep is loaded."""
    at_least(options, "workers", 1)
    for i, g in enumerate(options.gpus or []):
        if g < 0:
            raise ConfigError(f"launcher.gpus[{i}]: expected a GPU id, 0 or more, got {g}")
    if options.gpus is not None and not options.gpus:
        raise ConfigError("launcher.gpus: expected at least one GPU id (leave it out for every visible GPU)")


def visible_gpus() -> list[str]:
    """The GPUs this process may use: ``CUDA_VISIBLE_DEVICES`` when set, else every CUDA device.

    On Linux a GPU needs its device file (``/dev/nvidia<N>``; ``/dev/kfd`` for ROCm builds of torch): without
    one the answer is "none" without importing torch, which the driver otherwise never needs (2-3 s).
    """
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    if sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*") and not os.path.exists("/dev/kfd"):
        return []
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except Exception:  # noqa: BLE001 - no usable CUDA: CPU workers
        return []


# A signal handler may run between any two bytecodes of the code it interrupts, so nothing the handlers here touch
# takes a lock: the handler would wait forever for a lock the code it interrupted holds. The pool's stop flag
# was a multiprocessing Event, whose every read and write takes one lock shared by the driver and all workers:
# a SIGTERM landing while a worker's main thread read the flag hung that worker on its own lock, and then the
# driver (shutting the pool down) and every other worker with it (seen as a sweep that never ended after
# Ctrl-C). The flag is now one lock-free shared byte, and the worker's other state plain module globals.
_stop = None  # in a worker: the pool's "start no more jobs" flag (see :func:`_stop_flag`)
_busy = False  # in a worker: a job is running
_raised = False  # in a worker: the running job has been sent its KeyboardInterrupt
PARENT_POLL_S = 0.5  # how often a worker looks whether its driver still lives and whether it must stop
UNWIND_S = 20.0  # how long a worker whose driver died gives its job to record itself interrupted


def _stop_flag(ctx):
    """The flag that tells the workers to start no more jobs: one byte of shared memory, without a lock (one
    byte is written whole), so a signal handler can set or read it whatever the code it interrupted holds."""
    return ctx.RawValue("b", 0)


def _stopped() -> bool:
    return _stop is not None and bool(_stop.value)


def _interrupt(signum, frame):
    """SIGINT and SIGTERM end the running job the way Ctrl-C does (finished work and the last checkpoint kept),
    once: a second signal must not cut short the job's own clean-up. The worker then starts no job.
    Takes no lock (see the note above :data:`_stop`)."""
    global _raised
    if _stop is not None:
        _stop.value = 1
    if _busy and not _raised:
        _raised = True
        raise KeyboardInterrupt


def _watch(driver: int, main: int) -> None:
    """The worker's second thread: when the sweep is stopped (the driver set the stop event, or a signal
    reached another thread while the job's main thread waits in C), deliver SIGTERM to the main thread
    itself, where Python runs signal handlers; when the driver is gone (it was SIGKILLed: nothing else
    will stop this worker), interrupt the running job the same way, give it :data:`UNWIND_S` to record
    itself interrupted, and exit."""
    # SIGINT and SIGTERM must reach the main thread: Python runs handlers only there, and a signal the kernel
    # hands to this (sleeping) thread would wait until the job's main thread next wakes up.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    while os.getppid() == driver:
        time.sleep(PARENT_POLL_S)
        if _stopped() and _busy and not _raised:
            signal.pthread_kill(main, signal.SIGTERM)
    if _stop is not None:
        _stop.value = 1
    deadline = time.monotonic() + UNWIND_S
    while _busy and time.monotonic() < deadline:
        if not _raised:
            signal.pthread_kill(main, signal.SIGTERM)
        time.sleep(0.1)
    os._exit(1)


def _worker_init(slots, stop, threads: int, user_init: Optional[Callable[[], None]]) -> None:
    global _stop
    _stop = stop
    gpu = slots.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    else:  # CPU workers share the cores instead of each spinning up one thread per core
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    threading.Thread(target=_watch, args=(os.getppid(), threading.main_thread().ident), daemon=True,
                     name="lamm-cl-watch").start()
    if user_init is not None:
        user_init()


def _run(c: Call) -> dict:
    global _busy
    if _stopped():  # queued before the sweep was stopped: never starts
        return {"job": c[2], "state": "pending", "message": "not started: the sweep was stopped"}
    try:  # busy only inside the try: the handler's KeyboardInterrupt must land where it is caught
        _busy = True
        return call(c)
    except KeyboardInterrupt:
        return {"job": c[2], "state": "interrupted", "message": "interrupted (Ctrl-C or SIGTERM)"}
    finally:
        _busy = False


def launch(phases: list[list[Call]], options: Options, output: str, on_done: OnDone,
           initializer: Optional[Callable[[], None]] = None) -> None:
    """Run the calls of each phase on ``options.workers`` processes; all of a phase before the next.

    On Ctrl-C or SIGTERM (a ``KeyboardInterrupt`` here) no further call starts: the workers are told to
    stop, the running jobs get SIGTERM (each keeps its finished work and last checkpoint), the queued
    ones are dropped, and the interrupt is raised once the workers have ended.

    Args:
        initializer: run once in every worker before its first call (picklable by reference).
    """
    gpus = [str(g) for g in options.gpus] if options.gpus is not None else visible_gpus()
    workers = options.workers if options.workers is not None else max(1, len(gpus))
    ctx = mp.get_context("spawn")
    slots = ctx.Queue()
    stop = _stop_flag(ctx)
    for i in range(workers):
        slots.put(gpus[i % len(gpus)] if gpus else None)
    threads = max(1, (os.cpu_count() or 1) // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                               initargs=(slots, stop, threads, initializer))
    caught: list[int] = []
    before = _hold_signals(caught, stop)
    try:
        for calls in phases:
            futures = {pool.submit(_run, c): c for c in calls}
            left = set(futures)
            while left and not caught:
                # short waits: the main thread wakes to run a signal's handler even when the kernel gave the
                # signal to one of the pool's threads
                done, left = wait(left, timeout=0.5, return_when=FIRST_COMPLETED)
                for f in sorted(done, key=lambda f: calls.index(futures[f])):
                    c = futures[f]
                    try:
                        result = f.result()
                    except Exception as e:  # noqa: BLE001 - a dead worker fails its job, not the sweep
                        result = failed(c, f"worker process died ({type(e).__name__}: {e})")
                    on_done(c, result)
            if caught:
                break
    except BaseException:  # an interrupt off the main thread's handlers, or an error: as a signal is handled
        _stop_workers(pool, stop)
        _restore_signals(before)
        raise
    if caught:  # Ctrl-C, SIGTERM: start nothing more, stop what runs, then report the interrupt
        _stop_workers(pool, stop)
        _restore_signals(before)
        signal.raise_signal(caught[0])  # now, from here: the handler the process had (KeyboardInterrupt, ...)
        return
    _restore_signals(before)
    pool.shutdown(wait=True)


def _hold_signals(caught: list, stop) -> dict:
    """On the main thread, catch SIGINT and SIGTERM into ``caught`` (and tell the workers to start nothing
    more) instead of letting them raise wherever the driver happens to be: a ``KeyboardInterrupt`` raised
    inside the pool's or :func:`concurrent.futures.wait`'s bookkeeping (while it holds a future's lock,
    say) can leave it unable to shut down. ``launch`` raises the signal again where it is safe, so the process's own
    handler (Ctrl-C's KeyboardInterrupt, the CLI's SIGTERM) runs as before, after the workers have ended.
    A signal the process ignores stays ignored. Returns the handlers to put back."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # handlers can only be set on the main thread; a signal then reaches it as before

    def hold(signum, frame):  # takes no lock (see the note above _stop)
        caught.append(signum)
        stop.value = 1

    before = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(sig) is not signal.SIG_IGN:
            before[sig] = signal.signal(sig, hold)
    return before


def _restore_signals(before: dict) -> None:
    for sig, handler in before.items():
        signal.signal(sig, handler)


def _stop_workers(pool: ProcessPoolExecutor, stop) -> None:
    """Start no queued call, send the running ones SIGTERM (each keeps its finished work and last checkpoint)
    and wait for the workers to end."""
    stop.value = 1
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(OSError):
            os.kill(proc.pid, signal.SIGTERM)
    pool.shutdown(wait=True, cancel_futures=True)
