"""Hessian traces and ranks (rllc.estimators.curvature) against exact answers.

Ranks are checked on noise-free two-layer linear networks y = W0 x, x ~ N(0, I), whose
population loss is L(A, B) = ½‖B·A − W0‖²_F (widths M → H → N). At a balanced rank-r
factorisation of W0 the Hessian is JᵀJ with J(dA, dB) = B·dA + dB·A, and JJᵀ is the
Kronecker sum (U S Uᵀ) ⊕ (V S Vᵀ) on N×M matrices: eigenvalues s_i + s_j, s_i (×(M − r)),
s_j (×(N − r)) and 0, so the rank is r² + r(M − r) + r(N − r) = r(M + N − r), and every
non-zero eigenvalue is at least min s_i ≥ 1 (a clean gap for the threshold).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import hessian

from rllc.estimators.curvature import (
    EXACT_MAX_DIM,
    exact_hessian,
    hessian_rank,
    hessian_trace,
    hvp_fn,
)


def mlp_loss(seed: int = 0):
    """A tiny tanh MLP's MSE on fixed data as a function of its flat weights (d = 111),
    and a generic (non-minimum) theta0: a non-quadratic loss with an indefinite Hessian."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(64, 3, generator=gen, dtype=torch.float64)
    shapes = [(12, 5), (12,), (3, 12), (3,)]
    sizes = [int(np.prod(s)) for s in shapes]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        w1, b1, w2, b2 = (p.reshape(s) for p, s in zip(theta.split(sizes), shapes, strict=True))
        out = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return 0.5 * ((out - y) ** 2).sum(dim=1).mean()

    theta0 = torch.randn(sum(sizes), generator=gen, dtype=torch.float64)
    return loss, theta0


def dln_problem(m: int, h: int, n: int, r: int, seed: int = 0):
    """½‖B·A − W0‖² over theta = (A[h, m], B[n, h]) flat, at a balanced rank-r factorisation
    of W0 = U S Vᵀ (singular values in [1, 2]); zero rows/columns for the h − r extra units."""
    gen = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(n, r, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, r, generator=gen, dtype=torch.float64))
    s = 1.0 + torch.rand(r, generator=gen, dtype=torch.float64)
    w0 = u @ torch.diag(s) @ v.T  # [n, m]
    a = torch.zeros(h, m, dtype=torch.float64)
    b = torch.zeros(n, h, dtype=torch.float64)
    a[:r] = torch.diag(s.sqrt()) @ v.T
    b[:, :r] = u @ torch.diag(s.sqrt())

    def loss(theta: torch.Tensor) -> torch.Tensor:
        a_, b_ = theta[: h * m].reshape(h, m), theta[h * m :].reshape(n, h)
        return 0.5 * ((b_ @ a_ - w0) ** 2).sum()

    return loss, torch.cat([a.ravel(), b.ravel()]), r * (m + n - r)


def dln_top_eigenvalues(m: int, h: int, n: int, r: int, k: int, seed: int = 0) -> np.ndarray:
    """The k largest eigenvalues of ``dln_problem``'s Hessian from the module docstring's
    spectrum: s_i + s_j (i, j ≤ r), s_i with multiplicity (M − r) + (N − r), then zeros."""
    gen = torch.Generator().manual_seed(seed)
    torch.randn(n, r, generator=gen, dtype=torch.float64)  # replay dln_problem's draws
    torch.randn(m, r, generator=gen, dtype=torch.float64)
    s = (1.0 + torch.rand(r, generator=gen, dtype=torch.float64)).numpy()
    eig = np.concatenate([(s[:, None] + s[None, :]).ravel(), np.repeat(s, m + n - 2 * r)])
    return np.sort(eig)[::-1][:k]


def test_hvp_and_exact_hessian_match_torch_func_hessian():
    loss, theta0 = mlp_loss()
    h_ref = hessian(loss)(theta0)
    h = exact_hessian(loss, theta0)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    assert torch.equal(h, h.T)
    v = torch.randn(3, theta0.numel(), dtype=torch.float64)
    torch.testing.assert_close(hvp_fn(loss, theta0)(v), v @ h_ref, rtol=1e-10, atol=1e-12)
    assert torch.linalg.eigvalsh(h).min() < 0  # indefinite: a real test of |λ|


def test_exact_trace_equals_hessian_trace():
    loss, theta0 = mlp_loss()
    est = hessian_trace(loss, theta0)  # d = 111 ≤ EXACT_MAX_DIM: exact by default
    assert est.exact and est.stderr == 0.0 and est.probes == 0 and est.dim == theta0.numel()
    assert est.value == pytest.approx(float(hessian(loss)(theta0).trace()), rel=1e-12)


