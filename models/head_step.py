"""One SGLD step's loss and gradient for many (head, chain) rows of one layer at once.

Sampling head (L, h) leaves everything upstream of layer L frozen. Per minibatch
``tokens [B, T]`` a ``LayerPrefix`` is computed once, without gradients, and shared by
every row (all sampled heads of the layer × all chains) and by every step that reuses the
batch (with independent minibatches, one prefix holds the C chains' batches stacked,
``tokens [C·B, T]``, and chain c's rows read its slice; docs/fastpath.md §3):

    resid_L            [B, T, D]   residual stream entering layer L (frozen blocks < L)
    x_qk, x_v          [B, T, D]   LN_L(resid_L + p) and LN_L(resid_L) (shortformer; else equal)
    zs_h               [H, B, T, k] each sampled head's output at w*, before W_O
    base_h = resid_{L+1}* − zs_h·W_O*_hᵀ      the stream after layer L without head h

Row r = (head h, chain c) has its own W_Q, W_K, W_V [k, D], b_Q, b_K, b_V [k], W_O [D, k]
(``theta[r]``, flattened exactly as the general sampler flattens the head's selection).
Only that head's contribution is recomputed:

    q, k, v = x_qk·W_Qᵀ + b_Q, x_qk·W_Kᵀ + b_K, x_v·W_Vᵀ + b_V     [R, B, T, k]
    z = softmax(q·kᵀ/√k + causal)·v                               [R, B, T, k]
    resid_{L+1}(w) = base_h + z·W_Oᵀ                               [R, B, T, D]

then the frozen later blocks run on all rows as one batch, and the final LayerNorm's output
goes through the chunked fused unembedding + cross-entropy (``linear_cross_entropy``); for
the last layer (``lowrank=True``) the head output goes straight through the rank-k form of
the final LayerNorm + unembedding instead (``lowrank_cross_entropy``, docs/fastpath.md §1: k-wide
instead of D-wide matmuls per row). The gradient is taken for ``theta`` only (plain
batched autograd; rows are independent, so ∂Σ_r L_r/∂θ_r = ∂L_r/∂θ_r).

The row computations up to the final hidden state (``rows_hidden``) or up to the rank-k
loss's inputs (``rows_lowrank_inputs``) are pure functions of tensors, so ``torch.compile``
can fuse their elementwise work (LayerNorms, casts, bias and residual adds, layout copies)
forward and backward; on the CPU their causal attention (the sampled head's and the frozen
later blocks') then runs in ``cpu_kernels.causal_attention``, 2.5× faster than ATen's flash
attention at the paper's T = 256, d_head = 32 (layer-0 row-steps of the paper-shaped model:
128 against 107.5 ms).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from rllc.estimators import frozen_state
from rllc.kernels import cpu_kernels
from rllc.kernels.fused_ce import (
    DEFAULT_CHUNK,
    Int8Unembedding,
    Int8Weights,
    int8_linear_cross_entropy,
    int8_unembedding,
    int8_weights,
    linear_cross_entropy,
)
from rllc.kernels.precision import Precision, parse_precision

from .lowrank_unembed import lowrank_cross_entropy
from .transformer import AttentionOnlyTransformer, TransformerConfig

#: Tokens per [rows, chunk, V] block of the rank-k loss. The block does not fit a core's
#: cache at any useful size (its matmuls write it to memory and read it back), so it is
#: sized for efficient [chunk, 2k] × [2k, V] matmuls: on the paper-shaped model (32 rows,
#: bf16, the CPU softmax kernel) 64 / 128 / 256 / 512 tokens took 54 / 47 / 44 / 45 ms
#: per row-step.
LOWRANK_CHUNK = 256
#: Numbers per [rows, B, T, D] activation of one dense pass: large enough for efficient
#: matmuls, small enough for a large last-level cache (paper-shaped model: 16 rows, ≈ 8%
#: faster than 32).
PART_NUMBERS = 1 << 24
#: Numbers per [rows, chunk, V] block of one rank-k pass, whose A = resid*·U′ the rows
#: share (paper-shaped model: 52 rows; 32 rows were ≈ 5% faster than 16).
LOWRANK_PART_NUMBERS = 1 << 26
LN_EPS = 1e-5  # nn.LayerNorm's default, as the model uses

#: A frozen block's tensors: LN gain and bias (None without LayerNorm), qkv weight (in the
#: matmul dtype) and bias, out weight (matmul dtype) and bias.
BlockWeights = tuple[Tensor | None, Tensor | None, Tensor, Tensor, Tensor, Tensor]


@dataclass(frozen=True)
class Shape:
    """Static sizes and kernel choices of one row computation (constants of a compiled
    graph)."""

    n_heads: int  # heads per layer of the model
    d_head: int
    shortformer: bool
    #: causal attention through ``cpu_kernels.causal_attention`` instead of ATen's SDPA
    cpu_attention: bool = False


def attention(q: Tensor, k: Tensor, v: Tensor, cpu_kernel: bool) -> Tensor:
    """Causal attention of [B, H, T, k] heads: the CPU kernel or ATen's SDPA."""
    if cpu_kernel:
        return cpu_kernels.causal_attention(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@dataclass
class LayerPrefix:
    """Frozen quantities of one minibatch, shared by all rows (see module docstring), or of
    G minibatches of B sequences each, stacked along the batch dim (``groups`` = G; with
    independent minibatches G = C and chain c's rows read group c: sequences
    [c·B, (c+1)·B)). Below, B is the stacked G·B."""

    tokens: Tensor  # [B, T]
    x_qk: Tensor  # [B·T, D]
    x_v: Tensor  # [B·T, D]  (the same tensor as x_qk without shortformer positions)
    resid_next: Tensor  # [B, T, D]  resid_{L+1} at w*
    zs: Tensor  # [H, B, T, k]
    base: Tensor  # [H, B, T, D]
    star: Tensor | None = None  # L_B(w*) per group [G], computed on demand
    int8_ref: Int8Unembedding | None = None  # the int8 unembedding's w* side, on demand
    groups: int = 1

    def group_targets(self) -> Tensor:
        """Next-token targets per group: [G, N] (N = B·(T−1) of one group)."""
        return targets_of(self.tokens).view(self.groups, -1)

    def select_groups(self, g0: int, g1: int) -> LayerPrefix:
        """The prefix of groups [g0, g1) (views; ``star`` and ``int8_ref`` sliced too)."""
        if (g0, g1) == (0, self.groups):
            return self
        B, T = self.tokens.shape[0] // self.groups, self.tokens.shape[1]
        seqs, flat = slice(g0 * B, g1 * B), slice(g0 * B * T, g1 * B * T)
        ref = self.int8_ref
        if ref is not None:
            n = slice(g0 * B * (T - 1), g1 * B * (T - 1))
            ref = ref._replace(h=ref.h[n], logits=ref.logits[n], p=ref.p[n], g=ref.g[n])
        return LayerPrefix(self.tokens[seqs], self.x_qk[flat], self.x_v[flat],
                           self.resid_next[seqs], self.zs[:, seqs], self.base[:, seqs],
                           None if self.star is None else self.star[g0:g1], ref, g1 - g0)


@dataclass(frozen=True)
class Numerics:
    """How the frozen parts are computed: ``precision`` as ``rllc.kernels.precision``'s
    table says (the int8 dense unembedding is ``int8_linear_cross_entropy``; rank-k rows
    take ``precision.head_terms``); ``compile`` fuses the rows' forward/backward with ``torch.compile`` (with the
    CPU attention kernel where it serves) and the loss's chunk kernels (the CPU softmax
    kernel, or ``torch.compile``)."""

    precision: Precision = Precision.FLOAT32
    compile: bool = False
    chunk: int = DEFAULT_CHUNK
    #: The dense unembedding's matmul precision when it differs from ``precision``: the
    #: rank-k loss unembeds in the model's dtype (only the head's terms take bf16), so
    #: L_B(w*) and L_n(w*) for its rows are taken that way too.
    unembed: Precision | None = None

    def __post_init__(self) -> None:  # accept the values' names too ("bfloat16")
        object.__setattr__(self, "precision", parse_precision(self.precision))
        if self.unembed is not None:
            object.__setattr__(self, "unembed", parse_precision(self.unembed))

    @property
    def unembed_precision(self) -> Precision:
        return self.unembed or self.precision


def loss_numerics(numerics: Numerics, lowrank: bool) -> Numerics:
    """The numerics of a layer's rows' loss: rank-k rows unembed in the model's dtype."""
    return replace(numerics, unembed=Precision.FLOAT32) if lowrank else numerics


def layer_norm(x: Tensor, w: Tensor | None, b: Tensor | None) -> Tensor:
    """The model's LayerNorm over the last dim, or the identity when ``w`` is None."""
    return x if w is None else F.layer_norm(x, (x.shape[-1],), w, b, LN_EPS)


def linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """x·wᵀ + b with w in its matmul dtype (fp32 accumulation), result in x's dtype."""
    return (x.to(w.dtype) @ w.t()).to(x.dtype) + b


def block(x: Tensor, pos_qk: Tensor | None, weights: BlockWeights, shape: Shape) -> Tensor:
    """An attention-only pre-LN block (``Block.forward``): x [B, T, D] → [B, T, D]."""
    B, T = x.shape[:2]
    H, k = shape.n_heads, shape.d_head
    A = H * k
    ln_w, ln_b, qkv_w, qkv_b, out_w, out_b = weights
    x_v = layer_norm(x, ln_w, ln_b)
    if pos_qk is None:
        q, kk, v = linear(x_v, qkv_w, qkv_b).split(A, dim=-1)  # [B, T, A] each
    else:
        q, kk = linear(layer_norm(x + pos_qk, ln_w, ln_b), qkv_w[: 2 * A], qkv_b[: 2 * A]).split(
            A, dim=-1)
        v = linear(x_v, qkv_w[2 * A :], qkv_b[2 * A :])

    def heads_first(t: Tensor) -> Tensor:  # [B, T, A] → [B, H, T, k]
        return t.view(B, T, H, k).transpose(1, 2)

    z = attention(heads_first(q), heads_first(kk), heads_first(v),
                  shape.cpu_attention)  # [B, H, T, k]
    return x + linear(z.transpose(1, 2).reshape(B, T, A), out_w, out_b)


def rows_head_output(theta: Tensor, x_qk: Tensor, x_v: Tensor, B: int, T: int,
                     cpu_attention: bool, groups: int = 1) -> tuple[Tensor, Tensor]:
    """Each row's head output z [R, B, T, k] and W_O [R, D, k] from ``theta`` [R, d]
    (flattened as out.weight columns [D, k], qkv.bias rows [3, k], qkv.weight rows
    [3, k, D]: the general sampler's order) and the shared inputs x_qk, x_v [B·T, D].
    With ``groups`` = G > 1 the inputs are G minibatches [G·B·T, D] and the rows (head-major,
    R = H·G) are one per (head, group): row h·G + g reads group g."""
    R, d = theta.shape
    D = x_qk.shape[-1]
    k = d // (4 * D + 3)  # d = 4·D·k + 3·k
    wo, b, w = theta.split([D * k, 3 * k, 3 * k * D], dim=1)
    wo, b, w = wo.reshape(R, D, k), b.reshape(R, 3, k), w.reshape(R, 3, k, D)
    G, H = groups, R // groups

    # q, k, v of all rows from the shared inputs: one [B·T, D] × [D, R·k] matmul each, or
    # with G groups one batched [G; B·T, D] × [G; D, H·k] matmul (group g: its H rows)
    def proj(x: Tensor, part: int) -> Tensor:  # → [R, B, T, k]
        if G == 1:
            y = x @ w[:, part].reshape(R * k, D).t()  # [B·T, R·k]
            return (y.view(B, T, R, k) + b[:, part]).permute(2, 0, 1, 3)
        wg = w[:, part].reshape(H, G, k, D).permute(1, 3, 0, 2).reshape(G, D, H * k)
        y = torch.bmm(x.view(G, B * T, D), wg).view(G, B, T, H, k)  # [G, B, T, H, k]
        y = y + b[:, part].reshape(H, G, k).transpose(0, 1)[:, None, None]
        return y.permute(3, 0, 1, 2, 4).reshape(R, B, T, k)

    z = attention(proj(x_qk, 0), proj(x_qk, 1), proj(x_v, 2), cpu_attention)  # [R, B, T, k]
    return z, wo


def rows_hidden(theta: Tensor, x_qk: Tensor, x_v: Tensor, base: Tensor, pos_qk: Tensor | None,
                later: tuple[BlockWeights, ...], ln_w: Tensor | None, ln_b: Tensor | None,
                shape: Shape, groups: int = 1) -> Tensor:
    """Final hidden states [R, N = B·(T−1), D] of every row (positions that predict a
    token): head output, ``base_h + z·W_Oᵀ``, the frozen later blocks, the final LN.
    ``base`` [H, G·B, T, D] for ``groups`` = G minibatches (``rows_head_output``); rows
    head-major."""
    H, GB, T, D = base.shape
    B = GB // groups
    R = theta.shape[0]
    z, wo = rows_head_output(theta, x_qk, x_v, B, T, shape.cpu_attention, groups)
    contrib = torch.bmm(z.reshape(R, B * T, -1), wo.transpose(1, 2))  # [R, B·T, D]
    x = (base.view(H, groups, B * T, D) + contrib.view(H, R // H, B * T, D)).view(R * B, T, D)
    for weights in later:
        x = block(x, pos_qk, weights, shape)
    return layer_norm(x[:, :-1], ln_w, ln_b).reshape(R, -1, D)


def rows_lowrank_inputs(
    theta: Tensor, x_qk: Tensor, x_v: Tensor, base: Tensor, u_prime: Tensor, layer_norm: bool,
    cpu_attention: bool = False, groups: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """What ``lowrank_cross_entropy`` needs of every row of a last-layer head, at the N
    positions that predict a token: z [R, N, k], the mean μ and std σ [R, N] of
    resid(w) = base_h + z·W_Oᵀ (zeros and ones without a final LayerNorm) and
    M = W_Oᵀ·U′ [R, k, V]. ``base`` [H, G·B, T, D] for ``groups`` = G minibatches
    (``rows_head_output``); rows head-major."""
    H, GB, T, D = base.shape
    B = GB // groups
    R = theta.shape[0]
    z, wo = rows_head_output(theta, x_qk, x_v, B, T, cpu_attention, groups)
    z_n = z[:, :, :-1].reshape(R, -1, z.shape[-1])  # [R, N, k]
    if layer_norm:
        resid = (base.view(H, groups, B, T, D)[:, :, :, :-1].reshape(H, groups, -1, D)
                 + torch.bmm(z_n, wo.transpose(1, 2)).view(H, R // H, -1, D)).view(R, -1, D)
        mu = resid.mean(-1)
        sigma = (resid.var(-1, unbiased=False) + LN_EPS).sqrt()
    else:
        mu, sigma = z_n.new_zeros(z_n.shape[:2]), z_n.new_ones(z_n.shape[:2])
    return z_n, mu, sigma, wo.transpose(1, 2) @ u_prime


def targets_of(tokens: Tensor) -> Tensor:
    """Next-token targets of ``tokens`` [B, T]: ``[N = B·(T−1)]``."""
    return tokens[:, 1:].reshape(-1)


class FrozenTransformer:
    """The model's pieces at w*, detached: embedding, blocks, LayerNorms and the fused
    loss, for frozen prefixes, frozen later blocks and L_B(w*)."""

    def __init__(self, model: AttentionOnlyTransformer, numerics: Numerics | None = None) -> None:
        if model.cfg.mlp:
            raise ValueError("the head fast path needs an attention-only model (mlp=False)")
        self.model, self.cfg = model, model.cfg
        self.numerics = numerics or Numerics()
        self.params = frozen_state(model)
        w = self.params["embed.weight"]
        mm_dtype = self.numerics.precision.matmul_dtype(w.dtype)
        # the CPU attention kernel is one of the fused kernels ``compile`` asks for
        cpu_attention = self.numerics.compile and cpu_kernels.attention_usable(
            w.device, w.dtype, self.cfg.d_head)
        self.shape = Shape(self.cfg.n_heads, self.cfg.d_head, self.cfg.positional == "shortformer",
                           cpu_attention)
        self.w_unembed, self.b_unembed = self.params["unembed.weight"], self.params["unembed.bias"]
        unembed = self.numerics.unembed_precision
        self.w_unembed_mm = (  # [V, D]; the int8 loss keeps its own copies (int8_weights)
            self.w_unembed if unembed.behaviour.int8_unembedding
            else self.w_unembed.to(unembed.matmul_dtype(self.w_unembed.dtype)))
        self.blocks: list[BlockWeights] = []
        for layer in range(self.cfg.n_layers):
            ln_w, ln_b = self.ln_params(f"blocks.{layer}.ln")
            p = f"blocks.{layer}.attn"
            self.blocks.append((ln_w, ln_b, self.params[f"{p}.qkv.weight"].to(mm_dtype),
                                self.params[f"{p}.qkv.bias"],
                                self.params[f"{p}.out.weight"].to(mm_dtype),
                                self.params[f"{p}.out.bias"]))
        self.ln_final = self.ln_params("ln_final")

    def ln_params(self, name: str) -> tuple[Tensor | None, Tensor | None]:
        if not self.cfg.layer_norm:
            return None, None
        return self.params[f"{name}.weight"], self.params[f"{name}.bias"]

    def embed(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """(residual stream after embedding [B, T, D], shortformer positions [T, D] or None)."""
        T = tokens.shape[-1]
        x = F.embedding(tokens, self.params["embed.weight"])  # [B, T, D]
        pos = self.params["pos_embed.weight"][:T]  # [T, D]
        if self.shape.shortformer:
            return x, pos
        return x + pos, None

    def ce(self, h: Tensor, targets: Tensor, ref: Int8Unembedding | None = None) -> Tensor:
        """Per-row mean next-token loss [R] of final hidden states h [R, N, D] with
        ``targets`` [N] (shared by all rows; ``targets_of``) or [R, N] (not int8). With the
        int8 unembedding, ``ref`` is w*'s side (``int8_reference``); without one, h is
        [1, N, D] at w* and is its own reference."""
        n = self.numerics
        if n.unembed_precision.behaviour.int8_unembedding:
            if ref is None:
                if h.shape[0] != 1:
                    raise ValueError("the int8 unembedding of several rows needs a reference")
                ref = self.int8_reference(h[0])
            return int8_linear_cross_entropy(h, self.w_unembed, self.b_unembed, targets, ref,
                                             n.chunk)
        return linear_cross_entropy(h, self.w_unembed, self.b_unembed, targets, n.chunk,
                                    precision=n.unembed_precision, compile=n.compile,
                                    weight_mm=self.w_unembed_mm)

    @functools.cached_property
    def int8_weights(self) -> Int8Weights:
        """The unembedding as the int8 loss multiplies it (computed on first use)."""
        return int8_weights(self.w_unembed)

    def int8_reference(self, h_star: Tensor) -> Int8Unembedding:
        """The int8 unembedding's w* side for final hidden states ``h_star`` [N, D]."""
        return int8_unembedding(h_star, self.int8_weights, self.b_unembed)

    def hidden_from(self, layer: int, x: Tensor, tokens: Tensor) -> Tensor:
        """Final hidden states [1, B·(T−1), D] (positions that predict a token) of the
        residual stream ``x`` [B, T, D] entering block ``layer``."""
        pos_qk = self.embed(tokens[:1])[1]
        for weights in self.blocks[layer:]:
            x = block(x, pos_qk, weights, self.shape)
        return layer_norm(x[:, :-1], *self.ln_final).reshape(1, -1, self.cfg.d_model)

    def loss_from(self, layer: int, x: Tensor, tokens: Tensor) -> Tensor:
        """Mean next-token loss (scalar) of the residual stream ``x`` [B, T, D] entering
        block ``layer`` (``n_layers``: entering the final LN)."""
        return self.ce(self.hidden_from(layer, x, tokens), targets_of(tokens))[0]

    @torch.no_grad()
    def loss(self, tokens: Tensor) -> Tensor:
        """``lm_loss(model(tokens), tokens)`` at w* without [B, T, V] logits (scalar)."""
        return self.loss_from(0, self.embed(tokens)[0], tokens)


class HeadLayerStep:
    """``step(theta[R, d], prefix, need_star)`` for rows = sampled heads × C chains of
    layer ``layer``, head-major (row r = head ``heads[r // C]``, chain ``r % C``), on one
    minibatch shared by all chains or (``prefix(tokens [C, B, T])``) one per chain."""

    def __init__(
        self,
        model: AttentionOnlyTransformer,
        layer: int,
        heads: list[int],
        numerics: Numerics | None = None,
        max_rows: int | None = None,
        lowrank: bool = False,
    ) -> None:
        """``max_rows``: at most this many rows per forward/backward pass (default
        ``default_max_rows``, at least one chain of every head)."""
        cfg: TransformerConfig = model.cfg
        # The rank-k unembedding (docs/fastpath.md §1) applies to the last layer only.
        self.lowrank = lowrank and layer == cfg.n_layers - 1
        self.fm = FrozenTransformer(model, loss_numerics(numerics or Numerics(), self.lowrank))
        self.cfg, self.layer, self.heads = cfg, layer, list(heads)
        self.max_rows = max_rows
        D, k = cfg.d_model, cfg.d_head
        out_w = self.fm.params[f"blocks.{layer}.attn.out.weight"]  # [D, H·k]
        self.wo_star = torch.stack([out_w[:, h * k : (h + 1) * k] for h in self.heads])  # [H, D, k]
        self.hidden, self.lowrank_inputs = rows_hidden, rows_lowrank_inputs
        if self.fm.numerics.compile:
            def fuse(fn):
                return torch._dynamo.config.patch(recompile_limit=32)(
                    torch.compile(fn, dynamic=False))
            self.hidden, self.lowrank_inputs = fuse(rows_hidden), fuse(rows_lowrank_inputs)
        if self.lowrank:
            w_u, b_u = self.fm.w_unembed, self.fm.b_unembed
            g, b = self.fm.ln_final
            g = w_u.new_ones(D) if g is None else g
            b = w_u.new_zeros(D) if b is None else b
            # U′ = diag(g)·W_Uᵀ [D, V], c = b_LN·W_Uᵀ + b_U [V]: logits = (resid − μ)/σ·U′ + c
            self.u_prime = (g[:, None] * w_u.t()).contiguous()
            self.c = b @ w_u.t() + b_u
            self.ms = self.wo_star.transpose(1, 2) @ self.u_prime  # [H, k, V]

    @torch.no_grad()
    def prefix(self, tokens: Tensor) -> LayerPrefix:
        """Everything of a minibatch ``tokens`` [B, T] that no sampled weight changes; for
        ``tokens`` [G, B, T], of G minibatches at once (one per chain: independent
        minibatches), stacked as [G·B, T] (``LayerPrefix.groups``)."""
        cfg, L, fm = self.cfg, self.layer, self.fm
        groups = tokens.shape[0] if tokens.dim() == 3 else 1
        tokens = tokens.reshape(-1, tokens.shape[-1])
        B, T = tokens.shape
        H_all, k, D, A = cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_attn
        x, pos_qk = fm.embed(tokens)
        for weights in fm.blocks[:L]:
            x = block(x, pos_qk, weights, fm.shape)
        ln_w, ln_b = fm.ln_params(f"blocks.{L}.ln")
        x_v = layer_norm(x, ln_w, ln_b)
        x_qk = x_v if pos_qk is None else layer_norm(x + pos_qk, ln_w, ln_b)
        # Layer L at w* (fp32 like the sampled rows), written out so each head's z* is kept.
        w, b = fm.params[f"blocks.{L}.attn.qkv.weight"], fm.params[f"blocks.{L}.attn.qkv.bias"]
        q, kk = F.linear(x_qk, w[: 2 * A], b[: 2 * A]).split(A, dim=-1)  # [B, T, A] each
        v = F.linear(x_v, w[2 * A :], b[2 * A :])

        def heads_first(t: Tensor) -> Tensor:  # [B, T, A] → [B, H, T, k]
            return t.view(B, T, H_all, k).transpose(1, 2)

        z_all = F.scaled_dot_product_attention(
            heads_first(q), heads_first(kk), heads_first(v), is_causal=True
        )  # [B, H, T, k]
        resid_next = x + F.linear(
            z_all.transpose(1, 2).reshape(B, T, A),
            fm.params[f"blocks.{L}.attn.out.weight"], fm.params[f"blocks.{L}.attn.out.bias"],
        )  # [B, T, D]
        zs = z_all[:, self.heads].transpose(0, 1).contiguous()  # [Hs, B, T, k]
        base = resid_next - torch.einsum("hbtk,hdk->hbtd", zs, self.wo_star)  # [Hs, B, T, D]
        return LayerPrefix(tokens, x_qk.reshape(B * T, D), x_v.reshape(B * T, D),
                           resid_next, zs, base, groups=groups)

    @torch.no_grad()
    def star_loss(self, pre: LayerPrefix) -> Tensor:
        """L_B(w*) on each of the prefix's minibatches ([G]), computed once per prefix."""
        if pre.star is None:
            G = pre.groups
            if self.fm.numerics.unembed_precision.behaviour.int8_unembedding:  # rows' own ref
                self.int8_ref(pre)
                pre.star = torch.stack([
                    self.fm.ce(part.int8_ref.h[None], targets_of(part.tokens), part.int8_ref)[0]
                    for part in (pre.select_groups(g, g + 1) for g in range(G))])
            else:
                h = self.fm.hidden_from(self.layer + 1, pre.resid_next, pre.tokens)
                targets = pre.group_targets()
                pre.star = self.fm.ce(h.view(G, -1, h.shape[-1]), targets[0] if G == 1
                                      else targets)
        return pre.star

    def int8_ref(self, pre: LayerPrefix) -> Int8Unembedding:
        """The int8 unembedding's w* side for the prefix's minibatch, once per prefix."""
        if pre.int8_ref is None:
            h = self.fm.hidden_from(self.layer + 1, pre.resid_next, pre.tokens)
            pre.int8_ref = self.fm.int8_reference(h[0])
        return pre.int8_ref

    def pack_star(self) -> Tensor:
        """Each sampled head's w* flattened as ``rows_head_output`` reads it: ``[H, d]``."""
        D, k, H = self.cfg.d_model, self.cfg.d_head, self.cfg.n_heads
        p = f"blocks.{self.layer}.attn"
        qkv_w = self.fm.params[f"{p}.qkv.weight"].view(3, H, k, D)
        qkv_b = self.fm.params[f"{p}.qkv.bias"].view(3, H, k)
        return torch.stack([
            torch.cat([self.wo_star[i].reshape(-1), qkv_b[:, h].reshape(-1),
                       qkv_w[:, h].reshape(-1)])
            for i, h in enumerate(self.heads)
        ])

    def row_losses(self, theta: Tensor, pre: LayerPrefix) -> Tensor:
        """Per-row L_B [R] at ``theta`` [R, d] (differentiable in theta); rows head-major,
        the same number of chains C for every head of ``self.heads``; with ``pre.groups``
        = G > 1, G = C and chain c's rows see group c."""
        fm = self.fm
        if self.lowrank:
            return self._lowrank_losses(theta, pre)
        pos_qk = fm.embed(pre.tokens[:1])[1]
        G = pre.groups
        h = self.hidden(theta, pre.x_qk, pre.x_v, pre.base, pos_qk,
                        tuple(fm.blocks[self.layer + 1 :]), *fm.ln_final, fm.shape, G)
        targets = pre.group_targets()  # [G, N]
        if not fm.numerics.unembed_precision.behaviour.int8_unembedding:
            # G > 1: row h·G + g takes group g's targets
            return fm.ce(h, targets[0] if G == 1 else targets.repeat(len(self.heads), 1))
        self.int8_ref(pre)  # one int8 loss per group: its reference holds the group's tokens
        if G == 1:
            return fm.ce(h, targets[0], pre.int8_ref)
        hs = h.view(len(self.heads), G, *h.shape[1:]).unbind(1)  # group g: [H, N, D]
        return torch.stack([fm.ce(hs[g], targets[g], pre.select_groups(g, g + 1).int8_ref)
                            for g in range(G)], dim=1).view(-1)

    def _lowrank_losses(self, theta: Tensor, pre: LayerPrefix) -> Tensor:
        H, k, D, G = len(self.heads), self.cfg.d_head, self.cfg.d_model, pre.groups
        z_n, mu, sigma, m = self.lowrank_inputs(theta, pre.x_qk, pre.x_v, pre.base,
                                                self.u_prime, self.cfg.layer_norm,
                                                self.fm.shape.cpu_attention, G)
        n = self.fm.numerics
        # The loss's A = resid*·U′ and targets are shared by its rows: one call per group
        # (with G > 1 its H rows), the rows' inputs above computed for all groups at once.
        B = pre.tokens.shape[0] // G
        resid = pre.resid_next[:, :-1].reshape(G, -1, D)  # [G, N, D]
        zs = pre.zs.view(H, G, B, -1, k)[:, :, :, :-1].reshape(H, G, -1, k)  # [H, G, N, k]
        targets = pre.group_targets()
        inputs = (z_n, mu, sigma, m)
        per_group = (x.view(H, G, *x.shape[1:]).unbind(1) for x in inputs)
        groups = [inputs] if G == 1 else list(zip(*per_group, strict=True))  # [H, ...] each
        losses = [
            lowrank_cross_entropy(
                *groups[g], resid[g], self.u_prime, self.c, zs[:, g], self.ms, targets[g],
                LOWRANK_CHUNK, precision=n.precision.head_terms, compile=n.compile)
            for g in range(G)
        ]
        return losses[0] if G == 1 else torch.stack(losses, dim=1).view(-1)

    def default_max_rows(self, tokens: Tensor) -> int:
        """Rows per pass: PART_NUMBERS / (B·T·D) for a row's minibatch ``tokens`` [B, T],
        or rank-k LOWRANK_PART_NUMBERS / (chunk·V)."""
        if self.lowrank:
            return max(1, LOWRANK_PART_NUMBERS // (LOWRANK_CHUNK * self.cfg.d_vocab))
        return max(1, PART_NUMBERS // max(1, tokens.numel() * self.cfg.d_model))

    def __call__(
        self, theta: Tensor, pre: LayerPrefix, need_star: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(∇L_B [R, d], L_B [R], L_B(w*) [R] or None) for every head of ``self.heads`` ×
        C chains, head-major: rows sharing ``pre``'s batch, or with ``pre.groups`` = C
        (independent minibatches) chain c's rows on group c, all in one pass."""
        R, H, G = theta.shape[0], len(self.heads), pre.groups
        C = R // H
        if G not in (1, C):
            raise ValueError(f"a prefix of {G} minibatches for {C} chains (needs 1 or C)")
        grad, loss = torch.empty_like(theta), theta.new_empty(R)
        if G > 1 and self.fm.numerics.unembed_precision.behaviour.int8_unembedding:
            self.int8_ref(pre)  # once per prefix; the parts below take slices of it
        # Rows go in parts of whole chains (every head's row of a chain together), so each
        # part stays head-major; by default a part's activations hold about PART_NUMBERS.
        max_rows = self.max_rows or self.default_max_rows(pre.tokens[: len(pre.tokens) // G])
        per_part = max(1, max_rows // H)
        for c0 in range(0, C, per_part):
            chains = range(c0, min(C, c0 + per_part))
            rows = torch.tensor([h * C + c for h in range(H) for c in chains])
            part_pre = pre if G == 1 else pre.select_groups(chains.start, chains.stop)
            t = theta[rows].detach().requires_grad_(True)
            with torch.enable_grad():
                part_loss = self.row_losses(t, part_pre)
                (part_grad,) = torch.autograd.grad(part_loss.sum(), t)
            grad[rows], loss[rows] = part_grad, part_loss.detach()
        star = None
        if need_star:  # [G]: rows head-major, row h·C + c on group c (or the one group)
            star = self.star_loss(pre)
            star = star.expand(R) if G == 1 else star.repeat(H)
        return grad, loss, star


def step_flops(cfg: TransformerConfig, layer: int, rows: int, n_heads: int, batch: int,
               seq: int, lowrank: bool = False, groups: int = 1) -> dict[str, float]:
    """Matmul FLOPs (2 per multiply-add) of one ``HeadLayerStep`` call, by part, for
    ``rows`` (head, chain) rows of ``n_heads`` heads on ``groups`` minibatches [batch, seq]
    (1: shared by all rows; independent minibatches: one per chain, rows / groups each).

    Counts the work the fast path does, forward and backward, causal attention as half of
    the T×T products (the useful work); elementwise work (softmax, LayerNorm) is not
    counted. ``prefix`` and ``star`` (L_B(w*)) are computed once per minibatch and shared
    by its rows, as is the rank-k loss's A = resid*·U′."""
    D, k, V, H, A = cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_heads, cfg.d_attn
    BT, N = batch * seq, batch * (seq - 1)
    pairs = batch * seq * (seq + 1) / 2  # causal (query, key) pairs per head
    R = rows
    attn_head = 2 * 2 * pairs * k  # q·kᵀ and p·v of one head, forward
    later = cfg.n_layers - layer - 1
    block_fwd = 2 * BT * D * 3 * A + H * attn_head + 2 * BT * A * D
    f: dict[str, float] = {}
    # sampled head: q, k, v (forward + weight grads), attention (backward ≈ 2× forward),
    # W_O (forward, ∂z and ∂W_O)
    f["head"] = R * (2 * 2 * BT * D * 3 * k + 3 * attn_head + 3 * 2 * BT * k * D)
    # frozen later blocks: forward, and backward to their inputs only
    f["later_blocks"] = R * later * (2 * block_fwd + H * attn_head)
    if lowrank and later == 0:
        # A = resid*·U′ once per minibatch (shared by its rows); per row (zs_h | z − zs_h)·
        # (M − Ms_h; M), ∂(z | μ | σ) and ∂M, and M = W_Oᵀ·U′ forward and backward
        f["unembed"] = groups * 2 * N * D * V + R * (
            2 * N * V * (2 * k + (k + 2) + k) + 2 * 2 * k * D * V)
    else:
        f["unembed"] = R * 2 * 2 * N * D * V  # logits and ∂h
    f["prefix"] = groups * (layer * block_fwd + block_fwd)
    f["star"] = groups * (later * block_fwd + 2 * N * D * V)
    return f
