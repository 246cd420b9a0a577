"""An attention-only transformer in one readable file (nanoGPT-style), the paper's model.

References: Elhage et al. 2021, "A Mathematical Framework for Transformer Circuits"
(attention-only models, induction heads); Press et al. 2021, "Shortformer" (positions
added to queries and keys only); Karpathy's nanoGPT ``model.py`` (fused QKV layout).

Per layer, all heads' Q, K, V projections live in one fused ``qkv`` Linear and all heads'
outputs in one ``out`` Linear (nanoGPT's ``c_attn`` / ``c_proj``):

    qkv.weight [3·H·d_head, d_model]   rows: [Q of heads 0..H-1 | K of heads … | V of heads …]
    out.weight [d_model, H·d_head]     columns h·d_head:(h+1)·d_head belong to head h

so head h's W_Q is ``qkv.weight[h·d_head:(h+1)·d_head]``, its W_K the same rows offset by
H·d_head, its W_V offset by 2·H·d_head, and its W_O the matching columns of ``out.weight``.
``head_views`` returns TransformerLens-style head-major views of these.

One block (pre-LN, ``p`` the learned position embedding, ``x`` the residual stream):

    shortformer:  q, k = LN(x + p)·W_Q, LN(x + p)·W_K;   v = LN(x)·W_V
    residual:     p is added to x once after the token embedding; q, k, v from LN(x)
    x ← x + Σ_h softmax(q_h k_hᵀ / √d_head + causal mask) v_h W_O^h + b_O

The forward is the hot path of SGLD sampling (``torch.func.vmap`` over chains), so it has
no in-place ops on parameters, no data-dependent Python branches and no ``.item()``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

Positional = Literal["shortformer", "residual"]
#: z [batch, head, pos, d_head] → the z to use: a patch of one layer's heads' outputs
ZPatch = Callable[[Tensor], Tensor]


class TransformerConfig(BaseModel):
    """Shape of an attention-only transformer; defaults are the small CPU model.

    The paper's model is ``TransformerConfig(d_model=256, d_head=32, n_ctx=1024,
    d_vocab=5000)`` (2 layers × 8 heads, pre-LN, shortformer positions, no MLP).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    n_layers: int = Field(2, ge=1, description="Number of attention blocks.")
    n_heads: int = Field(8, ge=1, description="Heads per block.")
    d_model: int = Field(128, ge=1, description="Residual stream width.")
    d_head: int = Field(16, ge=1, description="Width of each head's Q, K, V.")
    n_ctx: int = Field(64, ge=2, description="Maximum sequence length (positions).")
    d_vocab: int = Field(512, ge=2, description="Vocabulary size.")
    positional: Positional = Field(
        "shortformer",
        description="shortformer: position embeddings added to query/key inputs only; "
        "residual: added to the residual stream after the token embedding.",
    )
    layer_norm: bool = Field(True, description="Pre-LN in blocks and before the unembedding.")
    mlp: bool = Field(False, description="Add a GELU MLP after attention in each block.")
    d_mlp: int | None = Field(None, ge=1, description="MLP width (default 4·d_model).")
    init_std: float = Field(0.02, gt=0, description="Std of the normal weight init.")

    @model_validator(mode="after")
    def _mlp_width(self) -> TransformerConfig:
        if self.d_mlp is not None and not self.mlp:
            raise ValueError("d_mlp is set but mlp is false: enable mlp or drop d_mlp")
        return self

    @property
    def d_attn(self) -> int:
        """H·d_head, the width of all heads' Q (or K, or V) together."""
        return self.n_heads * self.d_head

    @property
    def head_ids(self) -> list[str]:
        """Every head as ``"L:H"``, layer-major."""
        return [f"{layer}:{h}" for layer in range(self.n_layers) for h in range(self.n_heads)]

    @property
    def params_per_head(self) -> int:
        """W_Q, W_K, W_V, W_O slices and b_Q, b_K, b_V: 4·d_model·d_head + 3·d_head."""
        return 4 * self.d_model * self.d_head + 3 * self.d_head


def _under_functorch(x: Tensor) -> bool:
    """Whether ``x`` is a torch.func (vmap/grad) wrapper rather than a plain tensor."""
    return bool(torch._C._functorch.is_functorch_wrapped_tensor(x))


