"""Fisher traces (rllc.estimators.fisher) against brute-force per-token gradients."""

from __future__ import annotations

import math

import pytest
import torch

from rllc.estimators.fisher import fisher_traces

N, V = 20, 7


def softmax_model(seed: int = 0):
    """A tiny tanh MLP classifier (4 → 6 → V) on N fixed inputs, as logp[N, V] of its flat
    weights (d = 79), with targets drawn from a different model (so the fit is imperfect)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 4, generator=gen, dtype=torch.float64)
    shapes = [(6, 4), (6,), (V, 6), (V,)]
    sizes = [math.prod(s) for s in shapes]

    def logprob(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (p.reshape(s) for p, s in zip(theta.split(sizes), shapes, strict=True))
        return torch.log_softmax(torch.tanh(x @ w1.T + b1) @ w2.T + b2, dim=-1)

    theta0 = torch.randn(sum(sizes), generator=gen, dtype=torch.float64)
    targets = torch.randint(0, V, (N,), generator=gen)
    return logprob, theta0, targets


def brute_force(logprob, theta0, targets):
    """Per-token empirical and exact true Fisher traces by a Python loop of autograd.grad."""
    theta = theta0.clone().requires_grad_(True)
    emp, true = torch.zeros(N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    for t in range(N):
        for y in range(V):
            logp = logprob(theta)
            (g,) = torch.autograd.grad(logp[t, y], theta)
            sq = float(g.pow(2).sum())
            true[t] += float(logp[t, y].detach().exp()) * sq
            if y == int(targets[t]):
                emp[t] = sq
    return emp, true


@pytest.fixture(scope="module")
def problem():
    logprob, theta0, targets = softmax_model()
    return logprob, theta0, targets, *brute_force(logprob, theta0, targets)


def test_empirical_and_exact_true_fisher_match_brute_force(problem):
    logprob, theta0, targets, emp, true = problem
    out = fisher_traces(logprob, theta0, targets, exact_true=True, chunk_size=16)
    e, t = out["empirical"], out["true"]
    assert e.value == pytest.approx(float(emp.mean()), rel=1e-12)
    assert e.stderr == pytest.approx(float(emp.std() / N**0.5), rel=1e-10)
    assert t.value == pytest.approx(float(true.mean()), rel=1e-12)
    assert t.stderr == pytest.approx(float(true.std() / N**0.5), rel=1e-10)
    assert (e.probes, t.probes) == (N, N * V)
    assert not e.exact and not t.exact and e.dim == t.dim == theta0.numel()


def test_monte_carlo_true_fisher_within_3_se(problem):
    logprob, theta0, targets, _, true = problem
    out = fisher_traces(logprob, theta0, targets, true_samples=8, seed=3, chunk_size=32)
    t = out["true"]
    assert t.probes == N * 8 and t.stderr > 0
    assert abs(t.value - float(true.mean())) < 3 * t.stderr
    # seeded, and the chunking does not change the answer
    again = fisher_traces(logprob, theta0, targets, true_samples=8, seed=3, chunk_size=7)
    assert again["true"].value == pytest.approx(t.value, rel=1e-12)
    assert again["empirical"].value == pytest.approx(out["empirical"].value, rel=1e-12)


def test_bad_arguments_raise(problem):
    logprob, theta0, targets, *_ = problem
    with pytest.raises(ValueError, match="true_samples"):
        fisher_traces(logprob, theta0, targets, true_samples=0)
    with pytest.raises(ValueError, match="chunk_size"):
        fisher_traces(logprob, theta0, targets, chunk_size=0)
    with pytest.raises(ValueError, match="targets"):
        fisher_traces(logprob, theta0, targets[:-1])
