"""Fixtures shared by the whole suite."""

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test single-threaded, restoring the thread count afterwards: tests of many small
    ops (convolutions, tiny GEMMs) where an OpenMP fork/join on a busy 2-core machine costs more
    than the work. Modules opt in with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`
    (tests/quant and tests/bp do it in their conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def two_torch_threads():
    """Run a test with two threads, as training runs, restoring the thread count afterwards: some
    oneDNN kernels were wrong only with more than one (tests/quant/test_conv*.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)
