"""The chunked fused losses equal plain cross-entropy, values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from rllc.kernels import cpu_kernels
from rllc.kernels.fused_ce import (
    int8_linear_cross_entropy,
    int8_unembedding,
    int8_weights,
    linear_cross_entropy,
    quantize_int8,
)


def reference(h, w, b, y):
    return torch.stack([F.cross_entropy(h[r] @ w.T + (0 if b is None else b), y[r] if y.dim()
                                        == 2 else y) for r in range(h.shape[0])])


@pytest.mark.parametrize("chunk", [7, 50, 1000])  # ragged, exact, larger than all tokens
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_cross_entropy_matches_cross_entropy(problem, chunk, with_bias):
    h, w, b, y, weights = problem
    b = b if with_bias else None
    h1 = h.clone().requires_grad_(True)
    h2 = h.clone().requires_grad_(True)
    fused = linear_cross_entropy(h1, w, b, y, chunk)
    ref = reference(h2, w, b, y)
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    (g1,) = torch.autograd.grad((fused * weights).sum(), h1)
    (g2,) = torch.autograd.grad((ref * weights).sum(), h2)
    torch.testing.assert_close(g1, g2, rtol=1e-12, atol=1e-12)


def test_per_row_targets_and_no_grad(problem):
    h, w, b, _, _ = problem
    (R, N, _), V = h.shape, w.shape[0]
    y = torch.randint(0, V, (R, N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fused = linear_cross_entropy(h, w, b, y, 9)
    torch.testing.assert_close(fused, reference(h, w, b, y), rtol=1e-12, atol=1e-12)


def test_non_finite_hidden_state_gives_non_finite_row(problem):
    h, w, b, y, _ = problem
    h = h.clone()
    h[2, 5, 0] = float("inf")
    loss = linear_cross_entropy(h, w, b, y, 8)
    assert not torch.isfinite(loss[2])
    assert torch.isfinite(loss[[0, 1, 3, 4, 5]]).all()


def test_bfloat16_matmuls_stay_close(problem):
    h, w, b, y, _ = problem
    h, w, b = h.float(), w.float(), b.float()
    h1 = h.clone().requires_grad_(True)
    h2 = h.clone().requires_grad_(True)
    exact = linear_cross_entropy(h1, w, b, y, 8)
    low = linear_cross_entropy(h2, w, b, y, 8, precision="bfloat16")
    # bf16 operands (8-bit mantissa) on logits of size ~|h||w| ≈ 16: per-token error
    # ≈ 0.05, averaged over 50 tokens
    torch.testing.assert_close(low, exact, rtol=0, atol=0.03)
    (g1,) = torch.autograd.grad(exact.sum(), h1)
    (g2,) = torch.autograd.grad(low.sum(), h2)
    assert (g1 - g2).norm() < 0.02 * g1.norm()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_compiled_kernels_equal_eager(problem, fused_kernel, precision):
    h, w, b, y, _ = problem
    h = h.float().requires_grad_(True)
    w, b = w.float(), b.float()
    eager = linear_cross_entropy(h, w, b, y, 16, precision=precision)
    compiled = linear_cross_entropy(h, w, b, y, 16, precision=precision, compile=True)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    (g1,) = torch.autograd.grad(eager.sum(), h)
    (g2,) = torch.autograd.grad(compiled.sum(), h)
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)


def test_default_chunk_follows_the_kernel(monkeypatch):
    """The CPU kernel's blocks where it is built (made so here whether or not it can be),
    inductor's everywhere else."""
    from rllc.kernels.fused_ce import COMPILED_CHUNK, DEFAULT_CHUNK, default_chunk

    assert default_chunk(5000, compile=False) == DEFAULT_CHUNK
    monkeypatch.setattr(cpu_kernels, "available", lambda: True)
    assert default_chunk(5000, compile=True, device="cpu") == (1 << 24) // 5000  # CPU kernel
    assert default_chunk(200_000, compile=True, device="cpu") == COMPILED_CHUNK  # at least
    assert default_chunk(5000, compile=True, device="cuda") == COMPILED_CHUNK  # inductor
    monkeypatch.setattr(cpu_kernels, "available", lambda: False)
    assert default_chunk(5000, compile=True, device="cpu") == COMPILED_CHUNK


