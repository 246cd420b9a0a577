"""rllc → TransformerLens: the pure weight mapping, and the HookedTransformer it builds
computing rllc's logits and per-head attention patterns (what benchmarks/vs_devinterp.py
relies on to sample the same function with devinterp)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch

from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig
from rllc.models.transformer_lens import (
    UnsupportedConversion,
    from_tl_state_dict,
    hooked_transformer_config,
    max_logit_diff,
    tl_shapes,
    to_hooked_transformer,
    to_tl_state_dict,
)

TINY = TransformerConfig(n_layers=2, n_heads=3, d_model=16, d_head=4, n_ctx=10, d_vocab=23,
                         init_std=0.3)
#: every config the conversion supports: residual positions with and without LayerNorm,
#: shortformer positions without it, each also with the MLP
SUPPORTED = {
    "residual-ln": {"positional": "residual"},
    "residual": {"positional": "residual", "layer_norm": False},
    "shortformer": {"positional": "shortformer", "layer_norm": False},
    "residual-ln-mlp": {"positional": "residual", "mlp": True},
    "shortformer-mlp": {"positional": "shortformer", "layer_norm": False, "mlp": True,
                        "d_mlp": 24},
}
#: benchmarks/vs_devinterp.py's model
PAPER = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, n_ctx=256,
                          d_vocab=5000, positional="residual")


def random_model(cfg: TransformerConfig, dtype=torch.float32, seed=0) -> AttentionOnlyTransformer:
    """A model whose every parameter (biases and LN gains included) is random, so that a
    mapping that drops or swaps one changes the function."""
    torch.manual_seed(seed)
    model = AttentionOnlyTransformer(cfg).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif ".ln" in name or name.startswith("ln_final"):
                p.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(params=list(SUPPORTED))
def cfg(request) -> TransformerConfig:
    return TINY.model_copy(update=SUPPORTED[request.param])


# ---- the pure mapping (no TransformerLens) -------------------------------------------

def test_names_and_shapes(cfg):
    state = to_tl_state_dict(random_model(cfg).state_dict(), cfg)
    assert {k: tuple(v.shape) for k, v in state.items()} == tl_shapes(cfg)
    expected = 2 + 8 * cfg.n_layers + 2  # embeddings, 8 attention tensors a layer, unembed
    expected += (2 * cfg.n_layers + 2) * cfg.layer_norm + 4 * cfg.n_layers * cfg.mlp
    expected += 2 * cfg.n_layers * (cfg.mlp and cfg.layer_norm)
    assert len(state) == expected
    # nothing but reshapes: as many numbers as the rllc model has
    assert sum(v.numel() for v in state.values()) == random_model(cfg).num_parameters()


def test_head_slicing():
    """Head h's rows of the fused qkv weight land in W_Q/W_K/W_V[h], its columns of the out
    weight in W_O[h]; the same as the model's own head_views."""
    cfg = TINY.model_copy(update={"positional": "residual"})
    model = random_model(cfg)
    state = to_tl_state_dict(model.state_dict(), cfg)
    H, dh, A = cfg.n_heads, cfg.d_head, cfg.d_attn
    for layer in range(cfg.n_layers):
        attn = model.blocks[layer].attn
        w, b = attn.qkv.weight, attn.qkv.bias
        p = f"blocks.{layer}.attn."
        for h in range(H):
            rows = slice(h * dh, (h + 1) * dh)
            for i, x in enumerate("QKV"):
                offset = slice(i * A + h * dh, i * A + (h + 1) * dh)
                assert torch.equal(state[p + f"W_{x}"][h], w[offset].T), (layer, h, x)
                assert torch.equal(state[p + f"b_{x}"][h], b[offset]), (layer, h, x)
            assert torch.equal(state[p + "W_O"][h], attn.out.weight[:, rows].T)
        assert torch.equal(state[p + "b_O"], attn.out.bias)
        for name, tensor in model.head_views(layer).items():
            assert torch.equal(state[p + name], tensor), name
    assert torch.equal(state["unembed.W_U"], model.unembed.weight.T)
    assert torch.equal(state["embed.W_E"], model.embed.weight)
    assert torch.equal(state["pos_embed.W_pos"], model.pos_embed.weight)
    assert torch.equal(state["blocks.1.ln1.w"], model.blocks[1].ln.weight)
    assert torch.equal(state["ln_final.b"], model.ln_final.bias)


