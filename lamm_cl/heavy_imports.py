"""Importing the heavy third-party modules (torch, Avalanche, open_clip) with the garbage collector paused.

They build about a million long-lived objects, and with the collector running each full pass walks the
growing heap again: ~1.3 s of the ~10 s a fresh `lamm-cl run`, sweep worker or cluster task takes to start
(measured on 2 CPU cores). The runner's package imports torch and Avalanche inside :func:`collector_paused`,
:mod:`lamm_cl.model.clip` open_clip, where a model is first built.
"""
from __future__ import annotations

import contextlib
import gc
from typing import Iterator


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """No garbage collection inside the block; afterwards the collector is as it was."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
