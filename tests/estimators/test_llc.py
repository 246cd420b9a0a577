import numpy as np
import pytest

from rllc.estimators import AllChainsDivergedError, summarize
from rllc.estimators.llc import llc_draws_paired, llc_draws_plain


def test_plain_and_paired_formulas():
    loss = np.array([[1.0, 1.2], [1.1, 1.3]])  # loss[chain, draw]
    np.testing.assert_allclose(llc_draws_plain(loss, 1.0, 10.0), [[0, 2], [1, 3]])
    np.testing.assert_allclose(
        llc_draws_paired(loss, np.full_like(loss, 0.9), 10.0), [[1, 3], [2, 4]]
    )


def test_summary_statistics_and_burnin():
    rng = np.random.default_rng(0)
    draws = 5.0 + rng.normal(size=(4, 400))
    est = summarize(draws, burnin=100)
    per_chain = draws[:, 100:].mean(axis=1)
    assert est.llc_mean == pytest.approx(per_chain.mean())
    assert est.llc_std == pytest.approx(per_chain.std(ddof=1))
    assert est.draws == 300 and est.chains == 4
    # white noise: ESS ≈ number of draws, so stderr ≈ 1/√1200
    assert est.llc_stderr == pytest.approx(1 / np.sqrt(1200), rel=0.2)


def test_diverged_chains_are_excluded_with_a_warning():
    draws = np.ones((3, 10))
    draws[1, 5] = np.inf
    with pytest.warns(RuntimeWarning, match="1 of 3 chains diverged"):
        est = summarize(draws)
    assert est.chains == 2 and est.diverged_chains == 1
    assert np.isnan(est.llc_per_chain[1])
    with pytest.raises(AllChainsDivergedError):
        summarize(draws, diverged=np.ones(3, dtype=bool))


def test_short_traces_give_nan_not_errors():
    est = summarize(np.ones((1, 3)))
    assert np.isnan(est.llc_stderr) and np.isnan(est.llc_std)
