"""The batch-means standard error: honest where the ESS-based one is not.

Statistical tests use fixed seeds and compare a median reported SE with the spread of the
mean over R independent replicates. If the SE is exact, median SE / sd lies within the χ²
window √((R−1)/χ²_{R−1, 0.995})…√((R−1)/χ²_{R−1, 0.005}) with probability 99% (0.66–1.65
for R = 24), so the bounds below are the window, not a tuned margin.
"""

import numpy as np
import pytest
from scipy import stats

from rllc.estimators.mcse import (
    batch_means_stderr,
    block_means,
    choose_block,
    epoch_draws,
    ess_stderr,
)

R = 24


def window(replicates: int = R, level: float = 0.99) -> tuple[float, float]:
    dof = replicates - 1
    lo, hi = stats.chi2.ppf([(1 - level) / 2, (1 + level) / 2], dof)
    return float(np.sqrt(dof / hi)), float(np.sqrt(dof / lo))


def ar1(rng, chains: int, draws: int, rho: float) -> np.ndarray:
    x = np.empty((chains, draws))
    x[:, 0] = rng.normal(size=chains) / np.sqrt(1 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + rng.normal(size=chains)
    return x


def epoch_noise(rng, chains: int, epochs: int, n: int, batch: int) -> np.ndarray:
    """Per-draw minibatch means of fixed per-sample values minus their full mean, drawn in
    shuffled epochs (as ``rllc.estimators.sampler`` draws batches): L_B − L_n, which
    cancels over each whole epoch."""
    values = rng.normal(size=n) * 50.0  # minibatch noise ≫ the chain's own, as on heads
    values -= values.mean()
    out = []
    for _ in range(chains):
        draws = [values[rng.permutation(n)].reshape(-1, batch).mean(axis=1)
                 for _ in range(epochs)]
        out.append(np.concatenate(draws))
    return np.array(out)


def test_epoch_draws():
    assert epoch_draws(256, 32, 1) == 8
    assert epoch_draws(250, 32, 1) == 7  # a partial last batch is never drawn
    assert epoch_draws(256, 256, 1) is None  # full batch: no minibatch noise
    assert epoch_draws(256, 32, 3) is None  # thinned: the recorded batches do not cancel


def test_block_means_drop_a_partial_block():
    x = np.arange(10.0)[None]
    np.testing.assert_allclose(block_means(x, 3), [[1.0, 4.0, 7.0]])


def test_ar1_chains_are_covered():
    """Independent AR(1) chains (τ ≈ 19 draws): the pooled batch-means SE matches the spread
    of the mean over replicates."""
    rng = np.random.default_rng(0)
    means, ses = [], []
    for _ in range(R):
        x = ar1(rng, chains=4, draws=2000, rho=0.9)
        means.append(x.mean())
        ses.append(batch_means_stderr(x, independent=True).stderr)
    lo, hi = window()
    assert lo <= np.median(ses) / np.std(means, ddof=1) <= hi


def test_epoch_cancellation_is_seen_where_the_ess_is_not():
    """Strong minibatch noise that cancels over epochs: blocks of whole epochs give the true
    spread (the noise adds nothing to it); the ESS-based SE is more than 2× too wide."""
    rng = np.random.default_rng(1)
    means, ses, ses_ess = [], [], []
    for _ in range(R):
        signal = ar1(rng, chains=4, draws=800, rho=0.8)
        x = signal + epoch_noise(rng, chains=4, epochs=100, n=64, batch=8)  # epoch: 8 draws
        means.append(x.mean())
        ses.append(batch_means_stderr(x, independent=True, epoch=8).stderr)
        ses_ess.append(ess_stderr(x)[1])
    sd = np.std(means, ddof=1)
    lo, hi = window()
    assert lo <= np.median(ses) / sd <= hi
    assert np.median(ses_ess) / sd > max(2.0, hi)  # the diagnostic is far too wide here


def test_shared_noise_across_chains_is_not_pooled_away():
    """Chains that share a noise component (shared minibatches) are correlated: pooling
    their blocks would understate the SE; blocking the chain mean does not."""
    rng = np.random.default_rng(2)
    means, ses, pooled = [], [], []
    for _ in range(R):
        shared = ar1(rng, chains=1, draws=1000, rho=0.7)
        x = shared + ar1(rng, chains=8, draws=1000, rho=0.7)
        means.append(x.mean())
        ses.append(batch_means_stderr(x, independent=False).stderr)
        pooled.append(batch_means_stderr(x, independent=True).stderr)
    sd = np.std(means, ddof=1)
    lo, hi = window()
    assert lo <= np.median(ses) / sd <= hi
    assert np.median(pooled) / sd < lo


def test_block_grows_with_the_autocorrelation_time():
    rng = np.random.default_rng(3)
    white = choose_block(rng.normal(size=(4, 4000)))  # (16N)^⅓ ≈ 40 → 64
    slow = choose_block(ar1(rng, chains=4, draws=4000, rho=0.98))  # 2τ ≈ 99 → ≥ 856
    assert white <= 64 and slow >= 512
    assert choose_block(rng.normal(size=(4, 4000)), epoch=10) % 10 == 0  # whole epochs


def test_too_short_is_nan():
    assert np.isnan(batch_means_stderr(np.ones((2, 3)), independent=True).stderr)
    assert batch_means_stderr(np.zeros((2, 40)), independent=True).stderr == pytest.approx(0)
