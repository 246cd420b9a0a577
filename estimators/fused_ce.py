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

``lowrank_cross_entropy`` is the same loss when h is a final LayerNorm of a residual stream
that differs from a frozen one by a rank-k term (one attention head of the last layer):

    resid_rt = base_ht + z_rt·W_Oᵀ,   logits_rt = (resid_rt − μ_rt·1)·U′/σ_rt + c
             = ( A_t − zs_ht·Ms_h + z_rt·M_r − μ_rt·u + σ_rt·c ) / σ_rt

with U′ = diag(g)·Wᵀ [D, V] (g the LayerNorm gain), u = 1ᵀU′, c = b_LN·Wᵀ + b,
A = resid*·U′ (once per chunk, shared by every row), zs_h·Ms_h the frozen contribution of
row r's head h (shared by its chains) and M_r = W_O,rᵀ·U′ [k, V]. The per-row matmul is
k-wide instead of D-wide (FASTPATH §1); only z, M, μ, σ carry gradients.

Non-finite values are not checked on the logits: a non-finite per-token loss makes its
row's mean non-finite, which the sampler records as a diverged chain.

Neither Function has a vmap rule: they are called on explicitly batched tensors (rows as a
leading dim) under plain autograd, not inside ``torch.func`` transforms.
"""

from __future__ import annotations

import functools
import os
import shutil

import torch
from torch import Tensor
from torch.autograd import Function

#: Token rows per chunk: [chunk, V] fp32 blocks of ~1–3 MB stay in a core's L2 cache.
DEFAULT_CHUNK = 128
#: Matmul precisions of the unembedding: float32 (exact, the default) or bfloat16
#: (bf16 operands, fp32 accumulation; softmax, loss and gradients stay fp32).
PRECISIONS = ("float32", "bfloat16")


def _ce_chunk_loss(h: Tensor, w: Tensor, w32: Tensor, b: Tensor | None, y: Tensor) -> Tensor:
    """Per-token loss [c] of hidden states ``h`` [c, D] (see ``_ce_chunk``)."""
    return _ce_chunk(h, w, w32, b, y, need_grad=False)[0]


def _ce_chunk_grad(h: Tensor, w: Tensor, w32: Tensor, b: Tensor | None,
                   y: Tensor) -> tuple[Tensor, Tensor]:
    """(per-token loss [c], ∂loss/∂h [c, D])."""
    loss, grad = _ce_chunk(h, w, w32, b, y, need_grad=True)
    return loss, grad


def _ce_chunk(h: Tensor, w: Tensor, w32: Tensor, b: Tensor | None, y: Tensor,
              need_grad: bool) -> tuple[Tensor, Tensor | None]:
    """One chunk: h [c, D], w [V, D] in the matmul dtype, w32 [V, D] in h's dtype, y [c].

        ℓ_t = m_t + log s_t − z_t,y_t,    m_t = max_v z_tv,   e_tv = exp(z_tv − m_t),  s_t = Σ_v e_tv
        ∂ℓ_t/∂h_t = (Σ_v e_tv·W_v)/s_t − W_{y_t}

    The [c, V] block is written by the first matmul, read for the max, read once more to
    write e (in the matmul dtype) and sum it, and read by the second matmul; the softmax
    normalisation and the one-hot term act on the small [c, D] result instead.
    """
    z = h.to(w.dtype) @ w.t()  # [c, V]
    z = z.to(h.dtype) if b is None else z.to(h.dtype) + b
    wy = w32[y]  # [c, D]
    # target logit in h's precision (it is not averaged over the vocabulary like lse is)
    z_y = (h * wy).sum(1) if b is None else (h * wy).sum(1) + b[y]
    m = z.amax(1, keepdim=True)  # [c, 1]
    e = (z - m).exp()  # [c, V]
    s = e.sum(1, keepdim=True)  # [c, 1]
    loss = (m + s.log()).squeeze(1) - z_y
    if not need_grad:
        return loss, None
    grad = (e.to(w.dtype) @ w).to(h.dtype) / s - wy  # [c, D]
    return loss, grad


@functools.cache
def _compiled(fn):
    """``fn`` compiled with static shapes (the last chunk is padded, so one kernel serves a
    whole run). Inductor fuses a chunk's elementwise passes (max, exp, sum, scale, casts);
    compiling takes seconds once per shape and is cached on disk."""
    compiled = torch.compile(fn, dynamic=False)
    # one specialisation per (chunk, D, V, dtype, device): allow a few more than dynamo's 8
    return torch._dynamo.config.patch(recompile_limit=32)(compiled)


def _kernel(grad: bool, compile: bool):
    fn = _ce_chunk_grad if grad else _ce_chunk_loss
    return _compiled(fn) if compile else fn


def compile_available() -> bool:
    """Whether ``torch.compile`` can build CPU kernels here (a C++ compiler is on PATH)."""
    return os.environ.get("RLLC_COMPILE", "1") != "0" and any(
        shutil.which(cc) for cc in ("g++", "c++", "clang++")
    )


class _LinearCrossEntropy(Function):
    @staticmethod
    def forward(ctx, h: Tensor, weight: Tensor, w_mm: Tensor, bias: Tensor | None,
                targets: Tensor, chunk: int, compile: bool) -> Tensor:
        R, N, D = h.shape
        need = bool(ctx.needs_input_grad[0])
        kernel = _kernel(need, compile)
        flat_h = h.detach().reshape(R * N, D)  # kernels see plain tensors (one specialisation)
        flat_y = targets.expand(R, N).reshape(R * N)
        total = R * N
        chunk = min(chunk, total)
        loss = h.new_empty(total)
        grad = torch.empty_like(flat_h) if need else None
        for s in range(0, total, chunk):
            e = min(s + chunk, total)
            hc, yc = flat_h[s:e], flat_y[s:e]
            if compile and e - s < chunk:  # pad the last chunk: one static shape per run
                hc = torch.cat([hc, hc.new_zeros(chunk - (e - s), D)])
                yc = torch.cat([yc, yc.new_zeros(chunk - (e - s))])
            out = kernel(hc, w_mm, weight, bias, yc)
            if need:
                loss[s:e], grad[s:e] = out[0][: e - s], out[1][: e - s]
            else:
                loss[s:e] = out[: e - s]
        ctx.save_for_backward(grad)
        ctx.shape = (R, N, D)
        return loss.view(R, N).mean(dim=1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        (grad,) = ctx.saved_tensors
        R, N, D = ctx.shape
        g = grad.view(R, N, D) * (grad_out / N)[:, None, None].to(grad.dtype)
        return g, None, None, None, None, None, None


def linear_cross_entropy(
    h: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    targets: Tensor,
    chunk: int = DEFAULT_CHUNK,
    *,
    precision: str = "float32",
    compile: bool = False,
    weight_mm: Tensor | None = None,
) -> Tensor:
    """Per-row mean next-token loss ``[R]`` of hidden states ``h`` [R, N, D] under the frozen
    unembedding ``weight`` [V, D], ``bias`` [V]; ``targets`` [N] (shared by all rows) or
    [R, N]. Differentiable in ``h`` only.

    ``precision="bfloat16"`` runs both matmuls with bf16 operands (pass ``weight_mm``, the
    weight already cast, to avoid casting it per call); ``compile`` fuses each chunk's
    elementwise work with ``torch.compile``."""
    if h.dim() != 3:
        raise ValueError(f"h must be [rows, tokens, d_model], got shape {tuple(h.shape)}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    weight = weight.detach()
    if weight_mm is None:
        weight_mm = weight if precision == "float32" else weight.to(torch.bfloat16)
    return _LinearCrossEntropy.apply(
        h, weight, weight_mm.detach(), None if bias is None else bias.detach(), targets,
        int(chunk), bool(compile),
    )


def _lowrank_block(a: Tensor, zs_h: Tensor, neg_ms_h: Tensor, zt: Tensor, m_aug: Tensor,
                   inv: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One (token chunk, head) block of C chains. a [c, V] = resid*·U′; zs_h [c, k];
    neg_ms_h [k, V] = −Ms_h; zt [C, c, k+2] = (z | μ | σ); m_aug [C, k+2, V] = (M; −u; c);
    inv [C, c] = 1/σ; y [c].

        X = A − zs_h·Ms_h + z̃·M̃,   logits = X/σ,   G = softmax(logits) − onehot(y)
        ∂ℓ/∂z̃ = (G/σ)·M̃ᵀ,  ∂ℓ/∂M = zᵀ·(G/σ),  ∂ℓ/∂(1/σ) = Σ_v G_v·X_v

    Returns per-token loss [C, c], ∂ℓ/∂z̃ [C, c, k+2], ∂ℓ/∂(1/σ) [C, c] and this block's
    ∂ℓ/∂M [C, k, V] (summed over its tokens)."""
    C, c, k2 = zt.shape
    p = torch.addmm(a, zs_h, neg_ms_h)  # [c, V], shared by the head's chains
    x = torch.baddbmm(p.expand(C, c, p.shape[1]), zt, m_aug)  # [C, c, V]
    iv = inv[..., None]  # [C, c, 1]
    logits = x * iv
    m = logits.amax(-1, keepdim=True)
    e = (logits - m).exp()
    s = e.sum(-1, keepdim=True)
    x_y = x.gather(-1, y.expand(C, c)[..., None])  # [C, c, 1]
    loss = (m + s.log() - x_y * iv).squeeze(-1)
    d_inv = ((e * x).sum(-1, keepdim=True) / s - x_y).squeeze(-1)
    gp = e * (iv / s)  # softmax/σ; the one-hot parts below are gathered, not scattered in
    d_zt = torch.bmm(gp, m_aug.transpose(1, 2)) - iv * m_aug[:, :, y].transpose(1, 2)
    z = zt[..., : k2 - 2]
    d_m = torch.bmm(z.transpose(1, 2), gp).index_add(2, y, -(z * iv).transpose(1, 2))
    return loss, d_zt, d_inv, d_m


