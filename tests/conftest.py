"""Shared fixtures (tests/README.md lists them): the tiny random-weight CLIP and the embedded digits, built
once per session; a folder of test strategies with a session-wide feature cache for `lamm-cl run` tests;
no report after in-process runs, or a report without its figures; and, for the whole session, no network
and a private feature cache."""
from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore")


def _strategies_from_mutants_copy() -> None:
    """Under mutmut (tests/README.md), import lamm_cl.strategies from the mutated copy as ``strategies``.

    mutmut 3 copies lamm_cl/ and strategies/ into mutants/, runs this suite there with mutants/ first on
    sys.path, and names the mutants of strategies/lamm.py ``strategies.lamm.*``; a mutant switches on only
    in a module of that name. The package installs as lamm_cl.strategies (a package-dir mapping) which an
    editable install would even take from the original folder: so here lamm_cl.strategies.X *is* the
    module strategies.X of the copy.
    """
    import importlib
    import importlib.abc
    import importlib.util
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if root.name != "mutants" or not (root / "strategies" / "__init__.py").is_file():
        return
    import lamm_cl

    if Path(lamm_cl.__file__).resolve().parent != root / "lamm_cl":
        return
    prefix = "lamm_cl.strategies."

    class Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, fullname, path=None, target=None):
            return importlib.util.spec_from_loader(fullname, self) if fullname.startswith(prefix) else None

        def create_module(self, spec):
            return importlib.import_module("strategies." + spec.name[len(prefix):])

        def exec_module(self, module):
            pass  # imported under its own name already

    sys.meta_path.insert(0, Alias())
    package = importlib.import_module("strategies")
    sys.modules["lamm_cl.strategies"] = package
    lamm_cl.strategies = package


_strategies_from_mutants_copy()


class NetworkBlocked(RuntimeError):
    """A test tried to open a connection off this machine. Not an OSError, so no download code swallows it."""


def _is_local(sock, address) -> bool:
    import ipaddress
    import socket

    if sock.family not in (socket.AF_INET, socket.AF_INET6) or sock.type != socket.SOCK_STREAM:
        return True
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def offline_guard(original):
    """``original`` (a socket's connect or connect_ex), refusing every TCP connection off this machine."""
    def connect(self, address):
        if not _is_local(self, address):
            raise NetworkBlocked(f"tests run offline; a connection to {address!r} was refused")
        return original(self, address)
    connect.offline_guard = True  # lets a test see the guard is in place
    return connect


def _offline_only() -> None:
    """Refuse every TCP connection that leaves the machine, for the whole session: the suite must run
    offline (no dataset or weight download, whatever a bug in the code under test asks for). Loopback
    and Unix sockets (Ray, submitit, wandb's offline service) stay open; UDP ``connect`` sends nothing
    (Ray uses it to learn its own address) and is left alone."""
    import os
    import socket

    socket.socket.connect = offline_guard(socket.socket.connect)
    socket.socket.connect_ex = offline_guard(socket.socket.connect_ex)
    # The guard lives in this process only. A Ray the tests start runs its own daemons, and even without the
    # dashboard one of them (UsageStatsHead) posts usage data to https://usage-stats.ray.io/ a minute after
    # start, unless this variable, which its daemons inherit, says no (ray/_common/usage/usage_lib.py,
    # _usage_stats_enabledness): a slow machine keeps the Ray test's cluster up that long.
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"


_offline_only()


def _one_thread_per_xdist_worker() -> None:
    """Under pytest-xdist (``-n 2``, the README's command), one torch thread per worker and in every process
    a worker starts. Two workers of two threads each on two cores spin in each other's way: the suite's
    small tensors then run several times slower. Set before torch is imported (it reads OMP_NUM_THREADS
    once); children inherit it, so a `lamm-cl` child and its parent still reduce floats alike."""
    import os
    import sys

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
    if "torch" in sys.modules:  # a plugin imported it first
        sys.modules["torch"].set_num_threads(1)


_one_thread_per_xdist_worker()


@pytest.hookimpl(hookwrapper=True)
def pytest_collection(session):
    """No garbage collection while the test modules import torch, Avalanche and open_clip, then the heap they
    built frozen (gc.freeze): the collector would otherwise walk those millions of long-lived objects ~14
    times during collection and again at every full collection in the tests (seconds per worker, measured)."""
    import gc

    gc.disable()
    try:
        yield
    finally:
        gc.collect()
        gc.freeze()
        gc.enable()

# With `-n 2 --dist loadgroup`, the tests of one group run on one worker, so a module's module-scoped
# fixture (a trained model, a finished run) is built once, not once per worker: every module that defines
# one is its own group (found in its source, see _xdist_group), and modules that share work are listed
# here: test_quickstart reads the tinyworld features test_learning_signal extracts into the session's
# store. Any other test goes to whichever worker is free (test_sweep's long runs among them).
XDIST_GROUPS = {"test_learning_signal": "tinyworld", "test_quickstart": "tinyworld"}


def _xdist_group(module) -> str | None:
    """The xdist group of a test module: :data:`XDIST_GROUPS`, else its own name when it defines a
    module-scoped fixture, else None (its tests go to any worker)."""
    import inspect

    name = getattr(module, "__name__", "").rpartition(".")[2]
    try:
        source = inspect.getsource(module)
    except (OSError, TypeError):
        source = ""
    return _group_of(name, source)


def _group_of(name: str, source: str) -> str | None:
    """:func:`_xdist_group` of the test module ``name`` whose source is ``source``."""
    if name in XDIST_GROUPS:
        return XDIST_GROUPS[name]
    return name if 'scope="module"' in source or "scope='module'" in source else None