def test_mlp_mapping():
    cfg = TINY.model_copy(update=SUPPORTED["residual-ln-mlp"])
    model = random_model(cfg)
    state = to_tl_state_dict(model.state_dict(), cfg)
    mlp = model.blocks[0].mlp
    assert torch.equal(state["blocks.0.mlp.W_in"], mlp[0].weight.T)
    assert torch.equal(state["blocks.0.mlp.b_in"], mlp[0].bias)
    assert torch.equal(state["blocks.0.mlp.W_out"], mlp[2].weight.T)
    assert torch.equal(state["blocks.0.ln2.w"], model.blocks[0].ln_mlp.weight)


def test_values_round_trip(cfg):
    model = random_model(cfg)
    state = model.state_dict()
    back = from_tl_state_dict(to_tl_state_dict(state, cfg), cfg)
    assert set(back) == set(state)
    for k, v in state.items():
        assert back[k].shape == v.shape and torch.equal(back[k], v), k
    # TransformerLens's buffers are ignored on the way back
    tl_state = to_tl_state_dict(state, cfg) | {"blocks.0.attn.IGNORE": torch.tensor(-1e5),
                                               "blocks.0.attn.mask": torch.ones(2, 2)}
    other = AttentionOnlyTransformer(cfg)
    other.load_state_dict(from_tl_state_dict(tl_state, cfg))
    tokens = torch.randint(0, cfg.d_vocab, (2, cfg.n_ctx))
    torch.testing.assert_close(other(tokens), model(tokens), rtol=0, atol=0)


def test_config_fields():
    fields = hooked_transformer_config(TINY.model_copy(update={"positional": "residual"}))
    assert fields == {
        "n_layers": 2, "n_heads": 3, "d_model": 16, "d_head": 4, "n_ctx": 10, "d_vocab": 23,
        "attn_only": True, "d_mlp": None, "act_fn": None, "normalization_type": "LN",
        "eps": 1e-5, "positional_embedding_type": "standard", "device": "cpu",
        "dtype": torch.float32,
    }
    short = hooked_transformer_config(TINY.model_copy(update=SUPPORTED["shortformer"]),
                                      device="cuda:0", dtype=torch.float64)
    assert short["positional_embedding_type"] == "shortformer"
    assert short["normalization_type"] is None
    assert (short["device"], short["dtype"]) == ("cuda:0", torch.float64)
    mlp = hooked_transformer_config(TINY.model_copy(update=SUPPORTED["residual-ln-mlp"]))
    assert (mlp["attn_only"], mlp["d_mlp"], mlp["act_fn"]) == (False, 64, "gelu")
    assert hooked_transformer_config(PAPER)["positional_embedding_type"] == "standard"


def test_refuses_shortformer_with_layer_norm():
    cfg = TINY.model_copy(update={"positional": "shortformer", "layer_norm": True})
    model = AttentionOnlyTransformer(cfg)
    for call in (lambda: hooked_transformer_config(cfg), lambda: tl_shapes(cfg),
                 lambda: to_tl_state_dict(model.state_dict(), cfg),
                 lambda: to_hooked_transformer(model)):
        with pytest.raises(UnsupportedConversion, match=r"LN\(x \+ p\)"):
            call()