class _LowRankCrossEntropy(Function):
    @staticmethod
    def forward(ctx, zt: Tensor, inv_sigma: Tensor, m: Tensor, resid_star: Tensor,
                u_prime: Tensor, c: Tensor, zs: Tensor, ms: Tensor, targets: Tensor,
                chunk: int) -> Tensor:
        # zt [R, N, k+2] = (z | μ | σ); inv_sigma [R, N]; m [R, k, V]; resid_star [N, D];
        # u_prime [D, V]; c [V]; zs [H, N, k]; ms [H, k, V]; rows are head-major (H, C).
        R, N = inv_sigma.shape
        H = zs.shape[0]
        C = R // H
        u = u_prime.sum(dim=0)  # [V]
        # M̃_r = [M_r; −u; c]: the μ and σ columns of zt pick up −μ·u and σ·c in one matmul
        m_aug = torch.cat([m, (-u).expand(R, 1, -1), c.expand(R, 1, -1)], dim=1)  # [R, k+2, V]
        neg_ms = -ms
        loss = zt.new_empty(R, N)
        d_zt, d_inv, d_m = torch.empty_like(zt), torch.empty_like(inv_sigma), torch.zeros_like(m)
        for s in range(0, N, chunk):
            sl = slice(s, min(s + chunk, N))
            a = resid_star[sl] @ u_prime  # [c, V], shared by every row
            for h in range(H):
                rows = slice(h * C, (h + 1) * C)
                out = _lowrank_block(a, zs[h, sl], neg_ms[h], zt[rows, sl], m_aug[rows],
                                     inv_sigma[rows, sl], targets[sl])
                loss[rows, sl], d_zt[rows, sl], d_inv[rows, sl] = out[:3]
                d_m[rows] += out[3]
        ctx.save_for_backward(d_zt, d_inv, d_m)
        ctx.n = N
        return loss.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        d_zt, d_inv, d_m = ctx.saved_tensors
        scale = grad_out / ctx.n  # [R]
        return (d_zt * scale[:, None, None], d_inv * scale[:, None], d_m * scale[:, None, None],
                None, None, None, None, None, None, None)