def _long_first(items: list, groups: dict) -> list:
    """``items`` with the `integration` tests (the end-to-end runs, seconds each) first, else in their order.

    pytest-xdist hands out work in collection order, a group where its first test stands: long work handed
    out last leaves the other worker idle at the end. A module in an xdist group moves whole (its
    module-scoped fixture is built once only while its tests stay together) when any of its tests is long.
    """
    long_modules = {item.module for item in items
                    if groups.get(item.module) and item.get_closest_marker("integration")}

    def is_long(item) -> bool:
        return item.module in long_modules or item.get_closest_marker("integration") is not None

    return [item for item in items if is_long(item)] + [item for item in items if not is_long(item)]


@pytest.hookimpl(optionalhook=True)  # a hook of xdist's: unknown under -p no:xdist
def pytest_xdist_make_scheduler(config, log):
    """Under ``--dist loadgroup``, xdist's scheduler with each test's group read from its file (:func:`_xdist_group`
    on the module's name and source) instead of from the ``@group`` suffix xdist 3.8 writes into
    ``item._nodeid``: pytest 9 reads a node's id from ``item._id``, so that suffix is lost, every test is its
    own group, and a module's module-scoped fixture was built once on each worker (twice the training)."""
    if config.getvalue("dist") != "loadgroup":
        return None  # xdist's own schedulers
    import functools
    from pathlib import Path

    from xdist.scheduler import LoadScopeScheduling

    @functools.cache
    def group_of(path: str) -> str | None:
        file = Path(config.rootpath) / path
        return _group_of(file.stem, file.read_text()) if file.suffix == ".py" and file.is_file() else None

    class FileGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            nodeid = nodeid.rpartition("@")[0] or nodeid  # as xdist's own, should the suffix come back
            return group_of(nodeid.split("::", 1)[0]) or nodeid

    return FileGroups(config, log)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the xdist_group marks
def pytest_collection_modifyitems(config, items):
    """Deselect the `slow` tests unless the -m expression names them (`-m slow`), so that any other
    expression (`-m "not integration"`, the fast set) still leaves them out. Not `addopts = -m 'not slow'`:
    a second -m on the command line would replace it. Then mark each test of its xdist group
    (:func:`_xdist_group`) and put the long ones first (:func:`_long_first`)."""
    groups: dict = {}
    for item in items:
        module = item.module
        if module not in groups:
            groups[module] = _xdist_group(module)
        group = groups[module]
        if group:
            item.add_marker(pytest.mark.xdist_group(group))
    items[:] = _long_first(items, groups)
    if "slow" in (config.getoption("markexpr") or ""):
        return
    slow = [item for item in items if item.get_closest_marker("slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("slow")]


@pytest.fixture(scope="session")
def tiny_clip():
    from lamm_cl.model.clip import build_clip

    return build_clip("lamm-tiny", "none", "cpu")


@pytest.fixture(scope="session")
def digits():
    from lamm_cl.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session", autouse=True)
def _private_feature_cache(tmp_path_factory):
    """Keep the on-disk feature store of every test run out of the user's own cache folder."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


# the test strategies of the run tests (resume, results folder): a plugin file written by run_env
PLUGIN = '''
"""Test strategies: LAMM with a small replay buffer, and LAMM whose training loss is NaN."""
import dataclasses

from lamm_cl.registry import get_strategy, register_strategy
from lamm_cl.strategy_kit.context import StrategyContext

LAMM = get_strategy("lamm")


@register_strategy("lamm_replay", options=LAMM.options)
def build_replay(ctx: StrategyContext, opts):
    """LAMM with Avalanche replay (30 samples)."""
    return LAMM.build(ctx, dataclasses.replace(opts, plugins=[{"name": "replay", "mem_size": 30}]))


@register_strategy("nan_loss", options=LAMM.options)
def build_nan(ctx: StrategyContext, opts):
    """LAMM whose training loss is NaN."""
    template = LAMM.build(ctx, opts)
    criterion = template.criterion
    template.criterion = lambda: criterion() * float("nan") if template.is_training else criterion()
    return template
'''


@pytest.fixture(scope="session")
def feature_store(_private_feature_cache):
    """The session's feature store: the default one (``$XDG_CACHE_HOME/lamm-cl/features``, under the private
    folder above). The runs of digits on the tiny CLIP in many modules point at it (their ``features.cache_dir``
    or the default), so digits' 1,797 images are encoded once per xdist worker, not once per module. A test
    whose claim is about encoding (counts, locks, keys) keeps a store of its own."""
    from lamm_cl.features.store import default_cache_dir

    return default_cache_dir()


@pytest.fixture(scope="session")
def run_env(tmp_path_factory):
    """A folder with the test strategies (:data:`PLUGIN`): builders.write_digits_config points a config at
    them and at the session's feature store (:func:`feature_store`)."""
    root = tmp_path_factory.mktemp("reliability")
    (root / "test_strategies.py").write_text(PLUGIN)
    return root


@pytest.fixture
def no_report(monkeypatch):
    """Skip the report and plots after in-process runs (seconds of matplotlib each; tested elsewhere).
    Module-scoped fixtures are set up before it: their runs do build their reports."""
    import lamm_cl.report

    monkeypatch.setattr(lamm_cl.report, "build_report", lambda *a, **k: [])


@pytest.fixture
def no_plots(monkeypatch):
    """Reports without drawing (builders.record_plots): the report's text and tables are written, no figure
    is drawn or saved. Returns the record of the figures asked for, ``(figure function, file name, formats)``."""
    from builders import record_plots

    return record_plots(monkeypatch)
