"""The head fast path gives the general path's traces; multi-head runs equal one-head runs.

Tolerances: in float64 the two paths differ only by float reassociation (≈1e-14 relative
per step), far below the float32 rounding of the recorded traces, so traces agree to
rtol 1e-6. In float32 (the models' default) reassociation errors of ≈1e-7 per step grow
through the chains' dynamics; traces of a few dozen steps agree to rtol 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rllc.estimators import SGLDConfig, sample
from rllc.models import (
    AttentionOnlyTransformer,
    TransformerConfig,
    head_selection,
    lm_loss,
    lm_objective,
)
from rllc.models.fastpath import FastPathError, frozen_data_loss, head_noise_key, sample_heads
from rllc.models.head_step import HeadLayerStep, Numerics

TRACES = ("loss", "batch_init_loss", "distance", "grad_norm", "mala_acceptance")
TINY = TransformerConfig(n_layers=2, n_heads=3, d_model=12, d_head=4, n_ctx=10, d_vocab=23,
                         init_std=0.3)


def make(dtype=torch.float64, **cfg) -> tuple[AttentionOnlyTransformer, torch.Tensor]:
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(TINY.model_copy(update=cfg)).to(dtype)
    tokens = torch.randint(0, TINY.d_vocab, (40, TINY.n_ctx))
    return model, tokens


def config(**kw) -> SGLDConfig:
    base = dict(step_size=1e-3, localization=10.0, nbeta=50.0, chains=2, draws=8,
                batch_size=8, seed=3)
    return SGLDConfig(**{**base, **kw})


def general(model, tokens, head: str, cfg: SGLDConfig, **kw):
    return sample(model, lm_objective(model), tokens, head_selection(model, head), cfg,
                  noise_key=head_noise_key(head), **kw)


def assert_traces_close(a, b, rtol):
    for name in TRACES:
        x, y = getattr(a, name), getattr(b, name)
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        ok = ~np.isnan(y)
        np.testing.assert_allclose(x[ok], y[ok], rtol=rtol, atol=rtol * 1e-2, err_msg=name)
    np.testing.assert_array_equal(a.diverged, b.diverged)


@pytest.mark.parametrize(
    "model_cfg",
    [{}, {"positional": "residual"}, {"layer_norm": False}, {"n_layers": 3}],
    ids=["shortformer", "residual", "no-layer-norm", "three-layers"],
)
def test_fast_path_traces_equal_general_path(model_cfg):
    model, tokens = make(**model_cfg)
    cfg = config()
    heads = ["0:1", f"{model.cfg.n_layers - 1}:2"] + (["1:0"] if model.cfg.n_layers == 3 else [])
    fast = sample_heads(model, tokens, heads, cfg)
    for head in heads:
        assert fast[head].extra["path"] == "fast"
        slow = general(model, tokens, head, cfg)
        assert fast[head].init_loss == pytest.approx(slow.init_loss, rel=1e-12)
        assert fast[head].num_weights == slow.num_weights == TINY.params_per_head
        assert_traces_close(fast[head], slow, rtol=1e-6)


@pytest.mark.parametrize(
    "extra",
    [{"independent_batches": True}, {"preconditioner": "rmsprop"}, {"steps_per_draw": 3},
     {"batch_size": 100}],
    ids=["independent-batches", "rmsprop", "thinned", "full-batch"],
)
def test_fast_path_follows_every_sampler_option(extra):
    model, tokens = make()
    cfg = config(**extra)
    fast = sample_heads(model, tokens, ["0:2", "1:1"], cfg, max_rows=3)  # rows in parts
    for head in ("0:2", "1:1"):
        assert_traces_close(fast[head], general(model, tokens, head, cfg), rtol=1e-6)


@pytest.mark.parametrize("max_rows", [None, 3], ids=["one-part", "parts"])
@pytest.mark.parametrize("lowrank", [False, True], ids=["dense", "rank-k"])
def test_independent_batches_of_many_heads_equal_general_path(lowrank, max_rows):
    """With independent minibatches all heads × chains of a layer run as one pass on a
    prefix of the chains' batches stacked: each (head, chain) row still gets its own
    chain's batch (and L_B(w*) on it), in one part or in parts of whole chains."""
    model, tokens = make()
    cfg = config(independent_batches=True)
    fast = sample_heads(model, tokens, ["0:*", "1:*"], cfg, lowrank=lowrank, max_rows=max_rows)
    assert fast["1:0"].extra["lowrank"] == lowrank
    for head in fast:
        assert_traces_close(fast[head], general(model, tokens, head, cfg), rtol=1e-6)


