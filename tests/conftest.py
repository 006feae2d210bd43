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
