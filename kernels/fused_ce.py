"""Chunked fused linear + cross-entropy: per-row mean loss and its input gradients without
ever holding [tokens, vocab] logits.

For rows r (e.g. SGLD chains × heads), tokens t < N, targets y_t and an unembedding
W [V, D], b [V]:

    ℓ_rt = logsumexp_v(z_rtv) − z_rt,y_t,   z_rt = h_rt·Wᵀ + b          (per-token loss)
    L_r  = (1/N)·Σ_t ℓ_rt                                             (what is returned)
    ∂L_r/∂h_rt = (1/N)·(softmax(z_rt) − onehot(y_t))·W

Both are computed per chunk of tokens in the forward pass, so each [chunk, V] block of
logits is written, reduced and multiplied back while it is still in cache (the idea of
Liger Kernel's FusedLinearCrossEntropy and of Cut Cross-Entropy); backward only rescales
the stored gradient by the incoming per-row gradient. Gradients flow to the hidden states
only: the unembedding is frozen (weight-refined sampling never moves it).

The rank-k form for last-layer heads (``rllc.models.lowrank_unembed``) takes its
vocabulary-wide block from here too: ``lowrank_block_kernel``.

``int8_linear_cross_entropy`` is the first loss (``linear_cross_entropy``) taken as a
difference from a reference point h* (w*'s hidden states on the same tokens; SGLD rows
stay near w*):

    z_r = z* + δ_r·Wᵀ,   δ_r = h_r − h*
    Σ_v softmax_rv·W_v = g* + Δp_r·W,   Δp_r = softmax(z_r) − p*

with z* = h*·Wᵀ + b (bf16 operands), p* = softmax(z*) and g* = p*·W computed once per
minibatch, and both products over the rows in int8 (``torch._int_mm``, int32
accumulation; δ and Δp scaled per token, W per vocabulary row and per column): twice the
bf16 rate on CPUs with int8 dot products (VNNI), and rounding that acts on what moved (δ,
Δp), not on h and the softmax. The per-row losses' differences from the reference, which
are what λ̂ measures, come out closer to float64 than bf16's (test: 1.6·10⁻² against
0.36 relative at |δ| ≈ 10⁻²|h|, 5·10⁻³ against 1.6·10⁻² at 10⁻¹|h|).

``compile=True`` fuses each block's vocabulary-wide passes (max, exp, sums, casts): on the
CPU, for float32 models, in one hand-written kernel per logit row (``cpu_kernels``, 2.5–3×
faster than inductor's, which streams the block from memory once per reduction); elsewhere,
or where that kernel does not build, with ``torch.compile``.

Non-finite values are not checked on the logits: a non-finite per-token loss makes its
row's mean non-finite, which the sampler records as a diverged chain.

Neither Function has a vmap rule: they are called on explicitly batched tensors (rows as a
leading dim) under plain autograd, not inside ``torch.func`` transforms.
"""

from __future__ import annotations

import functools
import os
import shutil
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd import Function

from . import cpu_kernels
from .precision import Precision, parse_precision

#: Token rows per chunk without fused kernels: [chunk, V] fp32 blocks of ~1–3 MB stay in a
#: core's L2 cache.
DEFAULT_CHUNK = 128
#: Token rows per chunk with inductor's fused kernels.
COMPILED_CHUNK = 512
#: Logits per [chunk, V] block with the CPU kernel, which keeps one row in cache whatever
#: the block's size, so larger blocks only make fewer, more efficient matmuls: on the
#: paper-shaped model (V = 5000) 128 / 512 / 4096 tokens took 138 / 130 / 120 ms per
#: layer-0 row-step.
CPU_KERNEL_BLOCK = 1 << 24
#: Matmul precisions of the dense and rank-k losses (int8 has its own loss,
#: ``int8_linear_cross_entropy``): bf16 operands with fp32 accumulation, or exact.
MATMUL_PRECISIONS = (Precision.FLOAT32, Precision.BFLOAT16)


def matmul_precision(precision: str | Precision) -> Precision:
    """``precision`` as one of the dense and rank-k losses takes (float32 or bfloat16); ``ValueError``
    otherwise (int8 has its own loss, and no rank-k form)."""
    precision = parse_precision(precision)
    if precision not in MATMUL_PRECISIONS:
        raise ValueError(f"precision {precision.value!r} has no form in this loss; use one "
                         f"of {', '.join(p.value for p in MATMUL_PRECISIONS)}")
    return precision