def test_independent_batches_take_one_pass_per_step(monkeypatch):
    """Independent minibatches: one prefix (of all chains' batches) and one ``HeadLayerStep``
    call with every (head, chain) row per SGLD step, not one per chain; chains that all
    draw the full batch share a prefix of one batch."""
    calls, built = [], []
    step_call, build = HeadLayerStep.__call__, HeadLayerStep.prefix

    def counted_call(self, theta, pre, need_star):
        calls.append((theta.shape[0], pre.groups, pre.tokens.shape[0]))
        return step_call(self, theta, pre, need_star)

    def counted_prefix(self, tokens):
        built.append(tuple(tokens.shape))
        return build(self, tokens)

    monkeypatch.setattr(HeadLayerStep, "__call__", counted_call)
    monkeypatch.setattr(HeadLayerStep, "prefix", counted_prefix)
    model, tokens = make()
    cfg = config(independent_batches=True, chains=3, draws=5, batch_size=4)
    res = sample_heads(model, tokens, ["0:*"], cfg)
    assert len(calls) == cfg.total_steps
    assert set(calls) == {(3 * 3, 3, 3 * 4)}  # 3 heads × 3 chains; 3 batches of 4 stacked
    assert len(built) == cfg.total_steps and set(built) == {(3, 4, TINY.n_ctx)}
    assert len(set(res["0:0"].batch_init_loss[:, 0].tolist())) == 3  # chains' own L_B(w*)

    calls.clear(), built.clear()
    sample_heads(model, tokens, ["0:*"], config(independent_batches=True, chains=3,
                                                batch_size=100))
    assert set(calls) == {(9, 1, len(tokens))} and built == [(len(tokens), TINY.n_ctx)]


def grouped_against_per_chain(step: HeadLayerStep, tokens: torch.Tensor, chains: int):
    """One call of ``step`` on a prefix of ``chains`` minibatches (row head·C + c on batch
    c) and, per chain, a call on that chain's batch alone: ((grad, loss, star), the same
    assembled from the per-chain calls)."""
    H = len(step.heads)
    g = torch.Generator().manual_seed(1)
    w_star = step.pack_star().repeat_interleave(chains, 0)
    theta = w_star + 0.05 * torch.randn(w_star.shape, generator=g, dtype=w_star.dtype)
    idx = torch.randperm(len(tokens), generator=g)[: chains * 6].view(chains, 6)
    grouped = step(theta, step.prefix(tokens[idx]), need_star=True)
    alone = [torch.empty_like(x) for x in grouped]
    for c in range(chains):
        rows = torch.arange(H) * chains + c
        for out, part in zip(alone, step(theta[rows], step.prefix(tokens[idx[c]]), True),
                             strict=True):
            out[rows] = part
    return grouped, alone


@pytest.mark.parametrize("precision", ["float32", "bfloat16", "int8"])
@pytest.mark.parametrize("lowrank", [False, True], ids=["dense", "rank-k"])
def test_one_pass_of_all_chains_batches_equals_a_pass_per_chain(precision, lowrank):
    """In every precision (bf16 and int8 have no general-path reference) the stacked
    prefix gives each chain's rows what a pass on that chain's batch alone gives, in one
    part or in parts of whole chains; L_B(w*) (int8: the reference) per chain."""
    model, tokens = make(dtype=torch.float32)
    for max_rows in (None, 4):
        step = HeadLayerStep(model, 1, [0, 2], Numerics(precision=precision), max_rows,
                             lowrank=lowrank)
        grouped, alone = grouped_against_per_chain(step, tokens, chains=3)
        for a, b, name in zip(grouped, alone, ("grad", "loss", "star"), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)
        assert not torch.equal(grouped[2][0], grouped[2][1])  # chains' own L_B(w*)


