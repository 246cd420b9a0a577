"""The model side of the baselines (``rllc.models.baselines``) on tiny real transformers:
component functions against the model's own forward, Hutchinson against the full Hessian
of a small head, both Fisher traces against brute force, and ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rllc.estimators.curvature import exact_hessian, hessian_trace
from rllc.estimators.fisher import fisher_traces
from rllc.models.baselines import (
    LayerPrefixes,
    component_functions,
    derangement,
    head_ablations,
    sequence_losses,
)
from rllc.models.components import component_selection
from rllc.models.transformer import AttentionOnlyTransformer, TransformerConfig, lm_loss

TINY = TransformerConfig(n_layers=2, n_heads=2, d_model=8, d_head=2, n_ctx=6, d_vocab=7,
                         init_std=0.5)


@pytest.fixture(scope="module")
def model_and_tokens():
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(TINY).double().eval()
    tokens = torch.randint(0, TINY.d_vocab, (5, TINY.n_ctx))
    return model, tokens


@pytest.mark.parametrize("component", ["0:1", "1:0", "1:*", "all"])
def test_component_functions_match_the_model(model_and_tokens, component):
    model, tokens = model_and_tokens
    fns = component_functions(model, component, LayerPrefixes(model, tokens))
    assert fns.theta0.numel() == component_selection(model, component).size(model)
    with torch.no_grad():
        logits = model(tokens)
    assert float(fns.loss(fns.theta0)) == pytest.approx(float(lm_loss(logits, tokens)),
                                                        rel=1e-12)
    want = logits[:, :-1].reshape(-1, TINY.d_vocab).log_softmax(-1)
    torch.testing.assert_close(fns.logprobs(fns.theta0), want, rtol=1e-10, atol=1e-12)
    # theta moves only the component: a perturbed head changes the loss
    assert float(fns.loss(fns.theta0 + 0.1)) != pytest.approx(float(fns.loss(fns.theta0)))


def test_hutchinson_agrees_with_the_full_hessian_of_a_small_head(model_and_tokens):
    model, tokens = model_and_tokens
    fns = component_functions(model, "1:1", LayerPrefixes(model, tokens))
    exact = float(torch.trace(exact_hessian(fns.loss, fns.theta0)))  # d = 70
    est = hessian_trace(fns.loss, fns.theta0, probes=200, seed=3, exact=False)
    assert not est.exact and est.probes == 200 and est.stderr > 0
    assert abs(est.value - exact) <= 3 * est.stderr, (est, exact)
    assert hessian_trace(fns.loss, fns.theta0, exact=True).value == pytest.approx(exact)


def test_fisher_traces_match_brute_force_per_token_gradients(model_and_tokens):
    """Per-token gradients one by one with autograd on the model itself; the true Fisher's
    expectation as the exact sum over the whole vocabulary."""
    model, tokens = model_and_tokens
    seqs = tokens[:2]
    fns = component_functions(model, "0:0", LayerPrefixes(model, seqs))
    sel = component_selection(model, "0:0")
    state = {k: v.detach() for k, v in model.named_parameters()}

    def logp_at(theta):  # [B, T − 1, V]
        out = torch.func.functional_call(model, sel.scatter(state, theta), (seqs,))
        return out[:, :-1].log_softmax(-1)

    emp, true = [], []
    theta = fns.theta0.clone().requires_grad_(True)
    for b in range(seqs.shape[0]):
        for t in range(seqs.shape[1] - 1):
            lp = logp_at(theta)[b, t]
            sq = []
            for y in range(TINY.d_vocab):
                (g,) = torch.autograd.grad(lp[y], theta, retain_graph=True)
                sq.append(float(g.square().sum()))
            p = lp.detach().exp().numpy()
            true.append(float(np.dot(p, sq)))
            emp.append(sq[int(seqs[b, t + 1])])
    est = fisher_traces(fns.logprobs, fns.theta0, fns.targets, exact_true=True)
    assert est["empirical"].value == pytest.approx(np.mean(emp), rel=1e-9)
    assert est["true"].value == pytest.approx(np.mean(true), rel=1e-9)
    mc = fisher_traces(fns.logprobs, fns.theta0, fns.targets, true_samples=16, seed=1)
    assert abs(mc["true"].value - np.mean(true)) <= 3 * mc["true"].stderr


def test_a_head_with_zero_output_weights_has_zero_ablation_scores(model_and_tokens):
    model, tokens = model_and_tokens
    silent = AttentionOnlyTransformer(TINY).double().eval()
    silent.load_state_dict(model.state_dict())
    with torch.no_grad():  # head 1:0's W_O columns
        silent.blocks[1].attn.out.weight[:, 0:TINY.d_head] = 0
    scores = head_ablations(silent, 1, [0, 1], LayerPrefixes(silent, tokens), seed=0)
    for kind in ("zero", "mean", "resample"):
        assert scores[0][kind] == 0.0 and scores[0][f"{kind}_stderr"] == 0.0
    assert scores[1]["zero"] != 0.0  # the other head still matters


def test_ablations_are_loss_differences_per_sequence(model_and_tokens):
    model, tokens = model_and_tokens
    scores = head_ablations(model, 0, [1], LayerPrefixes(model, tokens), seed=0)[1]
    # zero-ablating z_h by hand: the head's contribution through W_O removed
    with torch.no_grad():
        zeroed = AttentionOnlyTransformer(TINY).double().eval()
        zeroed.load_state_dict(model.state_dict())
        zeroed.blocks[0].attn.out.weight[:, TINY.d_head:2 * TINY.d_head] = 0
        diff = sequence_losses(zeroed(tokens), tokens) - sequence_losses(model(tokens), tokens)
    assert scores["zero"] == pytest.approx(float(diff.mean()), rel=1e-10)
    assert scores["zero_stderr"] == pytest.approx(float(diff.std() / np.sqrt(5)), rel=1e-8)


def test_derangement_moves_every_sequence():
    for n in (2, 3, 10):
        perm = derangement(n, seed=4)
        assert sorted(perm) == list(range(n)) and all(perm != np.arange(n))
    with pytest.raises(ValueError, match="at least 2"):
        derangement(1, 0)


def test_sequence_losses_average_to_the_model_loss(model_and_tokens):
    model, tokens = model_and_tokens
    with torch.no_grad():
        logits = model(tokens)
    per_seq = sequence_losses(logits, tokens)
    assert float(per_seq.mean()) == pytest.approx(float(lm_loss(logits, tokens)), rel=1e-12)
    ce = F.cross_entropy(logits[0, :-1], tokens[0, 1:])
    assert float(per_seq[0]) == pytest.approx(float(ce), rel=1e-12)
