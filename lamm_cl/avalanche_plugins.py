"""The Avalanche plugins and loggers a benchmark YAML names, made into Avalanche objects.

``plugins:`` of a strategy (``replay``, ``lwf``, ``ewc``) become Avalanche plugins
(:func:`build_avalanche_plugins`); the top-level ``loggers:`` (``tensorboard``, ``wandb``, ``csv``)
are checked (:func:`check_loggers`) and become an Avalanche ``EvaluationPlugin`` per run
(:func:`logging_evaluator`), closed with :func:`close_loggers`.
"""
from __future__ import annotations

from typing import Any, Callable

from avalanche.training.plugins import ReplayPlugin

from lamm_cl.errors import ConfigError
from lamm_cl.regularization import EWCPlugin, LwFPlugin


# ---------------------------------------------------------------------------
# Avalanche plugins by name, from the YAML
# ---------------------------------------------------------------------------

def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# The YAML-settable parameters of each plugin: name -> (what it must be, check). Parameters that take
# Python objects (Replay's storage_policy) are left out: they cannot come from a YAML file.
_PLUGIN_PARAMS: dict[str, dict[str, tuple[str, Callable[[Any], bool]]]] = {
    "replay": {
        "mem_size": ("a positive integer", lambda v: _is_int(v) and v > 0),
        "batch_size": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
        "batch_size_mem": ("a positive integer or null", lambda v: v is None or (_is_int(v) and v > 0)),
        "task_balanced_dataloader": ("true or false", lambda v: isinstance(v, bool)),
    },
    "lwf": {
        "alpha": ("a number, or a list of numbers (one per experience)",
                  lambda v: _is_number(v) or (isinstance(v, list) and all(_is_number(a) for a in v))),
        "temperature": ("a positive number", lambda v: _is_number(v) and v > 0),
    },
    "ewc": {
        "ewc_lambda": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
        "mode": ("'separate' or 'online'", lambda v: v in ("separate", "online")),
        "decay_factor": ("a number in [0, 1] (mode: online only) or null",
                         lambda v: v is None or (_is_number(v) and 0 <= v <= 1)),
        "keep_importance_data": ("true or false", lambda v: isinstance(v, bool)),
    },
}
_REQUIRED_PARAMS = {"ewc": ("ewc_lambda",)}  # Avalanche gives these no default


def _avalanche_plugins() -> dict[str, Callable]:
    return {"replay": ReplayPlugin, "lwf": LwFPlugin, "ewc": EWCPlugin}


def build_avalanche_plugins(specs: list[dict], path: str = "plugins") -> list:
    """Instantiate Avalanche plugins from ``[{name: replay, mem_size: 2000}, ...]``.

    ``replay`` is Avalanche's ``ReplayPlugin``; ``lwf`` and ``ewc`` are Avalanche's plugins
    with fixes for CLIP models (:class:`LwFPlugin`, :class:`EWCPlugin`). Their parameters
    are Avalanche's.

    Raises:
        ConfigError: an unknown plugin name or parameter, a missing or bad value
            (the message names ``path[i].key`` and lists the valid choices).
    """
    known = _avalanche_plugins()
    out = []
    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping with a `name`, e.g. {{name: replay, mem_size: 2000}}")
        spec = dict(spec)  # never mutate the caller's config
        name = spec.pop("name", None)
        if name not in known:
            raise ConfigError(f"{where}.name: unknown plugin {name!r}; known: {', '.join(sorted(known))}")
        params = _PLUGIN_PARAMS[name]
        for key, value in spec.items():
            if key not in params:
                raise ConfigError(f"{where}.{key}: unknown parameter of {name}; known: {', '.join(params)}")
            what, ok = params[key]
            if not ok(value):
                raise ConfigError(f"{where}.{key}: expected {what}, got {value!r}")
        for key in _REQUIRED_PARAMS.get(name, ()):
            if key not in spec:
                raise ConfigError(f"{where}.{key}: required by {name}, e.g. {{name: {name}, {key}: ...}}")
        try:
            out.append(known[name](**spec))
        except (TypeError, ValueError, AssertionError) as e:  # Avalanche checks combinations with asserts
            raise ConfigError(f"{where}: {name}: {e}") from None
    return out


# ---------------------------------------------------------------------------
# Avalanche loggers by name, from the YAML's `loggers:`
# ---------------------------------------------------------------------------

# name -> (Avalanche class, the package it needs, its folder parameter, the folder in the run folder)
_LOGGERS = {
    "tensorboard": ("TensorboardLogger", "tensorboard", "tb_log_dir", "tensorboard"),
    "wandb": ("WandBLogger", "wandb", "dir", "."),
    "csv": ("CSVLogger", None, "log_folder", "csv_logs"),
}


