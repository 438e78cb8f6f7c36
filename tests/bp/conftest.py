"""Shared fixtures and samplers for the ffint8.bp tests."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread(one_torch_thread):
    """Every test here single-threaded (tests/conftest.py says why)."""


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


class Recorder:
    """Wraps a GradQuantizer and keeps the operands it returned (the ones the GEMMs or
    convolutions then use)."""

    def __init__(self, inner):
        self.inner = inner
        self.ops = None

    def __call__(self, g, weight_distance, seeds):
        self.ops = self.inner(g, weight_distance, seeds)
        return self.ops


@pytest.fixture
def recorder():
    """The Recorder class, as a fixture (test modules cannot import conftest reliably)."""
    return Recorder
