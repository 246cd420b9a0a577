"""rllc's attention-only transformer as a TransformerLens ``HookedTransformer``.

Two layers: a weight mapping that is plain torch (testable without TransformerLens) and a
thin builder that imports TransformerLens lazily.

    cfg_dict = hooked_transformer_config(model.cfg)           # HookedTransformerConfig fields
    tl_state = to_tl_state_dict(model.state_dict(), model.cfg)  # TL names and shapes
    tl = to_hooked_transformer(model)                         # needs transformer-lens 3.x
    max_logit_diff(model, tl, tokens)                         # ≈ 1e-6 in float32

The mapping (``d`` = d_model, ``H`` heads of width ``dh``; see ``models/transformer.py`` for
rllc's fused layout):

    embed.weight [V, d]                 → embed.W_E [V, d]
    pos_embed.weight [n_ctx, d]         → pos_embed.W_pos [n_ctx, d]
    blocks.L.ln.{weight,bias}           → blocks.L.ln1.{w,b}
    blocks.L.attn.qkv.weight [3·H·dh, d] → blocks.L.attn.W_{Q,K,V} [H, d, dh]  (rows of head h)
    blocks.L.attn.qkv.bias [3·H·dh]     → blocks.L.attn.b_{Q,K,V} [H, dh]
    blocks.L.attn.out.weight [d, H·dh]  → blocks.L.attn.W_O [H, dh, d]     (columns of head h)
    blocks.L.attn.out.bias [d]          → blocks.L.attn.b_O [d]
    blocks.L.ln_mlp.{weight,bias}       → blocks.L.ln2.{w,b}
    blocks.L.mlp.0.{weight,bias}        → blocks.L.mlp.W_in [d, d_mlp], b_in
    blocks.L.mlp.2.{weight,bias}        → blocks.L.mlp.W_out [d_mlp, d], b_out
    ln_final.{weight,bias}              → ln_final.{w,b}
    unembed.weight [V, d], bias [V]     → unembed.W_U [d, V], b_U [V]

Supported: ``positional="residual"`` with or without LayerNorm (TL's "standard" positions),
``positional="shortformer"`` without LayerNorm (TL's "shortformer"), with or without the
GELU MLP. Refused: shortformer *with* LayerNorm, because TransformerLens adds the
positions after ``ln1`` (q = LN(x) + p) where rllc adds them before (q = LN(x + p)), so no
choice of weights gives the same function.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from .transformer import AttentionOnlyTransformer, TransformerConfig

#: What to do when TransformerLens is missing.
INSTALL_HINT = (
    "TransformerLens is not installed: run `make bench` (it installs the `bench` extra, "
    "transformer-lens==3.9.0), or `pip install -c constraints.txt -e '.[bench]'`"
)

#: rllc's nn.LayerNorm default, which TransformerLens must use too.
LN_EPS = 1e-5


class UnsupportedConversion(ValueError):
    """The rllc model has no TransformerLens ``HookedTransformer`` with the same function."""


def check_convertible(cfg: TransformerConfig) -> None:
    """Raise :class:`UnsupportedConversion` when ``cfg`` has no exact TL equivalent."""
    if cfg.positional == "shortformer" and cfg.layer_norm:
        raise UnsupportedConversion(
            "an rllc shortformer model with layer_norm=True has no TransformerLens "
            "equivalent: rllc adds the positions before the block's LayerNorm "
            "(q = LN(x + p)), TransformerLens after it (q = LN(x) + p). Convert "
            "positional='residual' models, or shortformer models with layer_norm=False."
        )


def _d_mlp(cfg: TransformerConfig) -> int:
    return cfg.d_mlp or 4 * cfg.d_model


def hooked_transformer_config(
    cfg: TransformerConfig, device: str = "cpu", dtype: torch.dtype = torch.float32
) -> dict[str, Any]:
    """The ``HookedTransformerConfig`` fields of the TL model with ``cfg``'s function, as a
    plain dict (no ``seed``: TransformerLens would reseed the global RNGs with it)."""
    check_convertible(cfg)
    fields: dict[str, Any] = {
        "n_layers": cfg.n_layers,
        "n_heads": cfg.n_heads,
        "d_model": cfg.d_model,
        "d_head": cfg.d_head,
        "n_ctx": cfg.n_ctx,
        "d_vocab": cfg.d_vocab,
        "attn_only": not cfg.mlp,
        "d_mlp": _d_mlp(cfg) if cfg.mlp else None,
        "act_fn": "gelu" if cfg.mlp else None,  # F.gelu, exact erf, as rllc's nn.GELU()
        "normalization_type": "LN" if cfg.layer_norm else None,
        "eps": LN_EPS,
        "positional_embedding_type": "standard" if cfg.positional == "residual"
        else "shortformer",
        "device": str(device),
        "dtype": dtype,
    }
    return fields


def tl_shapes(cfg: TransformerConfig) -> dict[str, tuple[int, ...]]:
    """Name → shape of every parameter of the TL model :func:`to_tl_state_dict` fills."""
    check_convertible(cfg)
    D, H, dh, V = cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab
    shapes: dict[str, tuple[int, ...]] = {"embed.W_E": (V, D), "pos_embed.W_pos": (cfg.n_ctx, D)}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        if cfg.layer_norm:
            shapes |= {p + "ln1.w": (D,), p + "ln1.b": (D,)}
        shapes |= {p + f"attn.W_{x}": (H, D, dh) for x in "QKV"}
        shapes |= {p + f"attn.b_{x}": (H, dh) for x in "QKV"}
        shapes |= {p + "attn.W_O": (H, dh, D), p + "attn.b_O": (D,)}
        if cfg.mlp:
            M = _d_mlp(cfg)
            if cfg.layer_norm:
                shapes |= {p + "ln2.w": (D,), p + "ln2.b": (D,)}
            shapes |= {p + "mlp.W_in": (D, M), p + "mlp.b_in": (M,),
                       p + "mlp.W_out": (M, D), p + "mlp.b_out": (D,)}
    if cfg.layer_norm:
        shapes |= {"ln_final.w": (D,), "ln_final.b": (D,)}
    shapes |= {"unembed.W_U": (D, V), "unembed.b_U": (V,)}
    return shapes


def _rllc_names(cfg: TransformerConfig) -> set[str]:
    """The parameter names of ``AttentionOnlyTransformer(cfg)`` (without building it)."""
    names = {"embed.weight", "pos_embed.weight", "unembed.weight", "unembed.bias"}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        names |= {p + f"attn.{m}.{t}" for m in ("qkv", "out") for t in ("weight", "bias")}
        if cfg.layer_norm:
            names |= {p + "ln.weight", p + "ln.bias"}
        if cfg.mlp:
            names |= {p + f"mlp.{i}.{t}" for i in (0, 2) for t in ("weight", "bias")}
            if cfg.layer_norm:
                names |= {p + "ln_mlp.weight", p + "ln_mlp.bias"}
    if cfg.layer_norm:
        names |= {"ln_final.weight", "ln_final.bias"}
    return names


def _check_names(state: Mapping[str, Tensor], expected: set[str], what: str) -> None:
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise ValueError(f"not a state dict of {what}: missing {missing}, unexpected {extra}")


def to_tl_state_dict(state: Mapping[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """rllc's state dict (``AttentionOnlyTransformer(cfg).state_dict()``) in TransformerLens
    names and shapes (:func:`tl_shapes`). Values are views of ``state``'s tensors where a
    reshape allows it: copy (``load_state_dict`` does) before changing them."""
    check_convertible(cfg)
    _check_names(state, _rllc_names(cfg), f"an rllc model with {cfg!r}")
    D, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    out = {"embed.W_E": state["embed.weight"], "pos_embed.W_pos": state["pos_embed.weight"]}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        if cfg.layer_norm:
            out[p + "ln1.w"], out[p + "ln1.b"] = state[p + "ln.weight"], state[p + "ln.bias"]
        # rows [Q of heads 0..H-1 | K … | V …], each head's d_head rows: [3, H, dh, D]
        w = state[p + "attn.qkv.weight"].reshape(3, H, dh, D).transpose(-1, -2)  # [3, H, D, dh]
        b = state[p + "attn.qkv.bias"].reshape(3, H, dh)
        for i, x in enumerate("QKV"):
            out[p + f"attn.W_{x}"], out[p + f"attn.b_{x}"] = w[i], b[i]
        # columns h·dh:(h+1)·dh of out.weight [D, H·dh] are head h's
        out[p + "attn.W_O"] = state[p + "attn.out.weight"].reshape(D, H, dh).permute(1, 2, 0)
        out[p + "attn.b_O"] = state[p + "attn.out.bias"]
        if cfg.mlp:
            if cfg.layer_norm:
                out[p + "ln2.w"] = state[p + "ln_mlp.weight"]
                out[p + "ln2.b"] = state[p + "ln_mlp.bias"]
            out[p + "mlp.W_in"] = state[p + "mlp.0.weight"].T
            out[p + "mlp.b_in"] = state[p + "mlp.0.bias"]
            out[p + "mlp.W_out"] = state[p + "mlp.2.weight"].T
            out[p + "mlp.b_out"] = state[p + "mlp.2.bias"]
    if cfg.layer_norm:
        out["ln_final.w"], out["ln_final.b"] = state["ln_final.weight"], state["ln_final.bias"]
    out["unembed.W_U"], out["unembed.b_U"] = state["unembed.weight"].T, state["unembed.bias"]
    return out


def from_tl_state_dict(state: Mapping[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """The inverse of :func:`to_tl_state_dict`: TransformerLens parameters (buffers such
    as ``attn.mask`` and ``attn.IGNORE`` are ignored) → an rllc state dict for ``cfg``."""
    check_convertible(cfg)
    shapes = tl_shapes(cfg)
    state = {k: v for k, v in state.items() if k in shapes or not k.endswith((".mask", ".IGNORE"))}
    _check_names(state, set(shapes), f"a TransformerLens model for {cfg!r}")
    wrong = {k: tuple(v.shape) for k, v in state.items() if tuple(v.shape) != shapes[k]}
    if wrong:
        raise ValueError(f"TransformerLens tensors of the wrong shape: {wrong} (want {shapes})")
    D, H, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    out = {"embed.weight": state["embed.W_E"], "pos_embed.weight": state["pos_embed.W_pos"]}
    for layer in range(cfg.n_layers):
        p = f"blocks.{layer}."
        if cfg.layer_norm:
            out[p + "ln.weight"], out[p + "ln.bias"] = state[p + "ln1.w"], state[p + "ln1.b"]
        w = torch.stack([state[p + f"attn.W_{x}"] for x in "QKV"])  # [3, H, D, dh]
        out[p + "attn.qkv.weight"] = w.transpose(-1, -2).reshape(3 * H * dh, D)
        out[p + "attn.qkv.bias"] = torch.stack([state[p + f"attn.b_{x}"] for x in "QKV"]
                                               ).reshape(3 * H * dh)
        out[p + "attn.out.weight"] = state[p + "attn.W_O"].permute(2, 0, 1).reshape(D, H * dh)
        out[p + "attn.out.bias"] = state[p + "attn.b_O"]
        if cfg.mlp:
            if cfg.layer_norm:
                out[p + "ln_mlp.weight"] = state[p + "ln2.w"]
                out[p + "ln_mlp.bias"] = state[p + "ln2.b"]
            out[p + "mlp.0.weight"] = state[p + "mlp.W_in"].T
            out[p + "mlp.0.bias"] = state[p + "mlp.b_in"]
            out[p + "mlp.2.weight"] = state[p + "mlp.W_out"].T
            out[p + "mlp.2.bias"] = state[p + "mlp.b_out"]
    if cfg.layer_norm:
        out["ln_final.weight"], out["ln_final.bias"] = state["ln_final.w"], state["ln_final.b"]
    out["unembed.weight"], out["unembed.bias"] = state["unembed.W_U"].T, state["unembed.b_U"]
    return out


def _import_transformer_lens():
    try:
        import transformer_lens
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return transformer_lens


def to_hooked_transformer(model: AttentionOnlyTransformer, device: str | None = None):
    """A TransformerLens ``HookedTransformer`` (in eval mode, on ``device``, default the
    model's) computing the same logits as ``model``, with copies of its weights.

    Raises :class:`UnsupportedConversion` for configs without a TL equivalent (see the
    module docstring) and ImportError, naming ``make bench``, without TransformerLens."""
    cfg = model.cfg
    check_convertible(cfg)
    tl_mod = _import_transformer_lens()
    weight = model.embed.weight
    device = str(weight.device if device is None else device)
    tl_cfg = tl_mod.HookedTransformerConfig(**hooked_transformer_config(cfg, device, weight.dtype))
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        # "HookedTransformer is deprecated" (TL 3.x); its random init is overwritten, so it
        # must not consume the caller's CPU random stream either
        warnings.filterwarnings("ignore", "HookedTransformer is deprecated",
                                category=DeprecationWarning)
        tl = tl_mod.HookedTransformer(tl_cfg)
    state = to_tl_state_dict(model.state_dict(), cfg)
    missing, unexpected = tl.load_state_dict(
        {k: v.detach().to(device) for k, v in state.items()}, strict=False)
    buffers = {name for name, _ in tl.named_buffers()}
    if unexpected or set(missing) - buffers:
        raise RuntimeError(f"weight mapping incomplete for TransformerLens "
                           f"{getattr(tl_mod, '__version__', '?')}: missing "
                           f"{sorted(set(missing) - buffers)}, unexpected {unexpected}")
    return tl.eval()


@torch.no_grad()
def max_logit_diff(model: AttentionOnlyTransformer, tl, tokens: Tensor) -> float:
    """Largest |TL logit − rllc logit| on ``tokens`` [batch, pos], each model on its own
    device (neither is moved)."""
    rllc_logits = model(tokens.to(model.embed.weight.device))
    tl_logits = tl(tokens.to(tl.cfg.device), return_type="logits")
    return float((tl_logits.to(rllc_logits.device) - rllc_logits).abs().max())