def int8_problem(seed=0, R=4, N=300, D=64, V=2001):
    """A reference point h* [N, D] and an unembedding of the size where rounding shows."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, D, generator=g) * 0.3
    b = torch.randn(V, generator=g) * 0.1
    h_ref = torch.randn(N, D, generator=g)
    y = torch.randint(0, V, (N,), generator=g)
    moves = torch.randn(R, N, D, generator=g)
    return w, b, h_ref, y, moves


def test_quantize_int8_rounds_to_the_nearest_step():
    x = torch.randn(7, 33, generator=torch.Generator().manual_seed(1))
    x[3] = 0.0  # an all-zero slice: scale 0, no NaN
    for dim in (0, 1):
        q, scale = quantize_int8(x, dim)
        assert q.dtype == torch.int8 and q.abs().max() <= 127
        back = q.float() * scale.unsqueeze(dim)
        assert ((back - x).abs() <= scale.unsqueeze(dim) / 2 + 1e-7).all()
    assert quantize_int8(x, 1)[1][3] == 0


def test_int8_loss_at_the_reference_is_the_bfloat16_loss():
    """At h = h* the δ product is zero: the loss is the reference's, whose logits take bf16
    operands like ``precision="bfloat16"``."""
    w, b, h_ref, y, _ = int8_problem()
    ref = int8_unembedding(h_ref, int8_weights(w), b)
    at_ref = int8_linear_cross_entropy(h_ref.expand(3, -1, -1), w, b, y, ref, chunk=128)
    bf16 = linear_cross_entropy(h_ref[None], w, b, y, 128, precision="bfloat16")
    torch.testing.assert_close(at_ref, bf16.expand(3), rtol=1e-6, atol=0)


@pytest.mark.parametrize("scale", [1e-2, 1e-1])
def test_int8_differences_from_the_reference_are_closer_to_exact_than_bfloat16(scale):
    """What the estimators use is L(w) − L(w*): int8 rounding acts on h − h* and
    softmax − softmax* only, so it is far closer to the float64 difference than bf16,
    which rounds h itself (relative errors of the largest difference, measured: 1.6e-2
    against 0.36 at scale 1e-2, 5.2e-3 against 1.6e-2 at 1e-1)."""
    w, b, h_ref, y, moves = int8_problem()
    ref = int8_unembedding(h_ref, int8_weights(w), b)
    h = h_ref + scale * moves

    def diff(prec):
        if prec == "int8":
            f = lambda x: int8_linear_cross_entropy(x, w, b, y, ref, chunk=128)  # noqa: E731
        elif prec == "float64":
            f = lambda x: linear_cross_entropy(x.double(), w.double(), b.double(), y)  # noqa: E731
        else:
            f = lambda x: linear_cross_entropy(x, w, b, y, 128, precision=prec)  # noqa: E731
        return f(h).double() - f(h_ref[None]).double()

    exact = diff("float64")
    err = {p: float((diff(p) - exact).abs().max() / exact.abs().max())
           for p in ("int8", "bfloat16")}
    assert err["int8"] < 2.5e-2 and err["int8"] < err["bfloat16"] / 2.5, err


def int8_moved(scale=1e-2):
    """``int8_problem`` with h = h* + scale·moves and a random upstream gradient."""
    w, b, h_ref, y, moves = int8_problem()
    ref = int8_unembedding(h_ref, int8_weights(w), b)
    h = (h_ref + scale * moves).requires_grad_(True)
    weights = torch.rand(h.shape[0], generator=torch.Generator().manual_seed(2))

    def int8_loss(x):
        return int8_linear_cross_entropy(x, w, b, y, ref, chunk=97)

    def exact_loss(x):
        return linear_cross_entropy(x, w.double(), b.double(), y)

    def loss_and_grad(x, f):
        lo = f(x)
        return lo, torch.autograd.grad((lo * weights.to(lo.dtype)).sum(), x)[0]

    return h, int8_loss, exact_loss, loss_and_grad


@pytest.mark.parametrize("kernel", ["as built", "torch"])
def test_int8_gradients_stay_close(monkeypatch, kernel):
    """With the CPU kernel where it is built (else torch), and with torch's passes."""
    if kernel == "torch":
        monkeypatch.setattr(cpu_kernels, "usable", lambda *tensors: False)
    h, int8_loss, exact_loss, loss_and_grad = int8_moved()
    fast = loss_and_grad(h, int8_loss)
    exact = loss_and_grad(h.detach().double().requires_grad_(True), exact_loss)
    # the gradient's softmax·W part is bf16 at h* (g*) plus an int8 Δp·W
    assert (fast[1].double() - exact[1]).norm() < 1e-2 * exact[1].norm()


@pytest.mark.usefixtures("cpu_kernels_built")
def test_int8_cpu_kernel_equals_torch(monkeypatch):
    h, int8_loss, _, loss_and_grad = int8_moved()
    fast = loss_and_grad(h, int8_loss)
    monkeypatch.setattr(cpu_kernels, "usable", lambda *tensors: False)
    eager = loss_and_grad(h, int8_loss)
    torch.testing.assert_close(fast[0], eager[0], rtol=1e-6, atol=1e-6)
    # Δp's int8 rounding can fall either side of a tie: one step in a few entries
    assert (fast[1] - eager[1]).norm() < 1e-3 * eager[1].norm()


def test_int8_loss_refuses_a_reference_of_other_tokens():
    w, b, h_ref, y, moves = int8_problem(N=20, V=50)
    ref = int8_unembedding(h_ref, int8_weights(w), b)
    with pytest.raises(ValueError, match="reference"):
        int8_linear_cross_entropy(moves[:, :10], w, b, y[:10], ref)
    with pytest.raises(ValueError, match="targets"):
        int8_linear_cross_entropy(moves, w, b, y.expand(4, -1), ref)
