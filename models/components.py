"""Component strings → weight selections: the one parser for ``"L:H"`` and friends.

Grammar (strict, no aliases):

    "L:H"      one attention head: its W_Q, W_K, W_V rows of ``blocks.L.attn.qkv.weight``,
               its b_Q, b_K, b_V entries of ``qkv.bias`` and its W_O columns of
               ``blocks.L.attn.out.weight`` (not the layer's shared ``out.bias``):
               4·d_model·d_head + 3·d_head numbers (32,864 in the paper's model)
    "L:*"      every head of layer L (the union of its "L:H")
    "all"      every trainable parameter (the unrefined LLC)
    "embed"    token and position embeddings
    "unembed"  the unembedding weight and bias
    otherwise  a glob over parameter names (``"blocks.0.*"``, ``"*.bias"``), for any model

L and H are decimal integers without leading zeros. Head forms need an
``AttentionOnlyTransformer``; other models take ``all`` and parameter-name patterns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from rllc.estimators import SelectionError, WeightSelection, select_all, select_parameters

from .transformer import AttentionOnlyTransformer, TransformerConfig

NAMED = ("all", "embed", "unembed")
_HEAD = re.compile(r"(0|[1-9]\d*):(0|[1-9]\d*|\*)")
_PARAM_CHARS = re.compile(r"[A-Za-z0-9_.*?\[\]!-]+")  # parameter names and glob syntax


@dataclass(frozen=True)
class Component:
    """A parsed component: ``kind`` is head, layer, named or pattern."""

    kind: str
    text: str
    layer: int | None = None
    head: int | None = None


def parse_component(text: str) -> Component:
    """Parse a component string (syntax only; ``component_selection`` checks ranges)."""
    if not isinstance(text, str) or not text:
        raise SelectionError(f"component must be a non-empty string, got {text!r}")
    if text in NAMED:
        return Component("named", text)
    m = _HEAD.fullmatch(text)
    if m:
        layer = int(m[1])
        if m[2] == "*":
            return Component("layer", text, layer=layer)
        return Component("head", text, layer=layer, head=int(m[2]))
    if ":" in text or not _PARAM_CHARS.fullmatch(text):
        raise SelectionError(
            f"malformed component {text!r}: expected 'L:H' (e.g. '1:7'), 'L:*', "
            f"{', '.join(repr(n) for n in NAMED)}, or a parameter-name pattern"
        )
    return Component("pattern", text)


def _check_head(cfg: TransformerConfig, comp: Component) -> None:
    if comp.layer is not None and comp.layer >= cfg.n_layers:
        raise SelectionError(
            f"unknown head {comp.text!r}: the model has layers 0–{cfg.n_layers - 1}"
        )
    if comp.head is not None and comp.head >= cfg.n_heads:
        raise SelectionError(
            f"unknown head {comp.text!r}: the model has heads 0–{cfg.n_heads - 1} per layer"
        )


def head_indices(cfg: TransformerConfig, layer: int, head: int) -> dict[str, torch.Tensor]:
    """Flat indices of head ``layer:head`` in its layer's fused parameters.

    ``qkv.weight`` is [3·H·d_head, d_model] row-major, so row r covers flat indices
    r·d_model … (r+1)·d_model−1; head h owns rows part·H·d_head + h·d_head + i for
    part ∈ {Q, K, V}, i < d_head. ``out.weight`` is [d_model, H·d_head]; head h owns
    columns h·d_head + i, i.e. flat indices row·H·d_head + h·d_head + i.
    """
    H, dh, D = cfg.n_heads, cfg.d_head, cfg.d_model
    rows = torch.cat([p * H * dh + head * dh + torch.arange(dh) for p in range(3)])  # [3·dh]
    qkv_w = (rows[:, None] * D + torch.arange(D)).flatten()  # [3·dh·D]
    cols = head * dh + torch.arange(dh)
    out_w = (torch.arange(D)[:, None] * (H * dh) + cols).flatten()  # [D·dh]
    prefix = f"blocks.{layer}.attn"
    return {f"{prefix}.qkv.weight": qkv_w, f"{prefix}.qkv.bias": rows, f"{prefix}.out.weight": out_w}


def head_selection(model: AttentionOnlyTransformer, head_id: str) -> WeightSelection:
    """Selection of one head ``"L:H"`` (see the module docstring)."""
    comp = parse_component(head_id)
    if comp.kind != "head":
        raise SelectionError(f"expected a head 'L:H', got {head_id!r}")
    return component_selection(model, head_id)


def component_selection(model: nn.Module, component: str) -> WeightSelection:
    """The weight selection of a component string, validated against ``model``."""
    comp = parse_component(component)
    if comp.kind == "named" and comp.text == "all":
        sel = select_all(model)
    elif comp.kind == "pattern":
        sel = select_parameters(model, [comp.text])
    elif not isinstance(model, AttentionOnlyTransformer):
        raise SelectionError(
            f"component {component!r} needs an rllc AttentionOnlyTransformer; for "
            f"{type(model).__name__} use 'all' or a parameter-name pattern"
        )
    elif comp.kind == "named":
        names = ["embed.weight", "pos_embed.weight"] if comp.text == "embed" else [
            "unembed.weight", "unembed.bias"]
        sel = WeightSelection({n: None for n in names})
    else:
        cfg = model.cfg
        _check_head(cfg, comp)
        heads = [comp.head] if comp.kind == "head" else range(cfg.n_heads)
        sel = None
        for h in heads:
            one = WeightSelection(dict(head_indices(cfg, comp.layer, h)))  # type: ignore[arg-type]
            sel = one if sel is None else sel | one
    sel.validate(model)
    return sel


def expand_components(model: nn.Module, components: list[str] | tuple[str, ...]) -> list[str]:
    """Component strings with each ``"L:*"`` expanded into its heads ``"L:0"`` … (for
    sweeps that want one estimate per head); other strings are checked and kept."""
    out: list[str] = []
    for text in components:
        comp = parse_component(text)
        if comp.kind == "layer" and isinstance(model, AttentionOnlyTransformer):
            _check_head(model.cfg, comp)
            out += [f"{comp.layer}:{h}" for h in range(model.cfg.n_heads)]
        else:
            component_selection(model, text)  # raises on unknown heads or patterns
            out.append(text)
    return out
