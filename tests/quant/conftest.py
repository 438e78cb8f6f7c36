"""Shared fixtures for the ffint8.quant tests."""

import pytest


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here single-threaded (tests/conftest.py says why)."""
