"""The dataset registry: loaders by the name the YAML's ``benchmark.dataset`` uses.

A loader module registers itself with :func:`register_dataset` when imported. This module
imports no loader (they all import it): :mod:`lamm_cl.data` imports the built-in ones
before it looks a name up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lamm_cl.data.base import DatasetParts

Loader = Callable[[Path, bool], DatasetParts]
LOADERS: dict[str, Loader] = {}  # name -> loader, in registration order


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``name``; registering a name twice is an error."""

    def deco(fn: Loader) -> Loader:
        if name in LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        LOADERS[name] = fn
        return fn

    return deco