class Attention(nn.Module):
    """Causal multi-head attention with fused ``qkv`` and ``out`` projections."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.n_heads, self.d_head, self.d_attn = cfg.n_heads, cfg.d_head, cfg.d_attn
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_attn)
        self.out = nn.Linear(cfg.d_attn, cfg.d_model)

    def forward(
        self, x_qk: Tensor, x_v: Tensor, return_pattern: bool = False,
        z_patch: ZPatch | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x_qk``/``x_v`` [batch, pos, d_model] are the (normalised) query-key and value
        inputs; returns the output [batch, pos, d_model] and, if asked, the attention
        pattern [batch, head, query_pos, key_pos]. ``z_patch`` maps the heads' outputs
        z [batch, head, pos, d_head] (before W_O) to the ones used: to read or ablate them."""
        B, T, _ = x_qk.shape
        H, dh, A = self.n_heads, self.d_head, self.d_attn
        w, b = self.qkv.weight, self.qkv.bias
        if x_qk is x_v:  # one matmul when queries, keys and values read the same input
            q, k, v = F.linear(x_qk, w, b).split(A, dim=-1)  # 3 × [B, T, A]
        else:
            q, k = F.linear(x_qk, w[: 2 * A], b[: 2 * A]).split(A, dim=-1)
            v = F.linear(x_v, w[2 * A :], b[2 * A :])
        q = q.view(B, T, H, dh).transpose(1, 2)  # [B, H, T, dh]
        k = k.view(B, T, H, dh).transpose(1, 2)
        v = v.view(B, T, H, dh).transpose(1, 2)
        # The fused SDPA kernel has no vmap batching rule (it would loop over chains), so
        # under torch.func transforms and when patterns are wanted use explicit softmax.
        if return_pattern or _under_functorch(q):
            scores = (q / math.sqrt(dh)) @ k.transpose(-2, -1)  # [B, H, T(query), T(key)]
            causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
            pattern = scores.masked_fill(~causal, float("-inf")).softmax(dim=-1)
            z = pattern @ v  # [B, H, T, dh]
            pattern = pattern if return_pattern else None
        else:
            pattern = None
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        if z_patch is not None:
            z = z_patch(z)
        z = z.transpose(1, 2).reshape(B, T, A)  # heads side by side, as out.weight's columns
        return self.out(z), pattern


