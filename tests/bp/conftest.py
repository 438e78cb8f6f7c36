"""Shared fixtures and samplers for the ffint8.bp tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Single-threaded: these tests run many small ops, where OpenMP fork/join on a busy 2-core
    machine costs more than the work (see tests/quant/conftest.py)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def sample(kind: str, n: int, seed: int) -> torch.Tensor:
    """n float32 draws: "gauss" N(0, 1), "laplace" (scale 1), "t2" Student-t with 2 degrees of
    freedom (infinite variance: a sharp, long-tailed gradient)."""
    g = torch.Generator().manual_seed(seed)
    if kind == "gauss":
        return torch.randn(n, generator=g)
    u = torch.rand(n, generator=g).clamp_min(1e-12)
    if kind == "laplace":
        sign = torch.randint(0, 2, (n,), generator=g) * 2 - 1
        return -u.log() * sign
    if kind == "t2":  # z / sqrt(chi2_2 / 2), and chi2_2 = -2 log U
        return torch.randn(n, generator=g) / (-u.log()).sqrt()
    raise ValueError(kind)


@pytest.fixture
def draw():
    """The sampler above, as a fixture (test modules cannot import conftest reliably)."""
    return sample
