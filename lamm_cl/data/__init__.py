"""Dataset loaders, registered by the name the YAML's ``benchmark.dataset`` uses.

Each loader is ``load(root: Path, download: bool) -> DatasetParts`` and raises
:class:`lamm_cl.errors.DataNotFoundError` (one line: what is missing, where it
looked, how to get it) when the data is not there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from lamm_cl.data.base import ArraySamples, DatasetParts, FileSamples, Samples

Loader = Callable[[Path, bool], DatasetParts]
_LOADERS: dict[str, Loader] = {}

__all__ = ["ArraySamples", "DatasetParts", "FileSamples", "Samples", "register_dataset",
           "list_datasets", "load_dataset"]


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Register a loader under ``name``; registering a name twice is an error."""

    def deco(fn: Loader) -> Loader:
        if name in _LOADERS:
            raise ValueError(f"dataset {name!r} is already registered")
        _LOADERS[name] = fn
        return fn

    return deco


def _ensure_builtin() -> None:
    # Imported here, not at module import, so `import lamm_cl.data` stays cheap.
    from lamm_cl.data import digits  # noqa: F401
    for mod in ("cifar", "coop", "folder", "tinyworld"):
        try:
            __import__(f"lamm_cl.data.{mod}")
        except ModuleNotFoundError as e:  # a loader module not written yet
            if e.name != f"lamm_cl.data.{mod}":
                raise


def list_datasets() -> list[str]:
    """Names of every registered dataset."""
    _ensure_builtin()
    return sorted(_LOADERS)


def load_dataset(name: str, root: str | Path = "~/data", download: bool = False) -> DatasetParts:
    """Load the dataset ``name`` from ``root``.

    Raises:
        ConfigError: ``name`` is not a registered dataset.
        DataNotFoundError: the files are not there.
    """
    from lamm_cl.errors import ConfigError

    _ensure_builtin()
    if name not in _LOADERS:
        raise ConfigError(f"benchmark.dataset: unknown dataset {name!r}; known: {', '.join(sorted(_LOADERS))}")
    return _LOADERS[name](Path(root).expanduser(), download)
