"""Dataset loaders, looked up by the name the YAML's ``benchmark.dataset`` uses.

Each loader is ``load(root: Path, download: bool) -> DatasetParts``, registered with
:func:`lamm_cl.data.registry.register_dataset`, and raises
:class:`lamm_cl.errors.DataNotFoundError` (one line: what is missing, where it
looked, how to get it) when the data is not there.
"""
from __future__ import annotations

from pathlib import Path

from lamm_cl.data.base import ArraySamples, DatasetParts, FileSamples, Samples
from lamm_cl.data.registry import LOADERS

__all__ = ["ArraySamples", "DatasetParts", "FileSamples", "Samples", "list_datasets", "load_dataset"]


def _ensure_builtin() -> None:
    # Imported here, not at module import, so `import lamm_cl.data` stays cheap; importing one registers it.
    from lamm_cl.data import cifar, coop, digits, folder, imagenet_variants, tinyworld  # noqa: F401


def list_datasets() -> list[str]:
    """Names of every registered dataset."""
    _ensure_builtin()
    return sorted(LOADERS)


def load_dataset(name: str, root: str | Path = "~/data", download: bool = False) -> DatasetParts:
    """Load the dataset ``name`` from ``root``.

    Raises:
        ConfigError: ``name`` is not a registered dataset.
        DataNotFoundError: the files are not there.
    """
    from lamm_cl.errors import ConfigError

    _ensure_builtin()
    if name not in LOADERS:
        raise ConfigError(f"benchmark.dataset: unknown dataset {name!r}; known: {', '.join(sorted(LOADERS))}")
    return LOADERS[name](Path(root).expanduser(), download)
