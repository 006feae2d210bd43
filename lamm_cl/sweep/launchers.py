"""What every launcher shares, and how one is found by name.

A launcher is one module ``lamm_cl/sweep/launch_<name>.py`` with:

* ``Options``: a dataclass of its ``launcher:`` keys (validated like the run config);
* ``launch(phases, options, output, on_done)``: run each phase's calls (all of a phase
  before the next), calling ``on_done(call, result)`` as each finishes.

A call is ``(function name, output folder, job id)`` naming :func:`lamm_cl.sweep.job.run_job`
or :func:`~lamm_cl.sweep.job.prepare_features`; a launcher only decides where it runs.
Adding a launcher is adding such a file: nothing else changes.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from lamm_cl.config import ConfigError, from_dict
from lamm_cl.errors import UserError

Call = tuple[str, str, str]  # (function in lamm_cl.sweep.job, output folder, job id)
OnDone = Callable[[Call, dict], None]


def known_launchers() -> list[str]:
    """Names of the launchers shipped in this package."""
    # this module's own folder, not the package's __path__: importing lamm_cl.sweep would import this module back
    return sorted(m.name.removeprefix("launch_") for m in pkgutil.iter_modules([str(Path(__file__).parent)])
                  if m.name.startswith("launch_"))


def get_launcher(name: str) -> ModuleType:
    """The launcher module called ``name``.

    Raises:
        ConfigError: no such launcher (the message lists the known ones).
    """
    if name not in known_launchers():
        raise ConfigError(f"launcher.name: unknown launcher {name!r}; known: {', '.join(known_launchers())}")
    return importlib.import_module(f"lamm_cl.sweep.launch_{name}")


def options(module: ModuleType, data: dict) -> Any:
    """The launcher's ``Options`` from the sweep file's ``launcher:`` mapping (minus ``name``), their values
    checked by the launcher's ``validate`` where it has one.

    Raises:
        ConfigError: an unknown key, a wrong type or a value out of range (``launcher.workers: ... got 0``).
    """
    opts = from_dict(module.Options, {k: v for k, v in data.items() if k != "name"}, "launcher")
    if hasattr(module, "validate"):
        module.validate(opts)
    return opts


def at_least(opts: Any, name: str, low: float, whole: bool = True) -> None:
    """Refuse ``opts.<name>`` below ``low`` (None is a default, left alone).

    Raises:
        ConfigError: naming ``launcher.<name>`` and the value.
    """
    value = getattr(opts, name)
    if value is not None and not value >= low:  # NaN too
        raise ConfigError(f"launcher.{name}: expected {'a whole number ' if whole else ''}{low:g} or more, got {value}")


def require(module: str, extra: str, launcher: str) -> ModuleType:
    """Import an optional dependency of a launcher.

    Raises:
        UserError: it is not installed; the one-line message names the pip command.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"the {launcher} launcher needs {module}, which is not installed: "
                        f"pip install 'lamm-cl[{extra}]'") from None


def call(c: Call) -> dict:
    """Run one call in this process (what every launcher's worker finally does)."""
    from lamm_cl.sweep import job

    fn, output, job_id = c
    return getattr(job, fn)(output, job_id)


def failed(c: Call, message: str) -> dict:
    """The result of a call whose process died or whose launcher lost it."""
    return {"job": c[2] if c[0] == "run_job" else f"features ({c[2]})", "state": "failed", "message": message,
            "lost": True}  # the driver reads the job's own state file to say what became of it
