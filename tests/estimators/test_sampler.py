import numpy as np
import pytest
import torch
from torch import nn

from rllc.estimators import (
    AllChainsDivergedError,
    SGLDConfig,
    WeightSelection,
    estimate_llc,
    full_data_loss,
    sample,
    select_all,
    select_parameters,
    supervised_objective,
)

# Batched (vmap) and one-chain kernels may reassociate float32 sums differently.
RTOL, ATOL = 1e-5, 1e-6
TRACES = ("loss", "batch_init_loss", "distance", "grad_norm")


def small_config(**kw) -> SGLDConfig:
    base = dict(step_size=1e-3, localization=10.0, nbeta=50.0, chains=4, draws=12,
                batch_size=32, seed=7)
    return SGLDConfig(**{**base, **kw})


def assert_traces_close(a, b):
    for name in TRACES:
        np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=RTOL, atol=ATOL,
                                   err_msg=name)


@pytest.mark.parametrize(
    "extra",
    [{}, {"independent_batches": True}, {"preconditioner": "rmsprop"}, {"steps_per_draw": 3}],
    ids=["shared-batches", "independent-batches", "rmsprop", "thinned"],
)
def test_chain_k_of_batched_run_equals_single_chain_run(mlp_problem, extra):
    model, data = mlp_problem
    obj = supervised_objective(model)
    cfg = small_config(**extra)
    batched = sample(model, obj, data, config=cfg)
    for k in (0, 2):
        single = sample(model, obj, data, config=cfg, chain_ids=[k])
        for name in TRACES:
            np.testing.assert_allclose(
                getattr(batched, name)[k], getattr(single, name)[0], rtol=RTOL, atol=ATOL
            )


def test_selecting_everything_is_the_unrefined_run(mlp_problem):
    model, data = mlp_problem
    obj = supervised_objective(model)
    cfg = small_config()
    default = sample(model, obj, data, config=cfg)
    everything = [
        select_all(model),
        select_parameters(model, ["*"]),
        # every entry as explicit flat indices: the slice path, not the whole-tensor path
        WeightSelection({n: torch.arange(p.numel()) for n, p in model.named_parameters()}),
    ]
    for sel in everything:
        assert_traces_close(sample(model, obj, data, sel, cfg), default)


def test_sampling_leaves_the_model_untouched(mlp_problem):
    model, data = mlp_problem
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sample(model, supervised_objective(model), data, config=small_config())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_refined_selection_moves_fewer_weights(mlp_problem):
    model, data = mlp_problem
    obj = supervised_objective(model)
    sel = select_parameters(model, ["fc2.*"])
    res = sample(model, obj, data, sel, small_config())
    assert res.num_weights == sel.size(model) == 4 * 2 + 2
    assert res.loss.shape == res.distance.shape == (4, 12)
    assert (res.distance[:, 1:] > 0).all()


def test_data_refined_run_uses_the_given_data(mlp_problem):
    model, (x, y) = mlp_problem
    obj = supervised_objective(model)
    other = (x * 2.0, y)
    cfg = small_config()
    res = sample(model, obj, other, config=cfg)
    params = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    assert res.init_loss == pytest.approx(full_data_loss(obj, params, other, cfg))
    assert res.init_loss != pytest.approx(sample(model, obj, (x, y), config=cfg).init_loss)


def test_all_chains_diverging_is_a_clear_error(mlp_problem):
    model, data = mlp_problem
    cfg = small_config(step_size=50.0, localization=0.0, nbeta=1e4)
    with pytest.raises(AllChainsDivergedError, match="smaller step size"):
        estimate_llc(model, supervised_objective(model), data, config=cfg)


def test_mala_acceptance_falls_with_step_size(mlp_problem):
    model, data = mlp_problem
    obj = supervised_objective(model)
    small = sample(model, obj, data, config=small_config(step_size=1e-5, batch_size=256))
    large = sample(model, obj, data, config=small_config(step_size=5e-3, batch_size=256))
    assert np.nanmean(small.mala_acceptance) > 0.95
    assert np.nanmean(large.mala_acceptance) < np.nanmean(small.mala_acceptance)


def test_bad_inputs(mlp_problem):
    model, (x, y) = mlp_problem
    obj = supervised_objective(model)
    with pytest.raises(ValueError, match="leading dimension"):
        sample(model, obj, (x, y[:10]), config=small_config())
    with pytest.raises(ValueError, match="chain_ids"):
        sample(model, obj, (x, y), config=small_config(), chain_ids=[])


@pytest.mark.slow
def test_regular_model_recovers_half_the_parameter_count():
    """Linear regression is regular: λ = d/2 exactly (d = 18 here).

    Minibatch SGLD (batch 1000 of n = 20,000) at nβ = n/log n, paired estimator.
    Tolerance 7%: the discretisation bias at ε·h ≈ 0.05 is ≈ 1.5%, minibatch gradient noise
    adds ≈ 2% at this batch size, and 4 × 1500 draws give a standard error ≈ 2%.
    """
    torch.manual_seed(1)
    n, d_in, d_out = 20_000, 5, 3
    x = torch.randn(n, d_in)
    y = x @ torch.randn(d_out, d_in).T + torch.randn(n, d_out)
    model = nn.Linear(d_in, d_out)
    with torch.no_grad():  # w* = the exact least-squares minimum
        sol = torch.linalg.lstsq(torch.cat([x, torch.ones(n, 1)], 1), y).solution
        model.weight.copy_(sol[:d_in].T)
        model.bias.copy_(sol[d_in])
    cfg = SGLDConfig(step_size=2e-5, localization=0.0, nbeta=None, chains=4, draws=1500,
                     burnin=100, steps_per_draw=2, batch_size=1000, estimator="paired")
    est, res = estimate_llc(model, supervised_objective(model), (x, y), config=cfg)
    assert res.num_weights == 18
    assert est.llc_mean == pytest.approx(9.0, rel=0.07)
    assert est.diverged_chains == 0


@pytest.mark.parametrize("extra", [{}, {"preconditioner": "rmsprop"}], ids=["sgld", "rmsprop"])
def test_warmup_steps_are_the_unrecorded_start_of_one_longer_run(mlp_problem, extra):
    """k warm-up steps at the sampling ε are the first k steps of a run k draws longer
    (steps_per_draw 1): the same noise, minibatches and RMSProp state, just not recorded."""
    model, data = mlp_problem
    obj = supervised_objective(model)
    k = 5
    warm = sample(model, obj, data, config=small_config(warmup_steps=k, **extra))
    long = sample(model, obj, data, config=small_config(draws=12 + k, **extra))
    for name in TRACES:
        np.testing.assert_allclose(getattr(warm, name), getattr(long, name)[:, k:],
                                   rtol=RTOL, atol=ATOL, err_msg=name)
    # its own ε: a larger warm-up step moves the chains further before the first draw
    far = sample(model, obj, data, config=small_config(
        warmup_steps=k, warmup_step_size=1e-2, **extra))
    assert far.distance[:, 0].mean() > warm.distance[:, 0].mean()


def test_a_run_whose_chains_all_diverged_stops_early(mlp_problem):
    model, data = mlp_problem
    cfg = small_config(step_size=10.0, draws=2000)
    steps = []
    result = sample(model, supervised_objective(model), data, config=cfg,
                    progress=lambda step, total: steps.append(step))
    assert result.diverged.all() and result.loss.shape == (4, 2000)
    assert np.isnan(result.loss[:, -1]).all()
    assert max(steps) < 100 < cfg.total_steps  # the loop stopped at the first all-NaN draw
