"""The attention-only transformer: shapes, config validation, vmap-compatibility."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch.func import functional_call, grad_and_value, vmap

from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig, lm_loss

TINY = TransformerConfig(n_layers=2, n_heads=2, d_model=16, d_head=4, n_ctx=8, d_vocab=20)


@pytest.fixture(params=["shortformer", "residual"])
def model(request) -> AttentionOnlyTransformer:
    torch.manual_seed(0)
    return AttentionOnlyTransformer(TINY.model_copy(update={"positional": request.param}))


def test_logits_shape_and_patterns_agree(model):
    tokens = torch.randint(0, 20, (3, 8))
    logits = model(tokens)
    assert logits.shape == (3, 8, 20)
    logits2, patterns = model(tokens, return_patterns=True)
    assert patterns.shape == (2, 3, 2, 8, 8)  # [layer, batch, head, query, key]
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(patterns.sum(-1), torch.ones(2, 3, 2, 8))
    assert (patterns.triu(1) == 0).all()  # causal


def test_causal_future_tokens_do_not_matter(model):
    a = torch.randint(0, 20, (1, 8))
    b = a.clone()
    b[0, 5:] = (b[0, 5:] + 1) % 20
    torch.testing.assert_close(model(a)[0, :5], model(b)[0, :5])


def test_parameter_count_and_head_size():
    paper = TransformerConfig(d_model=256, d_head=32, n_ctx=1024, d_vocab=5000)
    assert paper.params_per_head == 32_864
    m = AttentionOnlyTransformer(TINY)
    per_layer = 3 * 8 * 16 + 3 * 8 + 16 * 8 + 16 + 2 * 16  # qkv, out, ln
    assert m.num_parameters() == 20 * 16 + 8 * 16 + 2 * per_layer + 2 * 16 + 16 * 20 + 20


def test_optional_mlp_and_no_layer_norm():
    cfg = TINY.model_copy(update={"mlp": True, "layer_norm": False})
    m = AttentionOnlyTransformer(cfg)
    assert any("mlp" in n for n, _ in m.named_parameters())
    assert not any(".ln" in n for n, _ in m.named_parameters())
    assert m(torch.randint(0, 20, (2, 8))).shape == (2, 8, 20)


@pytest.mark.parametrize(
    "bad", [{"n_heads": 0}, {"n_ctx": 1}, {"positional": "rotary"}, {"d_mlp": 32}, {"foo": 1}]
)
def test_config_validation(bad):
    with pytest.raises(ValidationError):
        TransformerConfig(**bad)


def test_head_views_match_fused_layout():
    m = AttentionOnlyTransformer(TINY)
    v = m.head_views(1)
    w = m.blocks[1].attn.qkv.weight
    assert v["W_Q"].shape == (2, 16, 4) and v["W_O"].shape == (2, 4, 16)
    torch.testing.assert_close(v["W_K"][1], w[8 + 4 : 8 + 8].T)
    torch.testing.assert_close(v["W_O"][1], m.blocks[1].attn.out.weight[:, 4:8].T)


def test_forward_is_vmappable_over_parameters(model):
    tokens = torch.randint(0, 20, (4, 8))
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, toks):
        return lm_loss(functional_call(model, p, (toks,)), toks)

    batched = {k: torch.stack([v, v + 0.01 * torch.randn_like(v)]) for k, v in params.items()}
    grads, losses = vmap(grad_and_value(loss), in_dims=(0, None))(batched, tokens)
    torch.testing.assert_close(losses[0], loss(params, tokens))
    assert grads["blocks.1.attn.qkv.weight"].shape == (2, 24, 16)
    assert not torch.isclose(losses[0], losses[1])


def test_lm_loss_is_next_token_cross_entropy():
    logits = torch.zeros(1, 3, 5)
    logits[0, 0, 2] = 100.0  # predicts token 2 at position 1
    logits[0, 1, 4] = 100.0
    assert float(lm_loss(logits, torch.tensor([[0, 2, 4]]))) == pytest.approx(0.0, abs=1e-4)