def _ce_chunk(h: Tensor, w: Tensor, w_t: Tensor, b: Tensor | None,
              need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """The vocabulary-wide part of one chunk: h [c, D], w [V, D] and its contiguous
    transpose w_t [D, V] in the matmul dtype (each product reads its operand row-major).

        lse_t = m_t + log s_t,   m_t = max_v z_tv,   e_tv = exp(z_tv − m_t),   s_t = Σ_v e_tv
        g_t = Σ_v softmax_tv·W_v = (Σ_v e_tv·W_v)/s_t

    Returns (lse [c], g [c, D] or None); the target terms (z_t,y_t and W_{y_t}) are the
    caller's. The [c, V] block is written by the first matmul, read for the max, read once
    more to write e (in the matmul dtype) and sum it, and read by the second matmul; the
    softmax normalisation acts on the small [c, D] result instead.
    """
    z = h.to(w.dtype) @ w_t  # [c, V]
    z = z.to(h.dtype) if b is None else z.to(h.dtype) + b
    m = z.amax(1, keepdim=True)  # [c, 1]
    e = (z - m).exp()  # [c, V]
    s = e.sum(1, keepdim=True)  # [c, 1]
    lse = (m + s.log()).squeeze(1)
    if not need_grad:
        return lse, None
    return lse, (e.to(w.dtype) @ w).to(h.dtype) / s


def _ce_chunk_cpu(h: Tensor, w: Tensor, w_t: Tensor, b: Tensor | None,
                  need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``_ce_chunk`` with its vocabulary-wide passes in one ``cpu_kernels.softmax_rows``."""
    lse, _, s, e, _, _ = cpu_kernels.softmax_rows(h.to(w.dtype) @ w_t, c=b)  # e: mm dtype
    if not need_grad:
        return lse.to(h.dtype), None
    return lse.to(h.dtype), (e @ w).to(h.dtype) / s[:, None].to(h.dtype)


@functools.cache
def _compiled(fn):
    """``fn`` compiled with static shapes (the last chunk is padded, so one kernel serves a
    whole run). Inductor fuses a chunk's elementwise passes (max, exp, sum, scale, casts);
    compiling takes seconds once per shape and is cached on disk."""
    compiled = torch.compile(fn, dynamic=False)
    # one specialisation per (chunk, D, V, dtype, device): allow a few more than dynamo's 8
    return torch._dynamo.config.patch(recompile_limit=32)(compiled)


def _fused_kernel(compile: bool, cpu_fn, torch_fn, x: Tensor, *operands: Tensor):
    """The kernel a loss's chunks take, and whether it needs one static shape: with
    ``compile``, ``cpu_fn`` where the CPU kernel serves (a float32 model's ``x`` and the
    ``operands`` on the CPU), else ``torch_fn`` compiled by inductor; eager ``torch_fn``
    without."""
    if not compile:
        return torch_fn, False
    if x.dtype == torch.float32 and cpu_kernels.usable(x, *operands):
        return cpu_fn, False
    return _compiled(torch_fn), True


# one object per kernel, so that _compiled's cache holds one compiled function each
_CHUNK_KERNELS = {
    (kind, need_grad): functools.partial(fn, need_grad=need_grad)
    for kind, fn in (("torch", _ce_chunk), ("cpu", _ce_chunk_cpu))
    for need_grad in (False, True)
}


def default_chunk(vocab: int, compile: bool, device: torch.device | str = "cpu") -> int:
    """Tokens per block of ``linear_cross_entropy`` for the kernel that will serve it."""
    if not compile:
        return DEFAULT_CHUNK
    if torch.device(device).type == "cpu" and cpu_kernels.available():
        return max(COMPILED_CHUNK, CPU_KERNEL_BLOCK // max(1, vocab))
    return COMPILED_CHUNK


def compile_available() -> bool:
    """Whether fused CPU kernels can be built here (a C++ compiler is on PATH; inductor and
    ``cpu_kernels`` both compile C++)."""
    return os.environ.get("RLLC_COMPILE", "1") != "0" and any(
        shutil.which(cc) for cc in ("g++", "c++", "clang++")
    )


class _LinearCrossEntropy(Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, w_mm: Tensor, bias: Tensor | None,
                targets: Tensor, chunk: int, compile: bool) -> Tensor:
        R, N, D = h.shape
        need = bool(ctx.needs_input_grad[0])
        # chunk kernel (h, w, wᵀ, b) → (lse, softmax·W or None)
        kernel, static = _fused_kernel(compile, _CHUNK_KERNELS["cpu", need],
                                       _CHUNK_KERNELS["torch", need], h, w_mm)
        h = h.detach()
        # [D, V] row-major for h·Wᵀ: a transposed view is read ≈ 5% slower (bf16, CPU)
        w_t = w_mm.t().contiguous()
        chunk = min(chunk, R * N)

        def run(hc: Tensor, s: int) -> tuple[Tensor, Tensor | None]:
            n = hc.shape[0]
            if static and n < chunk:  # pad the last chunk: one static shape per run
                hc = torch.cat([hc, hc.new_zeros(chunk - n, D)])
            lc, gc = kernel(hc, w_mm, w_t, bias)
            return lc[:n], None if gc is None else gc[:n]

        lse, grad = _chunked_rows(h, chunk, need, run)
        return _target_terms(ctx, lse, h, weight, bias, targets, grad)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return _saved_grad(ctx, grad_out), *([None] * 6)


def _chunked_rows(h: Tensor, chunk: int, need_grad: bool,
                  run) -> tuple[Tensor, Tensor | None]:
    """lse [R·N] and softmax·W [R·N, D] (None without ``need_grad``) of h [R, N, D], flat
    token rows taken ``chunk`` at a time by ``run(h_chunk [c, D], first_row)``."""
    flat_h = h.reshape(-1, h.shape[-1])  # kernels see plain tensors (one specialisation)
    total = flat_h.shape[0]
    lse = h.new_empty(total)
    grad = torch.empty_like(flat_h) if need_grad else None
    for s in range(0, total, chunk):
        e = min(s + chunk, total)
        lc, gc = run(flat_h[s:e], s)
        lse[s:e] = lc
        if need_grad:
            grad[s:e] = gc
    return lse, grad


def _target_terms(ctx, lse: Tensor, h: Tensor, weight: Tensor, bias: Tensor | None,
                  targets: Tensor, grad: Tensor | None) -> Tensor:
    """The target terms, once for all rows: ℓ = lse − h·W_y − b_y and ∂ℓ/∂h = softmax·W −
    W_y from lse [R·N] and ``grad`` = softmax·W [R·N, D] (None without gradients); saves
    ∂ℓ/∂h and returns the per-row mean loss [R]."""
    R, N, D = h.shape
    w_y = weight[targets]  # [N, D] or [R, N, D]
    loss = lse.view(R, N) - (h * w_y).sum(-1)
    if bias is not None:
        loss -= bias[targets]
    if grad is not None:
        grad = grad.view(R, N, D)
        grad -= w_y
    ctx.save_for_backward(grad)
    return loss.mean(dim=1)


def _saved_grad(ctx, grad_out: Tensor) -> Tensor:
    """``_target_terms``'s ∂ℓ/∂h [R, N, D] times the incoming ∂/∂L_r, over N (the mean)."""
    (grad,) = ctx.saved_tensors
    return grad * (grad_out / grad.shape[1])[:, None, None].to(grad.dtype)


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk: int = DEFAULT_CHUNK,
    *,
    precision: str | Precision = Precision.FLOAT32,
    compile: bool = False,
    weight_mm: Tensor | None = None,
) -> Tensor:
    """Per-row mean next-token loss ``[R]`` of hidden states ``h`` [R, N, D] under the frozen
    unembedding ``weight`` [V, D], ``bias`` [V]; ``targets`` [N] (shared by all rows) or
    [R, N]. Differentiable in ``h`` only.

    ``precision="bfloat16"`` runs both matmuls with bf16 operands (pass ``weight_mm``, the
    weight already cast, to avoid casting it per call); ``compile`` fuses each chunk's
    elementwise work (module docstring)."""
    if h.dim() != 3:
        raise ValueError(f"h must be [rows, tokens, d_model], got shape {tuple(h.shape)}")
    precision = matmul_precision(precision)
    weight = weight.detach()
    if weight_mm is None:
        weight_mm = weight.to(precision.matmul_dtype(weight.dtype))
    return _LinearCrossEntropy.apply(
        h, weight, weight_mm.detach(), None if bias is None else bias.detach(), targets,
        int(chunk), bool(compile),
    )


class Int8Weights(NamedTuple):
    """The unembedding as ``int8_linear_cross_entropy`` multiplies it: in int8 twice,
    scaled along each product's reduction dim, and in bf16 for the reference's products."""

    w_q: Tensor  # [V, D] int8, w ≈ w_q·w_scale[:, None] (for δ·Wᵀ, a sum over D)
    w_scale: Tensor  # [V]
    wt_q: Tensor  # [V, D] int8, w ≈ wt_q·wt_scale[None] (for Δp·W, a sum over V)
    wt_scale: Tensor  # [D]
    w_bf: Tensor  # [V, D] bf16
    w_bf_t: Tensor  # [D, V] bf16, row-major (for h*·Wᵀ)


class Int8Unembedding(NamedTuple):
    """The frozen side of ``int8_linear_cross_entropy``: the weights and the reference
    point's N tokens."""

    weights: Int8Weights
    h: Tensor  # [N, D] reference hidden states (w*)
    logits: Tensor  # [N, V] their logits, bf16 operands with fp32 accumulation, + b
    p: Tensor  # [N, V] softmax(logits)
    g: Tensor  # [N, D] p·W (bf16 operands)


def quantize_int8(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Symmetric int8 with one scale per slice along ``dim`` (round to nearest):
    x ≈ q·scale, scale = max |x| / 127 (0 for an all-zero slice)."""
    scale = x.abs().amax(dim=dim, keepdim=True) / 127
    q = torch.round(x / scale.clamp_min(torch.finfo(x.dtype).tiny)).to(torch.int8)
    return q, scale.squeeze(dim)


def int8_weights(weight: Tensor) -> Int8Weights:
    """``Int8Weights`` of the unembedding ``weight`` [V, D] (once per model: every
    minibatch's reference shares them)."""
    weight = weight.detach()
    w_bf = weight.to(torch.bfloat16)
    return Int8Weights(*quantize_int8(weight, 1), *quantize_int8(weight, 0), w_bf,
                       w_bf.t().contiguous())


def int8_unembedding(h_ref: Tensor, weights: Int8Weights, bias: Tensor | None) -> Int8Unembedding:
    """``Int8Unembedding`` of the reference hidden states ``h_ref`` [N, D]."""
    h_ref = h_ref.detach()
    logits = (h_ref.to(torch.bfloat16) @ weights.w_bf_t).to(h_ref.dtype)
    if bias is not None:
        logits = logits + bias.detach()
    p = logits.softmax(dim=1)
    g = (p.to(torch.bfloat16) @ weights.w_bf).to(h_ref.dtype)
    return Int8Unembedding(weights, h_ref, logits.contiguous(), p, g)


def _int8_chunk(hc: Tensor, t0: int, ref: Int8Unembedding,
                need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """``_ce_chunk`` of the int8-difference unembedding for the chunk's rows hc [c, D]
    (row i: reference token (t0 + i) mod N), module docstring:

        z = z* + δ·Wᵀ with δ = h − h*:   int8 δ (per-token scale) × int8 W (per-vocab scale)
        Σ_v softmax_v·W_v = g* + Δp·W,  Δp = softmax − p*: int8 Δp (per-token) × int8 W (per-d)

    Returns (lse [c], softmax·W [c, D] or None)."""
    N, w = ref.h.shape[0], ref.weights
    t = (t0 + torch.arange(hc.shape[0], device=hc.device)) % N
    q, rs = quantize_int8(hc - ref.h[t], 1)
    acc = torch._int_mm(q, w.w_q.t())  # [c, V] int32
    if cpu_kernels.usable(hc):
        lse, dq, ds = cpu_kernels.delta_softmax_rows(acc, rs, w.w_scale, ref.logits, ref.p,
                                                     t0 % N, need_grad)
    else:
        z = ref.logits[t] + rs[:, None] * w.w_scale * acc.to(hc.dtype)
        lse = z.logsumexp(1)
        dq, ds = quantize_int8((z - lse[:, None]).exp() - ref.p[t], 1) if need_grad else (None,
                                                                                         None)
    if not need_grad:
        return lse, None
    g = torch._int_mm(dq, w.wt_q).to(hc.dtype) * (ds[:, None] * w.wt_scale) + ref.g[t]
    return lse, g


class _Int8LinearCrossEntropy(Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                ref: Int8Unembedding, chunk: int) -> Tensor:
        need = bool(ctx.needs_input_grad[0])
        h = h.detach()
        lse, grad = _chunked_rows(h, chunk, need,
                                  lambda hc, s: _int8_chunk(hc, s, ref, need))
        return _target_terms(ctx, lse, h, weight, bias, targets, grad)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        return _saved_grad(ctx, grad_out), *([None] * 5)


def int8_linear_cross_entropy(h: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor,
                              reference: Int8Unembedding, chunk: int = DEFAULT_CHUNK) -> Tensor:
    """``linear_cross_entropy`` with the unembedding's two products taken as int8
    differences from a reference point (module docstring): row r's hidden states
    ``h[r]`` [N, D] against ``reference.h`` [N, D] (the same N tokens, ``targets`` [N]).
    At h = reference.h it returns the reference's loss exactly; away from it, the int8
    rounding acts on δ = h − h* and Δp only, not on h and softmax themselves."""
    if h.dim() != 3 or h.shape[1:] != reference.h.shape:
        raise ValueError(f"h must be [rows, N, D] with the reference's [N, D] = "
                         f"{tuple(reference.h.shape)}, got {tuple(h.shape)}")
    if targets.dim() != 1:
        raise ValueError("the int8 unembedding needs targets [N] shared by all rows")
    return _Int8LinearCrossEntropy.apply(h, weight.detach(),
                                         None if bias is None else bias.detach(), targets,
                                         reference, int(chunk))


def lowrank_chunk(a: Tensor, xd: Tensor, mu: Tensor, sigma: Tensor, x_y: Tensor, u: Tensor,
                   c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The vocabulary-wide part of one token chunk for every row at once.

    a [c, V] = resid*·U′ (shared by all rows); xd [R, c, V] = z_r·M_r − zs_h·Ms_h (the
    head terms, in the matmul dtype); mu, sigma, x_y [R, c]; u, c [V]:

        X = a + xd − μ·u + σ·c,   logits = X/σ,   ℓ = logsumexp(logits) − X_y/σ

    Returns (ℓ [R, c], ∂ℓ/∂(1/σ) = Σ_v softmax_v·X_v − X_y [R, c], e = exp(logits − max)
    [R, c, V] in xd's dtype, (1/σ)/Σ_v e [R, c], Σ_v e_v·(u_v, c_v) [R, c, 2]):
    softmax/σ = e·scale, the scale applied by the caller to the small products. The one-hot
    parts of the gradients are added by the caller."""
    inv = 1.0 / sigma[..., None]  # [R, c, 1]
    x = a + xd.to(a.dtype) - mu[..., None] * u + sigma[..., None] * c
    logits = x * inv
    m = logits.amax(-1, keepdim=True)
    e = (logits - m).exp()
    s = e.sum(-1, keepdim=True)
    loss = (m + s.log()).squeeze(-1) - x_y / sigma
    d_inv = (e * x).sum(-1) / s.squeeze(-1) - x_y
    e_uc = torch.stack([(e * u).sum(-1), (e * c).sum(-1)], dim=-1)
    return loss, d_inv, e.to(xd.dtype), (inv / s).squeeze(-1), e_uc


def lowrank_chunk_cpu(a: Tensor, xd: Tensor, mu: Tensor, sigma: Tensor, x_y: Tensor,
                       u: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``lowrank_chunk`` in one ``cpu_kernels.softmax_rows`` call."""
    R, n, V = xd.shape
    lse, mean, s, e, eu, ec = cpu_kernels.softmax_rows(
        xd.reshape(R * n, V), a=a, mu=mu.reshape(-1), sigma=sigma.reshape(-1), u=u, c=c)
    lse, mean, s = lse.view(R, n), mean.view(R, n), s.view(R, n)
    e_uc = torch.stack([eu, ec], dim=-1).view(R, n, 2)
    return lse - x_y / sigma, mean - x_y, e.view(R, n, V), 1.0 / (sigma * s), e_uc


def pad_block_tokens(args: list[Tensor], pad: int) -> list[Tensor]:
    """Pad the token dim (−2 for a [c, V] / [R, c, V] block, −1 for [R, c]) of a ragged last
    chunk with zeros (σ with ones), so a compiled kernel sees one shape."""
    a, xd, mu, sigma, x_y = args
    return [F.pad(a, (0, 0, 0, pad)), F.pad(xd, (0, 0, 0, pad)), F.pad(mu, (0, pad)),
            F.pad(sigma, (0, pad), value=1.0), F.pad(x_y, (0, pad))]


def lowrank_block_kernel(compile: bool, z: Tensor, m_cat: Tensor):
    """The rank-k loss's block kernel for head outputs ``z`` and head-term operands
    ``m_cat``, and whether it needs one static shape (``pad_block_tokens`` pads a ragged
    last chunk): ``lowrank_chunk_cpu`` where the CPU kernel serves, else
    ``lowrank_chunk``, compiled with ``compile``."""
    return _fused_kernel(compile, lowrank_chunk_cpu, lowrank_chunk, z, m_cat)
