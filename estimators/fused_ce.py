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
row r's head h and M_r = W_O,rᵀ·U′ [k, V]. The head terms are one matmul per chunk,
written as differences from w*, zs_h·(M_r − Ms_h) + (z_r − zs_h)·M_r, so bf16 operands
round only what moved. The per-row matmuls are 2k-wide instead of D-wide (FASTPATH §1);
only z, M, μ, σ carry gradients.

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
import torch.nn.functional as F
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


def _lowrank_chunk(a: Tensor, xd: Tensor, mu: Tensor, sigma: Tensor, x_y: Tensor, u: Tensor,
                   c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The vocabulary-wide part of one token chunk for every row at once.

    a [c, V] = resid*·U′ (shared by all rows); xd [R, c, V] = z_r·M_r − zs_h·Ms_h (the
    head terms, in the matmul dtype); mu, sigma, x_y [R, c]; u, c [V]:

        X = a + xd − μ·u + σ·c,   logits = X/σ,   ℓ = logsumexp(logits) − X_y/σ

    Returns (ℓ [R, c], ∂ℓ/∂(1/σ) = Σ_v softmax_v·X_v − X_y [R, c], softmax/σ [R, c, V] in
    xd's dtype). The one-hot parts of the gradients are added by the caller."""
    inv = 1.0 / sigma[..., None]  # [R, c, 1]
    x = a + xd.to(a.dtype) - mu[..., None] * u + sigma[..., None] * c
    logits = x * inv
    m = logits.amax(-1, keepdim=True)
    e = (logits - m).exp()
    s = e.sum(-1, keepdim=True)
    loss = (m + s.log()).squeeze(-1) - x_y / sigma
    d_inv = (e * x).sum(-1) / s.squeeze(-1) - x_y
    return loss, d_inv, (e * (inv / s)).to(xd.dtype)


class _LowRankCrossEntropy(Function):
    @staticmethod
    def forward(ctx, z: Tensor, mu: Tensor, sigma: Tensor, m: Tensor, resid_star: Tensor,
                u_prime: Tensor, c: Tensor, zs: Tensor, ms: Tensor, targets: Tensor,
                chunk: int, mm_dtype: torch.dtype, compile: bool) -> Tensor:
        # z [R, N, k]; mu, sigma [R, N]; m [R, k, V]; resid_star [N, D]; u_prime [D, V];
        # c [V]; zs [H, N, k]; ms [H, k, V]; targets [N]; rows head-major (H, C).
        R, N, k = z.shape
        H = zs.shape[0]
        head = torch.arange(R, device=z.device) // (R // H)  # row → its head
        u = u_prime.sum(dim=0)  # [V]
        y = targets
        # One matmul per chunk for the head terms, written as differences from w* so that
        # bf16 operands round only what moved: z·M − zs·Ms = zs·(M − Ms) + (z − zs)·M
        zs_r, ms_r = zs[head], ms[head]  # [R, N, k], [R, k, V]
        z_cat = torch.cat([zs_r, z - zs_r], dim=-1).to(mm_dtype)  # [R, N, 2k]
        m_cat = torch.cat([m - ms_r, m], dim=1).to(mm_dtype)  # [R, 2k, V]
        m_t = torch.cat([m, u.expand(R, 1, -1), c.expand(R, 1, -1)], dim=1)  # [R, k+2, V]
        m_t_mm = m_t.to(mm_dtype).transpose(1, 2)  # [R, V, k+2]
        # target logits X_y in the model's dtype: [R, N]
        a_y = (resid_star * u_prime.t()[y]).sum(-1)  # [N]
        head_y = (zs_r * ms_r[:, :, y].transpose(1, 2)).sum(-1)  # [R, N]
        x_y = (a_y - head_y + (z * m[:, :, y].transpose(1, 2)).sum(-1) - mu * u[y]
               + sigma * c[y])
        kernel = _compiled(_lowrank_chunk) if compile else _lowrank_chunk
        loss = z.new_empty(R, N)
        d_inv = z.new_empty(R, N)
        d_t = z.new_empty(R, N, k + 2)  # ∂ℓ/∂(z | μ | σ) through X, softmax part
        d_m = torch.zeros_like(m)  # ∂ℓ/∂M, summed over chunks in the model's dtype
        z_mm_t = z.to(mm_dtype).transpose(1, 2)  # [R, k, N]
        for s0 in range(0, N, chunk):
            s1 = min(s0 + chunk, N)
            sl = slice(s0, s1)
            pad = chunk - (s1 - s0) if compile else 0  # one static shape per run
            a = resid_star[sl] @ u_prime  # [c, V]
            xd = torch.bmm(z_cat[:, sl], m_cat)  # [R, c, V]
            args = [a, xd, mu[:, sl], sigma[:, sl], x_y[:, sl]]
            if pad:
                args = _pad_tokens(args, pad)
            lo, di, gp = kernel(*args, u, c)
            if pad:
                lo, di, gp = lo[:, : s1 - s0], di[:, : s1 - s0], gp[:, : s1 - s0]
            loss[:, sl], d_inv[:, sl] = lo, di
            d_t[:, sl] = torch.bmm(gp, m_t_mm).to(z.dtype)
            if mm_dtype == z.dtype:
                d_m.baddbmm_(z_mm_t[:, :, sl], gp)
            else:  # bf16 operands give a bf16 product: accumulate it in the model's dtype
                d_m += torch.bmm(z_mm_t[:, :, sl], gp)
        inv = 1.0 / sigma
        # one-hot parts: ∂ℓ/∂X_v has −onehot(y)/σ besides softmax/σ
        d_t -= inv[..., None] * m_t[:, :, y].transpose(1, 2)
        d_m.index_add_(2, y, -(z * inv[..., None]).transpose(1, 2))
        d_z, d_mu, d_sig = d_t[..., :k], -d_t[..., k], d_t[..., k + 1] - d_inv * inv**2
        ctx.save_for_backward(d_z, d_mu, d_sig, d_m)
        ctx.n = N
        return loss.mean(dim=1)

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        d_z, d_mu, d_sig, d_m = ctx.saved_tensors
        scale = grad_out / ctx.n  # [R]
        return (d_z * scale[:, None, None], d_mu * scale[:, None], d_sig * scale[:, None],
                d_m * scale[:, None, None], *([None] * 9))


def _pad_tokens(args: list[Tensor], pad: int) -> list[Tensor]:
    """Pad the token dim (−2 for a [c, V] / [R, c, V] block, −1 for [R, c]) of a ragged last
    chunk with zeros (σ with ones), so a compiled kernel sees one shape."""
    a, xd, mu, sigma, x_y = args
    return [F.pad(a, (0, 0, 0, pad)), F.pad(xd, (0, 0, 0, pad)), F.pad(mu, (0, pad)),
            F.pad(sigma, (0, pad), value=1.0), F.pad(x_y, (0, pad))]


def lowrank_cross_entropy(
    z: Tensor, mu: Tensor, sigma: Tensor, m: Tensor, resid_star: Tensor, u_prime: Tensor,
    c: Tensor, zs: Tensor, ms: Tensor, targets: Tensor, chunk: int = 32, *,
    precision: str = "float32", compile: bool = False,
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
        chunk: tokens per [R, chunk, V] block.
        precision: "bfloat16" takes the head terms' matmuls (zs·Ms, z·M and the gradient
            products) with bf16 operands; A = resid*·U′ and the target logits stay in the
            inputs' dtype, so only the head's small contribution is rounded.
        compile: fuse each block's vocabulary-wide passes with ``torch.compile``.

    Differentiable in ``z``, ``mu``, ``sigma`` and ``m``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    mm_dtype = torch.bfloat16 if precision == "bfloat16" else z.dtype
    return _LowRankCrossEntropy.apply(
        z, mu, sigma, m, resid_star.detach(), u_prime.detach(), c.detach(), zs.detach(),
        ms.detach(), targets, int(chunk), mm_dtype, bool(compile),
    )
