"""Shared fixtures: the tiny random-weight CLIP and the embedded digits, built once per session."""
from __future__ import annotations

import warnings

import pytest

warnings.filterwarnings("ignore")


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