def test_rejects_mismatched_state_dicts():
    cfg = TINY.model_copy(update={"positional": "residual"})
    state = random_model(cfg).state_dict()
    with pytest.raises(ValueError, match=r"missing \['unembed.bias'\]"):
        to_tl_state_dict({k: v for k, v in state.items() if k != "unembed.bias"}, cfg)
    no_ln = cfg.model_copy(update={"layer_norm": False})
    with pytest.raises(ValueError, match="unexpected"):
        to_tl_state_dict(state, no_ln)
    tl_state = to_tl_state_dict(state, cfg)
    with pytest.raises(ValueError, match="wrong shape"):
        from_tl_state_dict(tl_state | {"unembed.W_U": state["unembed.weight"]}, cfg)


def test_missing_transformer_lens_names_make_bench(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # import raises ImportError
    model = AttentionOnlyTransformer(TINY.model_copy(update={"positional": "residual"}))
    with pytest.raises(ImportError, match="make bench"):
        to_hooked_transformer(model)


# ---- the HookedTransformer (TransformerLens, a test dependency) ----------------------

@pytest.fixture(scope="module")
def transformer_lens():
    try:
        import transformer_lens
    except ImportError as e:  # in the `test` extra: a missing install is an error, not a skip
        raise ImportError("transformer-lens==3.9.0 is a test dependency (pyproject's `test` "
                          "extra): pip install -c constraints.txt -e '.[test]'") from e
    return transformer_lens


def test_shapes_are_transformer_lens_parameters(cfg, transformer_lens):
    """tl_shapes is exactly the parameter set of the HookedTransformer of that config."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "HookedTransformer is deprecated"
        tl = transformer_lens.HookedTransformer(
            transformer_lens.HookedTransformerConfig(**hooked_transformer_config(cfg)))
    assert {k: tuple(p.shape) for k, p in tl.named_parameters()} == tl_shapes(cfg)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_same_logits_and_patterns(cfg, dtype, transformer_lens):
    """The HookedTransformer gives rllc's logits (relative to the largest logit: 1e-10 in
    float64, 1e-5 in float32) and, head by head, rllc's attention patterns, so TL's head
    l{L}h{H} is rllc's head "L:H"."""
    model = random_model(cfg, dtype)
    tokens = torch.randint(0, cfg.d_vocab, (4, cfg.n_ctx), generator=torch.Generator().manual_seed(1))
    rng = torch.get_rng_state()
    tl = to_hooked_transformer(model)
    assert torch.equal(torch.get_rng_state(), rng)  # TL's throwaway init used its own stream
    assert isinstance(tl, transformer_lens.HookedTransformer) and not tl.training
    assert tl.cfg.dtype == dtype
    with torch.no_grad():
        logits = model(tokens)
        tl_logits, cache = tl.run_with_cache(tokens, return_type="logits")
    scale = float(logits.abs().max())
    assert scale > 1.0  # a function with something to get wrong
    tol = (1e-10 if dtype == torch.float64 else 1e-5) * scale
    torch.testing.assert_close(tl_logits, logits, rtol=0, atol=tol)
    assert max_logit_diff(model, tl, tokens) <= tol
    patterns = model.attention_patterns(tokens)  # [layer, batch, head, query, key]
    for layer in range(cfg.n_layers):
        torch.testing.assert_close(cache["pattern", layer], patterns[layer],
                                   rtol=0, atol=1e-10 if dtype == torch.float64 else 1e-5)
    # the TL model holds copies: changing rllc's weights afterwards leaves it as it was
    with torch.no_grad():
        model.unembed.bias.add_(1.0)
        torch.testing.assert_close(tl(tokens, return_type="logits"), tl_logits, rtol=0, atol=0)


def test_paper_shaped_model_within_benchmark_tolerance(transformer_lens):
    """benchmarks/vs_devinterp.py's model in float32 agrees to its 1e-4 check."""
    model = random_model(PAPER)
    tl = to_hooked_transformer(model)
    tokens = torch.randint(0, PAPER.d_vocab, (2, PAPER.n_ctx))
    assert max_logit_diff(model, tl, tokens) <= 1e-4
