"""lamm_cl/heavy_imports.py: the collector paused while torch, Avalanche and open_clip import."""
import gc

import pytest

from lamm_cl.heavy_imports import collector_paused


@pytest.fixture
def collector_state():
    """Put the collector back as the test found it (conftest leaves it enabled after collection)."""
    was = gc.isenabled()
    yield
    (gc.enable if was else gc.disable)()


def test_the_collector_is_off_inside_and_back_on_after_even_on_an_error(collector_state):
    gc.enable()
    with collector_paused():
        assert not gc.isenabled()
    assert gc.isenabled()
    with pytest.raises(ImportError), collector_paused():
        assert not gc.isenabled()
        raise ImportError("a missing optional module")
    assert gc.isenabled()


def test_a_collector_the_caller_disabled_stays_disabled(collector_state):
    gc.disable()
    with collector_paused():
        assert not gc.isenabled()
    assert not gc.isenabled()


def test_the_runner_and_the_clip_loader_import_inside_it():
    """Where the pause is used: the runner package's heavy imports and open_clip's first import."""
    import inspect

    import lamm_cl.runner
    from lamm_cl.model import clip

    runner_source = inspect.getsource(lamm_cl.runner)
    assert "with collector_paused():" in runner_source
    block = runner_source.split("with collector_paused():", 1)[1].split("\n\n\n", 1)[0]
    assert "import torch" in block and "from lamm_cl.runner.execute import" in block
    assert "import open_clip" in inspect.getsource(clip._open_clip).split("with collector_paused():", 1)[1]
