"""The strategy registry: names -> builders, filled by decorators.

Strategies come from three places, all through :func:`register_strategy`:

* the built-in files in ``strategies/`` (installed as ``lamm_cl.strategies``;
  every module there is imported the first time a strategy is looked up),
* Python files named in a config's top-level ``plugins:`` list,
* installed packages that expose the entry-point group ``lamm_cl.strategies``
  (loaded lazily, only when a name is not known yet, or for ``lamm-cl list``).

Registering a name twice is an error, never a silent overwrite. A plugin that
fails to import, or a name nobody registered, raises :class:`UserError` with a
one-line message (the CLI turns it into exit status 2).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import importlib.util
import pkgutil
import re
import sys
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Optional, Sequence

from lamm_cl.errors import ConfigError, UserError

ENTRY_POINT_GROUP = "lamm_cl.strategies"
BUILTIN_PACKAGE = "lamm_cl.strategies"


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
        if self.plugins:
            from lamm_cl.avalanche_plugins import build_avalanche_plugins

            build_avalanche_plugins(self.plugins, f"{path}.plugins")  # unknown names or parameters fail here, early

    def check_setup(self, setup: Any, path: str) -> None:
        """Check values against the model, data and device of the run (a
        :class:`lamm_cl.strategy_kit.setup.StrategySetup`), before any strategy trains; raise ConfigError
        naming ``path``. Nothing to check by default."""


@dataclass
class StrategySpec:
    """A registered strategy.

    Attributes:
        name: the name configs use.
        build: ``build(ctx, options) -> avalanche SupervisedTemplate``.
        options: the options dataclass (a :class:`StrategyOptions` subclass).
        inputs: ``"features"`` (frozen image encoder: samples are cached image
            features) or ``"images"`` (samples are preprocessed images).
        augmented_views: whether a ``"features"`` strategy trains on the augmented views when
            ``features.train_views > 0`` (False: always the centre crop).
        source: where it was loaded from: ``built-in strategies/lamm.py``,
            ``file /path/to/plugin.py``, ``entry point ncm = pkg.mod (dist 1.0)``.
        description: one line for ``lamm-cl list`` (the builder's docstring, first line).
        trains: False for a strategy that learns nothing by gradient (zeroshot, simplecil): a config
            giving it ``lr``, ``epochs`` or ``batch_size`` is refused, since they would change nothing.
    """

    name: str
    build: Callable[..., Any]
    options: type
    inputs: Literal["features", "images"]
    source: str
    description: str
    augmented_views: bool = True
    trains: bool = True


_REGISTRY: dict[str, StrategySpec] = {}
_LOADING_SOURCE: list[str] = []  # what is being imported right now, innermost last
_BUILTINS_LOADED = False
_ENTRY_POINTS_SCANNED = False


def register_strategy(name: str, *, options: type = StrategyOptions,
                      inputs: Literal["features", "images"] = "features",
                      augmented_views: bool = True, trains: bool = True) -> Callable:
    """Register a strategy builder under ``name``.

    The builder is called once per (strategy, seed) as ``build(ctx, opts)`` with a
    :class:`lamm_cl.StrategyContext` and an instance of ``options`` filled from the
    YAML entry, and returns an Avalanche ``SupervisedTemplate``.

    Args:
        name: the name a config's ``strategies:`` entry uses.
        options: a dataclass subclassing :class:`StrategyOptions`; its fields are the
            YAML keys this strategy accepts (unknown keys and wrong types are errors).
        inputs: ``"features"`` to train on cached frozen image features, ``"images"``
            to receive preprocessed images.
        augmented_views: with ``features.train_views > 0``, a ``"features"`` strategy trains on
            that epoch's augmented view; False keeps it on the centre crop (for methods whose
            reference reads the un-augmented training images, e.g. to take class statistics).
        trains: False when nothing is learned by gradient, so that ``lr``, ``epochs`` and
            ``batch_size`` in its config entry are refused as options that change nothing.

    Example:
        >>> @register_strategy("my_method", options=MyOptions)  # doctest: +SKIP
        ... def build(ctx, opts):
        ...     '''One line for `lamm-cl list`.'''
        ...     return SupervisedTemplate(model=..., optimizer=..., **ctx.template_kwargs(opts))

    Raises:
        UserError: ``name`` is already registered.
        TypeError: a bad ``name``, ``options`` or ``inputs`` (a mistake in the plugin's code).
    """
    if not isinstance(name, str) or not name.strip():
        raise TypeError("register_strategy needs a name: write @register_strategy(\"my_method\")")
    if inputs not in ("features", "images"):
        raise TypeError(f"register_strategy({name!r}): inputs must be 'features' or 'images', got {inputs!r}")
    if not (isinstance(options, type) and issubclass(options, StrategyOptions) and dataclasses.is_dataclass(options)):
        raise TypeError(f"register_strategy({name!r}): options must be a @dataclass subclassing "
                        f"StrategyOptions, got {options!r}")

    def deco(fn: Callable) -> Callable:
        source = _current_source(fn)
        if name in _REGISTRY:
            raise UserError(f"strategy {name!r} is registered twice: by {_REGISTRY[name].source} and by {source}")
        doc = (fn.__doc__ or "").strip().splitlines()
        _REGISTRY[name] = StrategySpec(name, fn, options, inputs, source, doc[0].strip() if doc else "",
                                       augmented_views=bool(augmented_views), trains=bool(trains))
        return fn

    return deco


def _current_source(fn: Callable) -> str:
    module = getattr(fn, "__module__", None) or "?"
    # by module first: a built-in may be imported by another one (coop_lamm imports lamm), or directly
    if module.startswith(BUILTIN_PACKAGE + "."):
        return _builtin_source(module.rsplit(".", 1)[1])
    if _LOADING_SOURCE:
        return _LOADING_SOURCE[-1]
    return f"module {module}"


def _builtin_source(mod: str) -> str:
    return f"built-in strategies/{mod}.py"


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _where(e: BaseException, filename: Optional[str]) -> str:
    """`` (line N)`` of the deepest traceback frame in ``filename``, for import-failure messages."""
    if isinstance(e, SyntaxError) or filename is None:
        return ""  # a SyntaxError's message already names the file and line
    lines = [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == filename]
    return f" at line {lines[-1]}" if lines else ""


@contextmanager
def _loading(source: str, what: str, filename: Optional[str] = None) -> Iterator[None]:
    """Attribute registrations to ``source``; on failure undo them and raise one-line UserError."""
    before = set(_REGISTRY)
    _LOADING_SOURCE.append(source)
    try:
        yield
    except BaseException as e:
        for name in set(_REGISTRY) - before:  # a half-imported plugin leaves nothing behind
            del _REGISTRY[name]
        if isinstance(e, UserError) or not isinstance(e, Exception):
            raise  # our own one-line errors (a duplicate name), and KeyboardInterrupt, pass through
        # any failure inside a plugin is the plugin author's input, reported in one line
        raise UserError(f"{what} failed to import{_where(e, filename)}: {_first_line(e)}") from None
    finally:
        _LOADING_SOURCE.pop()


def _load_builtins() -> None:
    """Import every module of ``strategies/`` (the package ``lamm_cl.strategies``) once."""
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    package = importlib.import_module(BUILTIN_PACKAGE)
    # Listing the package's own folder (no sys.path or cwd involved) lets a file dropped
    # into strategies/ register itself exactly like the built-ins do.
    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    for mod in names:
        full = f"{BUILTIN_PACKAGE}.{mod}"
        if full in sys.modules:
            continue  # already imported directly; _current_source attributed it
        path = str(Path(package.__path__[0]) / f"{mod}.py")
        with _loading(_builtin_source(mod), f"strategies/{mod}.py", path):
            importlib.import_module(full)


def _module_name(path: Path) -> str:
    stem = re.sub(r"\W", "_", path.stem)
    return f"lamm_cl_plugin_{stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"


def load_plugin_file(path: str | Path) -> None:
    """Import a strategy plugin file so that its ``@register_strategy`` calls run.

    A file is imported once per process (under a private module name); loading it
    again does nothing.

    Raises:
        UserError: the file is missing, is not a ``.py`` file, fails to import (the
            message names it, the line and the exception), or registers a name that
            is already taken.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise UserError(f"plugins: plugin file {p} not found")
    mod_name = _module_name(p)
    if mod_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(mod_name, p)
    if spec is None or spec.loader is None:
        raise UserError(f"plugins: {p} is not a Python file (expected a .py file)")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module  # before exec, so dataclasses and pickle can find the module
    try:
        with _loading(f"file {p}", f"plugins: {p}", str(p)):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[mod_name]
        raise


def load_plugin_files(paths: Sequence[str], base: Optional[Path] = None) -> None:
    """Load the built-ins, then every plugin file of a config.

    Args:
        paths: the config's ``plugins:`` list.
        base: the config file's folder; a relative path is looked up there first,
            then in the current directory.

    Raises:
        UserError: a file is missing (the message says where it looked) or fails to load.
    """
    _load_builtins()
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_absolute():
            tried = ([base / path] if base is not None else []) + [Path.cwd() / path]
            found = [t for t in tried if t.is_file()]
            if not found:
                looked = " and ".join(str(t.parent.resolve()) for t in tried)
                raise UserError(f"plugins: plugin file {p} not found (looked in {looked})")
            path = found[0]
        load_plugin_file(path)


def _entry_points() -> list:
    from importlib.metadata import entry_points

    eps = entry_points()
    if hasattr(eps, "select"):  # Python 3.10+
        found = list(eps.select(group=ENTRY_POINT_GROUP))
    else:  # Python 3.9: a dict of group -> entry points
        found = list(eps.get(ENTRY_POINT_GROUP, []))
    seen, out = set(), []
    for ep in found:  # a distribution visible twice on sys.path lists its entry points twice
        if (ep.name, ep.value) not in seen:
            seen.add((ep.name, ep.value))
            out.append(ep)
    return out


def _scan_entry_points() -> None:
    """Import every module named by a ``lamm_cl.strategies`` entry point, once per process."""
    global _ENTRY_POINTS_SCANNED
    if _ENTRY_POINTS_SCANNED:
        return
    _ENTRY_POINTS_SCANNED = True
    for ep in _entry_points():
        dist = getattr(ep, "dist", None)
        label = f"entry point {ep.name} = {ep.value}" + (f" ({dist.name} {dist.version})" if dist else "")
        with _loading(label, label):
            ep.load()


def get_strategy(name: str) -> StrategySpec:
    """The registered strategy ``name``; entry points are scanned only when it is not known yet.

    Raises:
        ConfigError: nobody registered ``name`` (the message lists the known names).
    """
    _load_builtins()
    if name not in _REGISTRY:
        _scan_entry_points()
    if name not in _REGISTRY:
        known = ", ".join(sorted(_REGISTRY)) or "(none)"
        raise ConfigError(f"unknown strategy {name!r}; known: {known} (plugin files go in the config's `plugins:` list)")
    return _REGISTRY[name]


def options_of(name: str) -> type:
    """The options dataclass of strategy ``name`` (for config validation).

    A built-in whose options class its file imports from another module (``lamm_cl.strategy_kit.options``,
    which imports no torch) is answered from that module without importing the strategy file, so that a
    config's options are checked, and refused, before torch and Avalanche load.
    """
    declared = _declared(name)
    if declared is not None and declared.options is not None:
        module, cls = declared.options
        return getattr(importlib.import_module(module), cls)
    return get_strategy(name).options


def trains(name: str) -> bool:
    """Whether strategy ``name`` learns by gradient (``register_strategy(..., trains=...)``), read from a
    built-in's source when its file is not imported yet."""
    declared = _declared(name)
    if declared is not None and declared.trains is not None:
        return declared.trains
    return get_strategy(name).trains


@dataclass(frozen=True)
class _Declaration:
    """What a built-in's ``@register_strategy(...)`` line says, read from its source (see :func:`_declared`)."""

    name: str
    source: str
    description: str
    options: Optional[tuple[str, str]]  # (module, class) of its options, when imported from another module
    trains: Optional[bool]  # None: not a literal in the decorator


def _declared(name: str) -> Optional[_Declaration]:
    """The declaration of built-in ``name`` while the built-ins are not imported yet (None once they are,
    or for a name that is not a built-in)."""
    if _BUILTINS_LOADED or name in _REGISTRY:
        return None
    return _builtin_declarations().get(name)


def _builtin_descriptions() -> list[tuple[str, str, str]]:
    """(name, source, description) of each built-in, read from its source file without importing it."""
    return [(d.name, d.source, d.description) for d in _builtin_declarations().values()]


@functools.lru_cache(maxsize=1)
def _builtin_declarations() -> dict[str, _Declaration]:
    """Each built-in's registration, read from its source file without importing it.

    A built-in imports torch and Avalanche (seconds); ``lamm-cl list`` and a config's checks need only
    what the ``@register_strategy("name", options=..., trains=...)`` decorator and the builder's
    docstring hold: literals, and the name of an options class with the ``from MODULE import NAME``
    line that brings it in.
    """
    import ast

    spec = importlib.util.find_spec(BUILTIN_PACKAGE)
    folder = Path(next(iter(spec.submodule_search_locations)))
    out = {}
    for path in sorted(folder.glob("*.py")):
        if path.name.startswith("_"):
            continue
        body = ast.parse(path.read_text(encoding="utf-8")).body  # registrations sit at module level
        imported = {alias.asname or alias.name: (node.module, alias.name) for node in body
                    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 for alias in node.names}
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                continue
            for deco in node.decorator_list:
                if (isinstance(deco, ast.Call) and getattr(deco.func, "id", None) == "register_strategy"
                        and deco.args and isinstance(deco.args[0], ast.Constant)):
                    doc = (ast.get_docstring(node) or "").strip().splitlines()
                    kw = {k.arg: k.value for k in deco.keywords}
                    options = kw.get("options")
                    trains_kw = kw.get("trains")
                    name = deco.args[0].value
                    if options is None:  # register_strategy's default
                        where = (__name__, StrategyOptions.__name__)
                    else:
                        where = imported.get(options.id) if isinstance(options, ast.Name) else None
                    if trains_kw is None:
                        trained: Optional[bool] = True  # register_strategy's default
                    else:
                        trained = bool(trains_kw.value) if isinstance(trains_kw, ast.Constant) else None
                    out[name] = _Declaration(name, _builtin_source(path.stem), doc[0].strip() if doc else "",
                                             where, trained)
    return out


def describe_strategies() -> list[tuple[str, str, str]]:
    """(name, where it comes from, description) of every strategy, sorted by name, for ``lamm-cl list``.

    Same rows as :func:`list_strategies`, but the built-ins are described from their source unless
    already imported, so that listing imports no torch (entry points and plugin files are imported).
    """
    _scan_entry_points()
    rows = {s.name: (s.name, s.source, s.description) for s in _REGISTRY.values()}
    if not _BUILTINS_LOADED:
        for name, source, description in _builtin_descriptions():
            if name in rows:
                raise UserError(f"strategy {name!r} is registered twice: by {source} and by {rows[name][1]}")
            rows[name] = (name, source, description)
    return [rows[n] for n in sorted(rows)]


def list_strategies() -> list[StrategySpec]:
    """Every registered strategy, built-ins and entry points included, sorted by name."""
    _load_builtins()
    _scan_entry_points()
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]
