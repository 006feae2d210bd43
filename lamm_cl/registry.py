"""The strategy registry: names -> builders, filled by decorators.

Strategies come from three places, all through :func:`register_strategy`:
the built-in files in ``strategies/`` (installed as ``lamm_cl.strategies``),
Python files named in a config's ``plugins:`` list, and installed packages that
expose the entry-point group ``lamm_cl.strategies`` (loaded lazily, only when a
name is not known yet). Registering a name twice is an error.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Sequence

from lamm_cl.errors import ConfigError, UserError

ENTRY_POINT_GROUP = "lamm_cl.strategies"
BUILTIN_MODULES = ("zeroshot", "lamm", "coop", "coop_lamm", "finetune", "linear_probe")


@dataclass
class StrategyOptions:
    """Options every strategy accepts; a strategy subclasses this for its own keys."""

    epochs: int = 5  # passes over each experience's training data
    batch_size: int = 32  # training mini-batch
    lr: float = 0.002  # base learning rate
    plugins: list[dict] = field(default_factory=list)  # Avalanche plugins by name, e.g. {name: replay, mem_size: 2000}

    def validate(self, path: str) -> None:
        """Check values beyond their types; raise ConfigError naming ``path``."""
        if self.epochs < 0:
            raise ConfigError(f"{path}.epochs: expected 0 or more, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"{path}.batch_size: expected 1 or more, got {self.batch_size}")
        if self.lr < 0:
            raise ConfigError(f"{path}.lr: expected 0 or more, got {self.lr}")
        for i, p in enumerate(self.plugins):
            if not isinstance(p, dict) or not isinstance(p.get("name"), str):
                raise ConfigError(f"{path}.plugins[{i}]: expected a mapping with a `name`, e.g. {{name: replay, mem_size: 2000}}")


@dataclass
class StrategySpec:
    """A registered strategy.

    Attributes:
        name: the name configs use.
        build: ``build(ctx, options) -> avalanche SupervisedTemplate``.
        options: the options dataclass (a :class:`StrategyOptions` subclass).
        inputs: ``"features"`` (frozen image encoder: samples are cached image
            features) or ``"images"`` (samples are preprocessed images).
        source: where it was loaded from (a module, a file, an entry point).
        description: one line for ``lamm-cl list``.
    """

    name: str
    build: Callable[..., Any]
    options: type
    inputs: Literal["features", "images"]
    source: str
    description: str


_REGISTRY: dict[str, StrategySpec] = {}
_LOADING_SOURCE: list[str] = []
_BUILTINS_LOADED = False
_ENTRY_POINTS_SCANNED = False


def register_strategy(name: str, *, options: type = StrategyOptions,
                      inputs: Literal["features", "images"] = "features") -> Callable:
    """Register a strategy builder under ``name``.

    Example:
        >>> @register_strategy("my_method", options=MyOptions)  # doctest: +SKIP
        ... def build(ctx, opts):
        ...     return SupervisedTemplate(model=..., optimizer=..., **ctx.template_kwargs(opts))

    Raises:
        UserError: ``name`` is already registered.
    """
    if inputs not in ("features", "images"):
        raise ValueError(f"inputs must be 'features' or 'images', got {inputs!r}")

    def deco(fn: Callable) -> Callable:
        if name in _REGISTRY:
            raise UserError(f"strategy {name!r} is registered twice: by {_REGISTRY[name].source} "
                            f"and by {_current_source(fn)}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = StrategySpec(name, fn, options, inputs, _current_source(fn), doc[0] if doc else "")
        return fn

    return deco


def _current_source(fn: Callable) -> str:
    return _LOADING_SOURCE[-1] if _LOADING_SOURCE else fn.__module__


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for mod in BUILTIN_MODULES:
        full = f"lamm_cl.strategies.{mod}"
        if full in sys.modules:
            continue
        _LOADING_SOURCE.append(f"built-in ({mod}.py)")
        try:
            importlib.import_module(full)
        except ModuleNotFoundError as e:
            if e.name != full:  # a built-in not written yet is skipped; a broken import is not
                raise
        finally:
            _LOADING_SOURCE.pop()


def load_plugin_file(path: str | Path) -> None:
    """Import a strategy plugin file so that its ``@register_strategy`` calls run.

    Raises:
        UserError: the file is missing or fails to import (the message names it).
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise UserError(f"plugins: plugin file {p} not found")
    mod_name = f"lamm_cl_plugin_{abs(hash(str(p)))}"
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise UserError(f"plugins: {p} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    _LOADING_SOURCE.append(f"file {p}")
    try:
        spec.loader.exec_module(module)
    except UserError:
        del sys.modules[mod_name]
        raise
    except Exception as e:  # any failure inside a user's file is their input, reported in one line
        del sys.modules[mod_name]
        raise UserError(f"plugins: {p} failed to import: {type(e).__name__}: {e}") from None
    finally:
        _LOADING_SOURCE.pop()


def load_plugin_files(paths: Sequence[str], base: Optional[Path] = None) -> None:
    """Load every plugin file of a config; relative paths are tried against ``base`` first."""
    _load_builtins()
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_absolute() and base is not None and (base / path).is_file():
            path = base / path
        load_plugin_file(path)


def _scan_entry_points() -> None:
    global _ENTRY_POINTS_SCANNED
    if _ENTRY_POINTS_SCANNED:
        return
    _ENTRY_POINTS_SCANNED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        _LOADING_SOURCE.append(f"entry point {ep.name} = {ep.value}")
        try:
            ep.load()
        except UserError:
            raise
        except Exception as e:
            raise UserError(f"entry point {ep.name} ({ep.value}) failed to load: {type(e).__name__}: {e}") from None
        finally:
            _LOADING_SOURCE.pop()


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name``; entry points are scanned only when it is not known yet.

    Raises:
        ConfigError: nobody registered ``name`` (the message lists the known names).
    """
    _load_builtins()
    if name not in _REGISTRY:
        _scan_entry_points()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown strategy {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def options_of(name: str) -> type:
    """The options dataclass of strategy ``name`` (for config validation)."""
    return get_strategy(name).options


def list_strategies() -> list[StrategySpec]:
    """Every registered strategy, entry points included, sorted by name."""
    _load_builtins()
    _scan_entry_points()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
