"""Component strings → weight selections, above all the "L:H" → fused QKV/O mapping."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from rllc.estimators import SelectionError, SGLDConfig, sample, select_all
from rllc.models import (
    AttentionOnlyTransformer,
    TransformerConfig,
    component_selection,
    expand_components,
    head_selection,
    lm_objective,
    parse_component,
)

CFG = TransformerConfig(n_layers=2, n_heads=3, d_model=12, d_head=4, n_ctx=8, d_vocab=17)


@pytest.fixture
def model() -> AttentionOnlyTransformer:
    torch.manual_seed(0)
    return AttentionOnlyTransformer(CFG)


def _manual_forward(model: AttentionOnlyTransformer, tokens: torch.Tensor) -> torch.Tensor:
    """The model's forward written per head from ``head_views`` (TransformerLens-style)."""
    x = model.embed(tokens)
    T = tokens.shape[1]
    pos = model.pos_embed.weight[:T]
    for layer, block in enumerate(model.blocks):
        v_in, qk_in = block.ln(x), block.ln(x + pos)
        w = model.head_views(layer)
        q = torch.einsum("btd,hde->bhte", qk_in, w["W_Q"]) + w["b_Q"][:, None]
        k = torch.einsum("btd,hde->bhte", qk_in, w["W_K"]) + w["b_K"][:, None]
        v = torch.einsum("btd,hde->bhte", v_in, w["W_V"]) + w["b_V"][:, None]
        scores = q @ k.transpose(-1, -2) / math.sqrt(CFG.d_head)
        scores = scores.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), -math.inf)
        z = scores.softmax(-1) @ v
        x = x + torch.einsum("bhte,hed->btd", z, w["W_O"]) + w["b_O"]
    return model.unembed(model.ln_final(x))


def test_head_views_reproduce_the_fused_forward(model):
    tokens = torch.randint(0, 17, (2, 8))
    torch.testing.assert_close(model(tokens), _manual_forward(model, tokens))


@pytest.mark.parametrize("layer,head", [(0, 0), (1, 1), (1, 2)])
def test_head_selection_is_exactly_the_heads_slices(model, layer, head):
    sel = component_selection(model, f"{layer}:{head}")
    assert sel.size(model) == CFG.params_per_head == 4 * 12 * 4 + 3 * 4
    # Mark the head's entries through the head-major views (which share storage).
    marked = AttentionOnlyTransformer(CFG)
    with torch.no_grad():
        for p in marked.parameters():
            p.zero_()
        views = marked.head_views(layer)
        for key in ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V"):
            views[key][head] = 1.0
    expected = {n: p.bool() for n, p in marked.named_parameters() if p.bool().any()}
    masks = sel.masks(model)
    assert set(masks) == set(expected)
    for name in expected:
        assert torch.equal(masks[name], expected[name]), name
    assert f"blocks.{layer}.attn.out.bias" not in masks  # b_O is shared by the layer


def test_paper_head_size():
    paper = AttentionOnlyTransformer(TransformerConfig(d_model=256, d_head=32, n_ctx=16,
                                                       d_vocab=50))
    assert head_selection(paper, "1:7").size(paper) == 32_864


def test_layer_all_embed_unembed(model):
    layer = component_selection(model, "1:*")
    assert layer.size(model) == 3 * CFG.params_per_head
    assert layer.names == ["blocks.1.attn.out.weight", "blocks.1.attn.qkv.bias",
                           "blocks.1.attn.qkv.weight"]
    assert component_selection(model, "all") == select_all(model)
    assert component_selection(model, "embed").names == ["embed.weight", "pos_embed.weight"]
    assert component_selection(model, "unembed").names == ["unembed.bias", "unembed.weight"]
    assert component_selection(model, "blocks.0.ln.*").names == [
        "blocks.0.ln.bias", "blocks.0.ln.weight"]


@pytest.mark.parametrize(
    "bad,msg",
    [("2:0", "unknown head '2:0'"), ("0:3", "unknown head '0:3'"), ("1:x", "malformed"),
     ("01:1", "malformed"), ("", "non-empty"), ("L1H1", "matches no parameter"),
     ("1 :1", "malformed")],
)
def test_bad_components_raise_clear_errors(model, bad, msg):
    with pytest.raises(SelectionError, match=msg):
        component_selection(model, bad)


def test_parse_component_kinds():
    assert parse_component("1:7").kind == "head"
    assert parse_component("10:*").layer == 10
    assert parse_component("unembed").kind == "named"
    assert parse_component("*.bias").kind == "pattern"


def test_head_forms_need_the_transformer():
    mlp = torch.nn.Sequential(torch.nn.Linear(2, 2))
    with pytest.raises(SelectionError, match="needs an rllc AttentionOnlyTransformer"):
        component_selection(mlp, "0:0")
    assert component_selection(mlp, "0.*").size(mlp) == 6


def test_expand_components(model):
    assert expand_components(model, ["0:*", "1:2", "all"]) == ["0:0", "0:1", "0:2", "1:2", "all"]
    with pytest.raises(SelectionError, match="unknown head"):
        expand_components(model, ["5:*"])


def test_sgld_on_a_head_moves_only_that_head(model):
    """One SGLD step written out with the selection's masks moves nothing outside the
    head; the batched sampler samples exactly that many numbers."""
    sel = component_selection(model, "1:1")
    masks = sel.masks(model)
    tokens = torch.randint(0, 17, (6, 8))
    objective = lm_objective(model)
    params = {k: v.detach().clone().requires_grad_() for k, v in model.named_parameters()}
    loss = objective(params, (tokens,))
    loss.backward()
    eps, nbeta = 1e-3, 30.0
    new = {}
    for name, p in params.items():
        mask = masks.get(name, torch.zeros_like(p, dtype=torch.bool))
        step = -0.5 * eps * nbeta * p.grad + math.sqrt(eps) * torch.randn_like(p)
        new[name] = (p + mask * step).detach()
    for name, p in model.named_parameters():
        moved = new[name] != p
        assert not (moved & ~masks.get(name, torch.zeros_like(moved))).any(), name
    # b_O of layer 1 and all of layer 0 are bit-identical
    assert torch.equal(new["blocks.1.attn.out.bias"], model.blocks[1].attn.out.bias)
    before = model.attention_patterns(tokens)
    after = functional_call(model, new, (tokens,), {"return_patterns": True})[1]
    torch.testing.assert_close(after[0], before[0], rtol=0, atol=0)  # layer 0 untouched
    torch.testing.assert_close(after[1][:, [0, 2]], before[1][:, [0, 2]], rtol=0, atol=0)

    result = sample(model, objective, tokens, sel,
                    SGLDConfig(chains=2, draws=3, batch_size=4, step_size=1e-4))
    assert result.num_weights == CFG.params_per_head
    assert result.loss.shape == (2, 3)
    assert (result.distance[:, -1] > 0).all()