def test_hutchinson_agrees_with_exact_trace_within_3_se():
    loss, theta0 = mlp_loss()
    exact = hessian_trace(loss, theta0, exact=True).value
    est = hessian_trace(loss, theta0, exact=False, probes=200, seed=1)
    assert not est.exact and est.probes == 200 and est.stderr > 0
    assert abs(est.value - exact) < 3 * est.stderr
    # the seed fixes the probes
    assert hessian_trace(loss, theta0, exact=False, probes=200, seed=1) == est


@pytest.mark.parametrize("shape", [(5, 4, 5, 2), (6, 3, 4, 1), (8, 5, 7, 3)])
def test_exact_rank_of_linear_network(shape):
    loss, theta0, rank = dln_problem(*shape)
    est = hessian_rank(loss, theta0)
    assert est.exact and est.rank == rank and est.rank_stderr == 0.0
    eig = torch.linalg.eigvalsh(exact_hessian(loss, theta0)).numpy()
    top = eig[np.argsort(-np.abs(eig))[:5]]
    np.testing.assert_allclose(est.top_eigenvalues, top, rtol=1e-10)
    np.testing.assert_allclose(top, dln_top_eigenvalues(*shape, k=5), rtol=1e-10)
    assert est.threshold == pytest.approx(1e-3 * abs(top[0]))


def test_slq_rank_matches_exact_on_a_small_network():
    loss, theta0, rank = dln_problem(8, 5, 7, 3)  # d = 75, rank 36
    est = hessian_rank(loss, theta0, exact=False, probes=8, lanczos_steps=40)
    assert not est.exact and est.probes == 8 and est.lanczos_steps == 40
    assert abs(est.rank - rank) <= 3 * est.rank_stderr + 1
    exact = hessian_rank(loss, theta0, exact=True)
    np.testing.assert_allclose(est.top_eigenvalues, exact.top_eigenvalues, rtol=1e-8)


def test_slq_rank_on_a_network_too_large_for_the_exact_path():
    loss, theta0, rank = dln_problem(40, 30, 40, 5)  # d = 2400, rank 375
    d = theta0.numel()
    assert d > EXACT_MAX_DIM
    est = hessian_rank(loss, theta0, top_k=4)  # stochastic by default at this size
    assert not est.exact and est.dim == d and est.rank_stderr > 0
    assert abs(est.rank - rank) <= 3 * est.rank_stderr + 1
    # top eigenvalues against the known spectrum (cheaper than a dense 2400² Hessian; the
    # exact-path tests check that spectrum against eigvalsh), degenerate pairs included
    ref = dln_top_eigenvalues(40, 30, 40, 5, k=4)
    np.testing.assert_allclose(est.top_eigenvalues, ref, rtol=1e-8)
    assert est.threshold == pytest.approx(1e-3 * abs(ref[0]))


def test_lanczos_breakdown_is_exact():
    """H = diag(1, 1, 2, 0, …): the Krylov space from any v has dimension ≤ 3, so every
    probe breaks down after at most 3 steps and counts vᵀPv for the projector P onto the
    first three coordinates exactly."""
    d = 40
    diag = torch.zeros(d, dtype=torch.float64)
    diag[:3] = torch.tensor([1.0, 1.0, 2.0])

    def loss(theta: torch.Tensor) -> torch.Tensor:
        return 0.5 * (diag * theta**2).sum()

    est = hessian_rank(loss, torch.zeros(d, dtype=torch.float64), exact=False, top_k=2)
    # Rademacher probes: vᵀPv = 3 for every v, so the count is exact with no spread
    assert est.rank == pytest.approx(3.0, abs=1e-9)
    assert est.rank_stderr == pytest.approx(0.0, abs=1e-9)
    assert est.top_eigenvalues == pytest.approx((2.0, 1.0))


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"rank_tol": 0.0}, "rank_tol"),
        ({"rank_tol": 1.0}, "rank_tol"),
        ({"top_k": 0}, "top_k"),
        ({"exact": False, "probes": 1}, "probes"),
        ({"exact": False, "lanczos_steps": 0}, "lanczos_steps"),
    ],
)
def test_bad_rank_arguments_raise(kwargs, name):
    loss, theta0, _ = dln_problem(3, 2, 3, 1)
    with pytest.raises(ValueError, match=name):
        hessian_rank(loss, theta0, **kwargs)


def test_bad_trace_arguments_raise():
    loss, theta0 = mlp_loss()
    with pytest.raises(ValueError, match="probes"):
        hessian_trace(loss, theta0, exact=False, probes=1)
