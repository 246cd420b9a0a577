"""The rank-k form of a final LayerNorm + unembedding + cross-entropy, for the rows of
one attention head of the last layer (the fast path's derivation: docs/fastpath.md §1).

``lowrank_cross_entropy`` is the loss of ``rllc.kernels.fused_ce.linear_cross_entropy``
when h is a final LayerNorm of a residual stream that differs from a frozen one by a
rank-k term (one attention head of the last layer):

    resid_rt = base_ht + z_rt·W_Oᵀ,   logits_rt = (resid_rt − μ_rt·1)·U′/σ_rt + c
             = ( A_t − zs_ht·Ms_h + z_rt·M_r − μ_rt·u + σ_rt·c ) / σ_rt

with U′ = diag(g)·Wᵀ [D, V] (g the LayerNorm gain), u = 1ᵀU′, c = b_LN·Wᵀ + b,
A = resid*·U′ (once per chunk, shared by every row), zs_h·Ms_h the frozen contribution of
row r's head h and M_r = W_O,rᵀ·U′ [k, V]. The head terms are one matmul per chunk,
written as differences from w*, zs_h·(M_r − Ms_h) + (z_r − zs_h)·M_r, so bf16 operands
round only what moved. The per-row matmuls are 2k-wide instead of D-wide;
only z, M, μ, σ carry gradients.

The vocabulary-wide pass over each [rows, chunk, V] block is ``rllc.kernels.fused_ce``'s
``lowrank_block_kernel`` (the CPU softmax kernel, or ``torch.compile``); this module holds
the transformer algebra around it: target logits, the head terms as differences from w*,
and the gradients for z, M, μ and σ.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function

from rllc.kernels.fused_ce import lowrank_block_kernel, matmul_precision, pad_block_tokens
from rllc.kernels.precision import Precision


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
        m_t_mm = m.to(mm_dtype).transpose(1, 2)  # [R, V, k]; the u, c columns: kernel sums
        # target logits X_y in the model's dtype: [R, N]
        a_y = (resid_star * u_prime.t()[y]).sum(-1)  # [N]
        head_y = (zs_r * ms_r[:, :, y].transpose(1, 2)).sum(-1)  # [R, N]
        m_y = m[:, :, y].transpose(1, 2)  # [R, N, k]: M's target columns
        x_y = a_y - head_y + (z * m_y).sum(-1) - mu * u[y] + sigma * c[y]
        kernel, static = lowrank_block_kernel(compile, z, m_cat)
        loss = z.new_empty(R, N)
        d_inv = z.new_empty(R, N)
        d_t = z.new_empty(R, N, k + 2)  # ∂ℓ/∂(z | μ | σ) through X, softmax part
        # ∂ℓ/∂M, summed over chunks in the model's dtype, as [R, V, k]: eᵀ·z is the faster
        # product (K = chunk either way, but a k-wide output instead of a k-high one)
        d_m_t = m.new_zeros(R, m.shape[2], k)
        # A = resid*·U′ for all tokens in one matmul: [chunk, D] × [D, V] runs at half the
        # rate of [N, D] × [D, V] (fp32 on the development CPU: ≈ 94 against ≈ 170 GFLOP/s)
        a_all = resid_star @ u_prime  # [N, V]
        for s0 in range(0, N, chunk):
            s1 = min(s0 + chunk, N)
            sl = slice(s0, s1)
            pad = chunk - (s1 - s0) if static else 0  # one static shape per run
            a = a_all[sl]  # [c, V]
            xd = torch.bmm(z_cat[:, sl], m_cat)  # [R, c, V]
            args = [a, xd, mu[:, sl], sigma[:, sl], x_y[:, sl]]
            if pad:
                args = pad_block_tokens(args, pad)
            lo, di, e, scale, e_uc = kernel(*args, u, c)  # softmax/σ = e·scale
            if pad:
                lo, di, e, scale, e_uc = (t[:, : s1 - s0] for t in (lo, di, e, scale, e_uc))
            loss[:, sl], d_inv[:, sl] = lo, di
            d_t[:, sl, :k] = torch.bmm(e, m_t_mm).to(z.dtype) * scale[..., None]
            d_t[:, sl, k:] = e_uc * scale[..., None]
            z_scaled = (z[:, sl] * scale[..., None]).to(mm_dtype)  # [R, c, k]
            e_t = e.transpose(1, 2)  # [R, V, c]
            if mm_dtype == z.dtype:
                d_m_t.baddbmm_(e_t, z_scaled)
            else:  # bf16 operands give a bf16 product: accumulate it in the model's dtype
                d_m_t += torch.bmm(e_t, z_scaled)
        inv = 1.0 / sigma
        # one-hot parts: ∂ℓ/∂X_v has −onehot(y)/σ besides softmax/σ
        m_t_y = torch.cat([m_y, u[y, None].expand(R, N, 1),
                           c[y, None].expand(R, N, 1)], dim=-1)  # [R, N, k+2]
        d_t -= inv[..., None] * m_t_y
        d_m_t.index_add_(1, y, -(z * inv[..., None]))
        d_m = d_m_t.transpose(1, 2)
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


def lowrank_cross_entropy(
    z: Tensor, mu: Tensor, sigma: Tensor, m: Tensor, resid_star: Tensor, u_prime: Tensor,
    c: Tensor, zs: Tensor, ms: Tensor, targets: Tensor, chunk: int = 32, *,
    precision: str | Precision = Precision.FLOAT32, compile: bool = False,
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
        compile: fuse each block's vocabulary-wide passes (module docstring).

    Differentiable in ``z``, ``mu``, ``sigma`` and ``m``.
    """
    precision = matmul_precision(precision)  # int8 rows pass precision.head_terms
    mm_dtype = precision.matmul_dtype(z.dtype)
    return _LowRankCrossEntropy.apply(
        z, mu, sigma, m, resid_star.detach(), u_prime.detach(), c.detach(), zs.detach(),
        ms.detach(), targets, int(chunk), mm_dtype, bool(compile),
    )