def _logger_class(name: str):
    import avalanche.logging as logging

    if name == "wandb":
        return _wandb_logger()
    return getattr(logging, _LOGGERS[name][0])


def _wandb_logger():
    """Avalanche's WandBLogger, made to work with wandb releases that dropped ``wandb.viz``."""
    from avalanche.logging import WandBLogger

    class WandBLoggerCompat(WandBLogger):
        def log_single_metric(self, name, value, x_plot):
            # Avalanche checks every value against wandb.viz.CustomChart (wandb_logger.py,
            # log_single_metric), which recent wandb lacks; plain numbers need no such check.
            if isinstance(value, (int, float)) and not name.startswith("WeightCheckpoint"):
                self.step = x_plot
                self.wandb.log({name: value}, step=self.step)
            elif hasattr(self.wandb, "viz"):
                super().log_single_metric(name, value, x_plot)

        def close(self):
            self.wandb.finish()

    return WandBLoggerCompat


def close_loggers(evaluator) -> None:
    """Flush and close the loggers of a run's evaluator (tensorboard files, the wandb run)."""
    for lg in getattr(evaluator, "loggers", []) or []:
        close = getattr(lg, "close", None)
        if callable(close):
            close()


def check_loggers(specs: list[dict], path: str = "loggers") -> None:
    """Every entry of ``loggers:`` names a known logger, with its own parameters, whose package is installed.

    Raises:
        ConfigError: one line naming ``loggers[i]`` (and the pip command when a package is missing).
    """
    import importlib.util
    import inspect

    for i, spec in enumerate(specs):
        where = f"{path}[{i}]"
        name = spec.get("name") if isinstance(spec, dict) else None
        if name not in _LOGGERS:
            raise ConfigError(f"{where}.name: expected one of {', '.join(_LOGGERS)}, got {name!r}")
        package = _LOGGERS[name][1]
        if package is not None and importlib.util.find_spec(package) is None:
            raise ConfigError(f"{where}: the {name} logger needs {package}, which is not installed: pip install {package}")
        params = [p for p in inspect.signature(_logger_class(name).__init__).parameters if p != "self"]
        for key in spec:
            if key != "name" and key not in params:
                raise ConfigError(f"{where}.{key}: unknown parameter of Avalanche's {_LOGGERS[name][0]}; "
                                  f"known: {', '.join(params)}")


def logging_evaluator(specs: list[dict], run_dir, project: str, run: str):
    """An Avalanche ``EvaluationPlugin`` logging loss and accuracy (per epoch and experience) and each
    experience's forgetting to the loggers of ``specs``, or None without loggers.

    A logger's folder defaults to one inside ``run_dir`` (tensorboard: ``tensorboard/``, csv:
    ``csv_logs/``, wandb: ``wandb/``); wandb's project defaults to the benchmark's name and its run
    name to ``<strategy>-seed<k>``. ``params: {mode: offline}`` runs wandb offline.
    """
    if not specs:
        return None
    from pathlib import Path

    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics, loss_metrics
    from avalanche.training.plugins import EvaluationPlugin

    loggers = []
    for spec in specs:
        name = spec["name"]
        kwargs = {k: v for k, v in spec.items() if k != "name"}
        folder_key, sub = _LOGGERS[name][2], _LOGGERS[name][3]
        if run_dir is not None:
            kwargs.setdefault(folder_key, str(Path(run_dir) / sub))
            Path(kwargs[folder_key]).mkdir(parents=True, exist_ok=True)
        if name == "wandb":
            kwargs.setdefault("project_name", project)
            kwargs.setdefault("run_name", run)
            if run_dir is not None:
                kwargs.setdefault("path", str(Path(run_dir) / "wandb-checkpoints"))
            # Avalanche draws a run id with wandb.util.generate_id (avalanche/logging/wandb_logger.py,
            # before_run), which recent wandb no longer has; an id given in params skips that call.
            import uuid

            kwargs["params"] = {"id": uuid.uuid4().hex[:8], **(kwargs.get("params") or {})}
        loggers.append(_logger_class(name)(**kwargs))
    # Avalanche's CSVLogger fills its `forgetting` column from the ExperienceForgetting metric and writes 0
    # when none is attached (avalanche/logging/csv_logger.py, after_eval_exp): attached here, the column
    # holds Avalanche's own definition (accuracy right after training that experience minus now, 0-1).
    return EvaluationPlugin(accuracy_metrics(epoch=True, experience=True), loss_metrics(epoch=True, experience=True),
                            forgetting_metrics(experience=True), loggers=loggers)
