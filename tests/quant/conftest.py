"""Shared fixtures for the ffint8.quant tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Run each quant test single-threaded, restoring the thread count afterwards.

    These tests do many small GEMMs and element-wise passes (the float-exact kernel alone runs
    K / FLOAT_EXACT_K (1,024) tiny GEMMs); on a busy 2-core machine each OpenMP fork/join of such
    an op was measured at 8-16 ms against microseconds single-threaded. Results are exact either
    way.
    """
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
