"""Fixtures shared across test folders: the fused losses' small problem and the kernel
choice of ``compile=True``."""

import pytest
import torch

from rllc.kernels import cpu_kernels

#: rows, tokens, d_model, vocabulary of ``problem``
R, N, D, V = 6, 50, 16, 37


@pytest.fixture
def problem():
    """Hidden states, unembedding, bias, targets and an upstream gradient in float64."""
    g = torch.Generator().manual_seed(0)
    dt = torch.float64
    h = torch.randn(R, N, D, dtype=dt, generator=g)
    w = torch.randn(V, D, dtype=dt, generator=g)
    b = torch.randn(V, dtype=dt, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    weights = torch.randn(R, dtype=dt, generator=g)  # a non-uniform upstream gradient
    return h, w, b, y, weights


@pytest.fixture(params=["cpu kernel", "inductor"])
def fused_kernel(request, monkeypatch):
    """Which kernel ``compile=True`` takes on the CPU: the hand-written one (the default
    where it builds) or inductor's (the fallback, and the path on other devices)."""
    if request.param == "inductor":
        monkeypatch.setattr(cpu_kernels, "usable", lambda *tensors: False)
    else:
        assert cpu_kernels.available()
    return request.param