class Block(nn.Module):
    """Pre-LN attention block, optionally followed by a pre-LN MLP."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.attn = Attention(cfg)
        self.mlp: nn.Module | None = None
        if cfg.mlp:
            d_mlp = cfg.d_mlp or 4 * cfg.d_model
            self.ln_mlp = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
            self.mlp = nn.Sequential(
                nn.Linear(cfg.d_model, d_mlp), nn.GELU(), nn.Linear(d_mlp, cfg.d_model)
            )

    def forward(
        self, x: Tensor, pos_qk: Tensor | None, return_pattern: bool = False,
        z_patch: ZPatch | None = None,
    ) -> tuple[Tensor, Tensor | None]:
        """``x`` [batch, pos, d_model]; ``pos_qk`` [pos, d_model] (shortformer) or None;
        ``z_patch`` as in ``Attention.forward``."""
        x_v = self.ln(x)
        x_qk = x_v if pos_qk is None else self.ln(x + pos_qk)
        attn_out, pattern = self.attn(x_qk, x_v, return_pattern, z_patch)
        x = x + attn_out
        if self.mlp is not None:
            x = x + self.mlp(self.ln_mlp(x))
        return x, pattern


class AttentionOnlyTransformer(nn.Module):
    """Token + learned position embeddings, ``n_layers`` blocks, final LN, unembedding.

    Parameter names (the contract used by component selections and checkpoints):
    ``embed.weight``, ``pos_embed.weight``, ``blocks.{L}.ln.{weight,bias}``,
    ``blocks.{L}.attn.qkv.{weight,bias}``, ``blocks.{L}.attn.out.{weight,bias}``,
    ``ln_final.{weight,bias}``, ``unembed.{weight,bias}``.
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.d_vocab, cfg.d_model)
        self.pos_embed = nn.Embedding(cfg.n_ctx, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.ln_final = nn.LayerNorm(cfg.d_model) if cfg.layer_norm else nn.Identity()
        self.unembed = nn.Linear(cfg.d_model, cfg.d_vocab)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """N(0, init_std²) weights, zero biases, unit LN gains; residual-writing
        projections scaled by 1/√(2·n_layers) as in GPT-2."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if ".ln" in name or name.startswith("ln_final"):
                p.fill_(1.0 if name.endswith("weight") else 0.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name.endswith("attn.out.weight") or name.endswith("mlp.2.weight"):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layers))
            else:
                p.normal_(0.0, std)

    def forward(
        self, tokens: Tensor, return_patterns: bool = False, *,
        start_layer: int = 0, resid: Tensor | None = None,
        z_patches: Mapping[int, ZPatch] | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """``tokens`` [batch, pos] → logits [batch, pos, d_vocab] (next-token scores).

        With ``return_patterns=True`` also returns the attention patterns
        [layer, batch, head, query_pos, key_pos] (uses explicit softmax attention).
        ``resid`` [batch, pos, d_model], the residual stream entering layer ``start_layer``
        (``residual_before``), resumes the forward there: blocks below it are skipped, so
        work on one layer's heads computes the frozen prefix once. ``z_patches`` maps a
        layer to a ``ZPatch`` of its heads' outputs (reading or ablating them).
        """
        if resid is None and start_layer:
            raise ValueError("start_layer needs resid, the stream entering that layer")
        x, pos_qk = self._embed(tokens)
        if resid is not None:
            x = resid
        patches = z_patches or {}
        patterns = []
        for layer, block in enumerate(self.blocks):
            if layer < start_layer:
                continue
            x, pattern = block(x, pos_qk, return_patterns, patches.get(layer))
            patterns.append(pattern)
        logits = self.unembed(self.ln_final(x))  # [B, T, V]
        if return_patterns:
            return logits, torch.stack(patterns)
        return logits

    def _embed(self, tokens: Tensor) -> tuple[Tensor, Tensor | None]:
        """The stream entering block 0 [B, T, D], and the positions added to queries and
        keys [T, D] (shortformer) or None (residual: already in the stream)."""
        pos = self.pos_embed.weight[: tokens.shape[-1]]  # [T, D]
        x = self.embed(tokens)  # [B, T, D]
        if self.cfg.positional == "shortformer":
            return x, pos
        return x + pos, None

    @torch.no_grad()
    def residual_before(self, layer: int, tokens: Tensor) -> Tensor:
        """The residual stream [batch, pos, d_model] entering block ``layer``."""
        x, pos_qk = self._embed(tokens)
        for block in self.blocks[:layer]:
            x, _ = block(x, pos_qk)
        return x

    @torch.no_grad()
    def attention_patterns(self, tokens: Tensor) -> Tensor:
        """Attention patterns [layer, batch, head, query_pos, key_pos] on ``tokens``."""
        return self.forward(tokens, return_patterns=True)[1]

    def head_views(self, layer: int) -> dict[str, Tensor]:
        """Head-major views of layer ``layer``'s weights (TransformerLens convention):
        ``W_Q, W_K, W_V`` [head, d_model, d_head], ``W_O`` [head, d_head, d_model],
        ``b_Q, b_K, b_V`` [head, d_head], ``b_O`` [d_model]."""
        attn = self.blocks[layer].attn
        H, dh, D = self.cfg.n_heads, self.cfg.d_head, self.cfg.d_model
        w = attn.qkv.weight.view(3, H, dh, D).transpose(-1, -2)  # [3, H, D, dh]
        b = attn.qkv.bias.view(3, H, dh)
        w_o = attn.out.weight.view(D, H, dh).permute(1, 2, 0)  # [H, dh, D]
        return {
            "W_Q": w[0], "W_K": w[1], "W_V": w[2], "W_O": w_o,
            "b_Q": b[0], "b_K": b[1], "b_V": b[2], "b_O": attn.out.bias,
        }

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def lm_loss(logits: Tensor, tokens: Tensor) -> Tensor:
    """Mean next-token cross-entropy: position t predicts token t+1.

    ``logits`` [batch, pos, vocab], ``tokens`` [batch, pos] → scalar
    −(1/(B·(T−1))) Σ_{b,t<T−1} log softmax(logits[b, t])[tokens[b, t+1]].
    """
    return F.cross_entropy(
        logits[..., :-1, :].reshape(-1, logits.shape[-1]), tokens[..., 1:].reshape(-1)
    )