@pytest.mark.slow
@pytest.mark.usefixtures("inductor")
@pytest.mark.parametrize("lowrank", [False, True], ids=["dense", "rank-k"])
def test_compiled_one_pass_of_all_chains_batches_equals_a_pass_per_chain(lowrank):
    """Compiled rows (d_head 16: attention in the CPU kernel where it is built)."""
    model, tokens = make(dtype=torch.float32, d_head=16)
    step = HeadLayerStep(model, 1, [0, 1, 2], Numerics(compile=True), lowrank=lowrank)
    grouped, alone = grouped_against_per_chain(step, tokens, chains=2)
    for a, b, name in zip(grouped, alone, ("grad", "loss", "star"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=name)


def test_rank_k_unembedding_gives_the_same_traces():
    model, tokens = make()
    cfg = config()
    dense = sample_heads(model, tokens, ["1:*"], cfg)
    lowrank = sample_heads(model, tokens, ["1:*"], cfg, lowrank=True)
    for head in dense:
        assert_traces_close(lowrank[head], dense[head], rtol=1e-6)
        assert lowrank[head].extra["lowrank"] and not dense[head].extra["lowrank"]


@pytest.mark.slow
@pytest.mark.usefixtures("inductor")
@pytest.mark.parametrize("d_head", [4, 16])  # 16: attention in the CPU kernel
def test_compiled_fast_path_gives_the_eager_traces(d_head, request):
    """``compile=True`` fuses the rows' forward/backward and the loss kernels (and, for the
    head sizes it is built for, attention: ``cpu_kernels.causal_attention``) and, by
    default, takes the rank-k unembedding for last-layer heads: the eager dense path's
    traces up to float32 reassociation (see the module docstring). Skips without a C++
    compiler, and d_head = 16 without the CPU attention kernel."""
    if d_head == 16:
        request.getfixturevalue("cpu_kernels_built")
    model, tokens = make(dtype=torch.float32, d_head=d_head)
    step = HeadLayerStep(model, 0, [1], Numerics(compile=True))
    assert step.fm.shape.cpu_attention == (d_head == 16)
    cfg = config(draws=12)
    eager = sample_heads(model, tokens, ["0:1", "1:2"], cfg, compile=False)
    fused = sample_heads(model, tokens, ["0:1", "1:2"], cfg, compile=True)
    assert fused["1:2"].extra["lowrank"] and not eager["1:2"].extra["lowrank"]
    for head in eager:
        assert_traces_close(fused[head], eager[head], rtol=1e-3)


def test_bfloat16_rank_k_rows_measure_w_star_as_they_measure_themselves():
    """In bf16 the rank-k rows unembed in float32 (only the head's terms are rounded), so
    L_B(w*) and L_n(w*) of last-layer heads are taken with a float32 unembedding too:
    at w* a row's loss equals L_B(w*), and each layer gets its own L_n(w*)."""
    model, tokens = make(dtype=torch.float32)
    step = HeadLayerStep(model, 1, [0, 2], Numerics(precision="bfloat16"), lowrank=True)
    assert step.lowrank and step.fm.numerics.unembed_precision == "float32"
    _, loss, star = step(step.pack_star().repeat_interleave(2, 0), step.prefix(tokens[:8]),
                         need_star=True)
    torch.testing.assert_close(loss, star, rtol=1e-6, atol=0)

    cfg = config()
    res = sample_heads(model, tokens, ["0:1", "1:1"], cfg, precision="bfloat16", lowrank=True)
    assert res["0:1"].init_loss == frozen_data_loss(model, tokens, cfg, "bfloat16")
    assert res["1:1"].init_loss == frozen_data_loss(model, tokens, cfg, "bfloat16", "float32")
    assert res["0:1"].init_loss != res["1:1"].init_loss
    asked = []
    sample_heads(model, tokens, ["0:1", "1:1"], cfg, precision="bfloat16", lowrank=True,
                 init_loss=lambda p, u: asked.append((p, u)) or 1.0)
    assert asked == [("bfloat16", "bfloat16"), ("bfloat16", "float32")]


def test_int8_rows_at_w_star_lose_exactly_l_b_of_w_star():
    """The int8 unembedding's reference is w* on the same minibatch: at w* a row's loss is
    L_B(w*) (δ = 0), and L_n(w*) is the int8 path's own."""
    model, tokens = make(dtype=torch.float32)
    step = HeadLayerStep(model, 0, [0, 2], Numerics(precision="int8"))
    _, loss, star = step(step.pack_star().repeat_interleave(2, 0), step.prefix(tokens[:8]),
                         need_star=True)
    torch.testing.assert_close(loss, star, rtol=1e-6, atol=0)
    res = sample_heads(model, tokens, ["0:1"], config(), precision="int8")
    assert res["0:1"].init_loss == frozen_data_loss(model, tokens, config(), "int8")
    assert res["0:1"].extra["precision"] == "int8"


def test_float32_fast_path_stays_close_to_general_path():
    model, tokens = make(dtype=torch.float32)
    cfg = config(draws=20)
    fast = sample_heads(model, tokens, ["0:0", "1:2"], cfg)
    for head in ("0:0", "1:2"):
        assert_traces_close(fast[head], general(model, tokens, head, cfg), rtol=1e-3)


def test_multi_head_batch_equals_single_head_runs():
    model, tokens = make()
    cfg = config(chains=3)
    everything = sample_heads(model, tokens, ["0:*", "1:*"], cfg)
    assert list(everything) == [f"{layer}:{h}" for layer in range(2) for h in range(3)]
    for head in ("0:1", "1:2"):
        alone = sample_heads(model, tokens, [head], cfg)[head]
        assert_traces_close(everything[head], alone, rtol=1e-6)
        one_chain = sample_heads(model, tokens, [head], cfg, chain_ids=[2])[head]
        for name in TRACES:
            np.testing.assert_allclose(getattr(one_chain, name)[0], getattr(alone, name)[2],
                                       rtol=1e-6, err_msg=name)
    assert everything["0:0"].extra["batch_heads"] == ["0:0", "0:1", "0:2"]
    assert everything["0:0"].extra["flops_per_step"] > 0


def test_heads_get_their_own_noise():
    model, tokens = make()
    res = sample_heads(model, tokens, ["0:0", "0:1"], config())
    # same w*-relative dynamics would give equal distances if the noise were shared
    assert not np.allclose(res["0:0"].distance[:, 1:], res["0:1"].distance[:, 1:])


def test_general_path_where_the_fast_path_does_not_apply():
    model, tokens = make(mlp=True)
    cfg = config(draws=4)
    res = sample_heads(model, tokens, ["0:1"], cfg)["0:1"]
    assert res.extra["path"] == "general"
    assert_traces_close(res, general(model, tokens, "0:1", cfg), rtol=1e-12)
    with pytest.raises(FastPathError, match="MLP"):
        sample_heads(model, tokens, ["0:1"], cfg, fast=True)
    plain, tokens = make()
    mixed = sample_heads(plain, tokens, ["embed", "1:0"], cfg)
    assert mixed["embed"].extra["path"] == "general"
    assert mixed["1:0"].extra["path"] == "fast"
    forced = sample_heads(plain, tokens, ["1:0"], cfg, fast=False)["1:0"]
    assert forced.extra["path"] == "general"
    assert_traces_close(mixed["1:0"], forced, rtol=1e-6)


def test_bad_inputs():
    model, tokens = make()
    with pytest.raises(ValueError, match="unknown head"):
        sample_heads(model, tokens, ["2:0"], config())
    with pytest.raises(ValueError, match="integer tokens"):
        sample_heads(model, tokens.double(), ["0:0"], config())
    with pytest.raises(ValueError, match="precision"):
        sample_heads(model, tokens, ["0:0"], config(), precision="float16")
    with pytest.raises(ValueError, match="CPU only"):  # not yet tried on CUDA
        frozen_data_loss(make()[0].to("meta"), tokens, config(), "int8")


def trained_tiny() -> tuple[AttentionOnlyTransformer, torch.Tensor]:
    """A 2-layer model trained for a second on skip-bigram data (token t follows a fixed
    permutation of token t−2 with probability 0.7), so w* is near a minimum and heads
    matter: their wrLLCs come out ≈ 3–10."""
    g = torch.Generator().manual_seed(0)
    V, T, n = 64, 16, 512
    perm = torch.randperm(V, generator=g)
    tokens = torch.randint(0, V, (n, T), generator=g)
    for t in range(2, T):
        follow = torch.rand(n, generator=g) < 0.7
        tokens[:, t] = torch.where(follow, perm[tokens[:, t - 2]], tokens[:, t])
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(TransformerConfig(n_layers=2, n_heads=2, d_model=32,
                                                       d_head=8, n_ctx=T, d_vocab=V))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(300):
        idx = torch.randint(0, n, (64,), generator=g)
        loss = lm_loss(model(tokens[idx]), tokens[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, tokens


@pytest.mark.slow
def test_bfloat16_and_int8_estimates_agree_with_float32():
    """bf16 (and int8-difference) matmuls are worth offering only if the estimates stay
    within their standard error of the fp32 ones. Same seeds, so the runs share batches
    and noise."""
    model, tokens = trained_tiny()
    # one fixed burn-in, so that the precisions are compared over the same draws
    cfg = SGLDConfig(step_size=1e-3, localization=100.0, nbeta=30.0, chains=4, draws=150,
                     batch_size=32, burnin=0, estimator="plain")
    exact = sample_heads(model, tokens, ["0:*", "1:*"], cfg)
    low = sample_heads(model, tokens, ["0:*", "1:*"], cfg, precision="bfloat16")
    low_rank_k = sample_heads(model, tokens, ["1:*"], cfg, precision="bfloat16", lowrank=True)
    int8 = sample_heads(model, tokens, ["0:*", "1:*"], cfg, precision="int8")
    for head, res in exact.items():
        a = res.llc()
        assert a.llc_mean > 1.0  # a real signal, not noise around zero
        for other, name in ((low, "bfloat16"), (low_rank_k, "bfloat16"), (int8, "int8")):
            if head in other:
                b = other[head].llc()
                assert abs(a.llc_mean - b.llc_mean) <= a.llc_stderr, (head, a.llc_mean,
                                                                       b.llc_mean)
                assert other[head].extra["precision"] == name
