"""The rank-k LayerNorm + unembedding loss equals LayerNorm, then the dense loss."""

import pytest
import torch
import torch.nn.functional as F

from rllc.models.lowrank_unembed import lowrank_cross_entropy

#: rows, tokens, d_model, vocabulary (those of conftest's ``problem``), head size, heads
R, N, D, V, K, H = 6, 50, 16, 37, 4, 3


def reference(h, w, b, y):
    return torch.stack([F.cross_entropy(h[r] @ w.T + (0 if b is None else b), y[r] if y.dim()
                                        == 2 else y) for r in range(h.shape[0])])


@pytest.mark.parametrize("layer_norm", [True, False])
def test_lowrank_cross_entropy_equals_layer_norm_then_unembed(problem, layer_norm):
    """logits = LN(base_h + z·W_Oᵀ)·W_Uᵀ + b_U, rows head-major, via the rank-k identity."""
    _, w, b, y, weights = problem
    g = torch.Generator().manual_seed(2)
    dt = torch.float64
    C = R // H
    resid_star = torch.randn(N, D, dtype=dt, generator=g)
    zs = torch.randn(H, N, K, dtype=dt, generator=g)  # each head's frozen output
    wo_star = torch.randn(H, D, K, dtype=dt, generator=g)
    z = torch.randn(R, N, K, dtype=dt, generator=g).requires_grad_(True)
    wo = torch.randn(R, D, K, dtype=dt, generator=g).requires_grad_(True)
    gain = torch.rand(D, dtype=dt, generator=g) + 0.5
    bias_ln = torch.randn(D, dtype=dt, generator=g)
    head = torch.arange(R) // C
    base = resid_star[None] - zs @ wo_star.transpose(1, 2)  # [H, N, D]
    resid = base[head] + z @ wo.transpose(1, 2)  # [R, N, D]
    if layer_norm:
        hidden = F.layer_norm(resid, (D,), gain, bias_ln, eps=1e-5)
        mu = resid.mean(-1)
        sigma = (resid.var(-1, unbiased=False) + 1e-5).sqrt()
        u_prime, c = gain[:, None] * w.T, bias_ln @ w.T + b
    else:
        hidden = resid
        mu, sigma = torch.zeros(R, N, dtype=dt), torch.ones(R, N, dtype=dt)
        u_prime, c = w.T.clone(), b
    ref = reference(hidden, w, b, y)
    fast = lowrank_cross_entropy(z, mu, sigma, wo.transpose(1, 2) @ u_prime, resid_star,
                                 u_prime, c, zs, wo_star.transpose(1, 2) @ u_prime, y, chunk=9)
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)
    g_fast = torch.autograd.grad((fast * weights).sum(), (z, wo), retain_graph=True)
    g_ref = torch.autograd.grad((ref * weights).sum(), (z, wo))
    for a, b_ in zip(g_fast, g_ref, strict=True):
        torch.testing.assert_close(a, b_, rtol=1e-10, atol=1e-12)


def lowrank_problem(dt=torch.float32):
    """A last-layer head problem of the rank-k loss near w*: rows perturb their head's
    frozen output and W_O by ~1%, as SGLD draws do."""
    g = torch.Generator().manual_seed(3)
    C = R // H
    resid_star = torch.randn(N, D, dtype=dt, generator=g)
    zs = torch.randn(H, N, K, dtype=dt, generator=g)
    wo_star = torch.randn(H, D, K, dtype=dt, generator=g)
    head = torch.arange(R) // C
    z = zs[head] + 0.01 * torch.randn(R, N, K, dtype=dt, generator=g)
    wo = wo_star[head] + 0.01 * torch.randn(R, D, K, dtype=dt, generator=g)
    resid = resid_star[None] - (zs @ wo_star.transpose(1, 2))[head] + z @ wo.transpose(1, 2)
    mu, sigma = resid.mean(-1), (resid.var(-1, unbiased=False) + 1e-5).sqrt()
    w = torch.randn(V, D, dtype=dt, generator=g)
    u_prime, c = w.T.contiguous(), torch.randn(V, dtype=dt, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    m = (wo.transpose(1, 2) @ u_prime).requires_grad_(True)
    z = z.requires_grad_(True)
    return (z, mu, sigma, m, resid_star, u_prime, c, zs, wo_star.transpose(1, 2) @ u_prime, y)


def test_bfloat16_lowrank_rounds_only_the_heads_terms():
    """bf16 operands on (zs | z − zs)·(M − Ms; M): the error scales with the head's terms,
    not with the logits, so losses stay within 1e-3 of float32 (the dense bf16 path rounds
    whole logits, ≈ 2⁻⁹·|logit|)."""
    args = lowrank_problem()
    exact = lowrank_cross_entropy(*args, chunk=16)
    low = lowrank_cross_entropy(*args, chunk=16, precision="bfloat16")
    torch.testing.assert_close(low, exact, rtol=0, atol=1e-3)
    g1 = torch.autograd.grad(exact.sum(), args[0])[0]
    g2 = torch.autograd.grad(low.sum(), args[0])[0]
    assert (g1 - g2).norm() < 0.02 * g1.norm()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_compiled_lowrank_equals_eager(fused_kernel, precision):
    args = lowrank_problem()
    # ragged last chunk: padded for inductor's static shapes
    eager = lowrank_cross_entropy(*args, chunk=16, precision=precision)
    compiled = lowrank_cross_entropy(*args, chunk=16, precision=precision, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)
    for a, b in zip(torch.autograd.grad(eager.sum(), (args[0], args[3])),
                    torch.autograd.grad(compiled.sum(), (args[0], args[3])), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
