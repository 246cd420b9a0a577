"""The automatic burn-in (MSER on the chain-averaged trace)."""

import numpy as np

from rllc.estimators import summarize
from rllc.estimators.burnin import auto_burnin


def climbing(rng, chains: int = 4, draws: int = 400, tau: float = 30.0) -> np.ndarray:
    """Chains that start at 0 and relax to 10 with time constant ``tau``, plus noise."""
    t = np.arange(draws)
    return 10 * (1 - np.exp(-t / tau)) + rng.normal(size=(chains, draws))


def test_the_climb_is_left_out():
    rng = np.random.default_rng(0)
    x = climbing(rng)
    burnin = auto_burnin(x)
    assert 60 <= burnin <= 200  # the mean is within 1 noise sd of 10 after ≈ 3τ = 90
    kept = x[:, burnin:]
    half = kept.shape[1] // 2
    se = summarize(x, burnin=burnin, independent=True).llc_stderr
    assert abs(kept[:, half:].mean() - kept[:, :half].mean()) <= 2 * np.sqrt(2) * se * 2


def test_stationary_chains_keep_almost_everything():
    rng = np.random.default_rng(1)
    assert auto_burnin(rng.normal(size=(4, 400))) <= 40


def test_at_most_half_and_rounded_to_epochs():
    rng = np.random.default_rng(2)
    x = climbing(rng, tau=400.0)  # never settles: capped at half
    assert auto_burnin(x) == 200
    b = auto_burnin(climbing(rng), epoch=16)
    assert b % 16 == 0 and b <= 200


def test_summarize_reports_the_chosen_burnin():
    rng = np.random.default_rng(3)
    x = climbing(rng)
    est = summarize(x)  # "auto" is the default
    assert est.burnin == auto_burnin(x) and est.draws == 400 - est.burnin
    assert summarize(x, burnin=5).burnin == 5