def lowrank_cross_entropy(
    z: Tensor, mu: Tensor, sigma: Tensor, m: Tensor, resid_star: Tensor, u_prime: Tensor,
    c: Tensor, zs: Tensor, ms: Tensor, targets: Tensor, chunk: int = 32,
) -> Tensor:
    """Per-row mean loss ``[R]`` of ``logits_rt = (A_t − zs_h,t·Ms_h + z_rt·M_r − μ_rt·u)
    /σ_rt + c`` (module docstring), rows head-major: row r = (head r // C, chain r % C).

    Args:
        z: [R, N, k] the sampled head's output before W_O, per row.
        mu, sigma: [R, N] mean and std (with the LayerNorm's ε) of each row's residual
            stream; pass zeros and ones when there is no final LayerNorm.
        m: [R, k, V] W_O,rᵀ·U′.
        resid_star: [N, D] frozen residual stream entering the final LayerNorm.
        u_prime: [D, V] diag(g)·W_Uᵀ;  c: [V] b_LN·W_Uᵀ + b_U.
        zs: [H, N, k], ms: [H, k, V] each head's frozen output and W_O*ᵀ·U′.
        targets: [N] next tokens, shared by all rows.

    Differentiable in ``z``, ``mu``, ``sigma`` and ``m``.
    """
    zt = torch.cat([z, mu[..., None], sigma[..., None]], dim=-1)  # [R, N, k+2]
    return _LowRankCrossEntropy.apply(
        zt, 1.0 / sigma, m, resid_star.detach(), u_prime.detach(), c.detach(),
        zs.detach(), ms.detach(), targets, int(chunk)
    )
