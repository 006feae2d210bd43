"""Initializers for the sweep tests' local-launcher workers (`lamm_cl.sweep.launch_local.launch(initializer=)`).

A worker finds its initializer by module and name, so it imports this module, not the test file: a test
file would bring pandas and pytest into every worker and every test driver (~3 CPU-seconds each).
Only the standard library is imported here; lamm_cl's modules inside the functions.
"""
from __future__ import annotations

import os
import time
from pathlib import Path


def count_encoder_calls(threads: int | None = None) -> None:
    """Log how many images every image-encoder call gets, one line per call, to $SWEEP_TEST_ENCODER_LOG.

    Args:
        threads: torch threads for the worker (the test process's, passed with functools.partial), so that
            its jobs reduce floats as the test's in-process reference runs do. The launcher gives a CPU
            worker cores // workers threads, which is not the test process's count with one worker.
    """
    from lamm_cl.model.clip import FrozenCLIP

    if threads is not None:
        import torch

        torch.set_num_threads(threads)

    original = FrozenCLIP.encode_images
    path = os.environ["SWEEP_TEST_ENCODER_LOG"]

    def counted(self, images):
        with open(path, "a") as f:
            f.write(f"{len(images)}\n")
        return original(self, images)

    FrozenCLIP.encode_images = counted


def fake_jobs() -> None:
    """Every job records that it started ("job-id pid" in $SWEEP_TEST_STARTED), then sleeps until interrupted."""
    from lamm_cl.sweep import job as job_mod
    from lamm_cl.sweep.spec import read_sweep
    from lamm_cl.sweep.state import write_state

    def run_job(output, job_id):
        job = job_mod._job(read_sweep(output), job_id)
        write_state(Path(output), job, "running")
        with open(os.environ["SWEEP_TEST_STARTED"], "a") as fh:
            fh.write(f"{job_id} {os.getpid()}\n")
        try:
            time.sleep(120)
        except KeyboardInterrupt:
            write_state(Path(output), job, "interrupted")
            raise
        return {"job": job_id, "state": "done", "message": ""}

    job_mod.run_job = run_job
