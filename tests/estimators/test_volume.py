"""The volume-scaling estimator (``rllc.estimators.volume``).

Synthetic draws come from tempered posteriors p(w) ∝ exp(−nβ·ΔL(w) − (γ/2)‖w‖²) drawn
exactly with numpy (no SGLD), for toy losses whose prior volume V(ε) is known:

- regular: ΔL = Σ_{i≤k} w_i², V ∝ ε^(k/2);
- degenerate: ΔL = Σ_{i≤k} w_i² + (w_a² + w_b²)², V ∝ ε^((k+1)/2) (the quartic block
  contributes 1/2 from two weights, not 1);
- crossing: ΔL = (w_1·w_2)², λ = 1/2 with multiplicity 2, V ∝ √ε·log(1/ε): the fitted
  slope is the local slope of the exact log V over the fitted range, below 1/2.
"""

import numpy as np
import pytest
from scipy import integrate, special

from rllc.estimators.dln import DLN_SAMPLER, DLNProblem, estimate_dln
from rllc.estimators.volume import VolumeEstimate, volume_scaling

NBETA, GAMMA = 1e4, 1.0
SHAPE = (16, 2000)  # [chain, draw]


def regular(rng: np.random.Generator, k: int) -> np.ndarray:
    """ΔL = Σ_{i≤k} w_i²: the posterior is N(0, 1/(2nβ + γ)) per weight."""
    w = rng.normal(scale=(2 * NBETA + GAMMA) ** -0.5, size=(*SHAPE, k))
    return (w**2).sum(-1)


def quartic(rng: np.random.Generator) -> np.ndarray:
    """ΔL = (w_a² + w_b²)²: u = w_a² + w_b² has density ∝ exp(−nβ·u² − γu/2) on u ≥ 0
    (the area element is π·du); drawn by rejection from a half-normal."""
    out = np.empty(0)
    while out.size < np.prod(SHAPE):
        u = np.abs(rng.normal(scale=(2 * NBETA) ** -0.5, size=np.prod(SHAPE)))
        out = np.concatenate([out, u[rng.random(u.size) < np.exp(-GAMMA * u / 2)]])
    return (out[: np.prod(SHAPE)] ** 2).reshape(SHAPE)


def crossing(rng: np.random.Generator) -> np.ndarray:
    """ΔL = (w_1·w_2)²: w_1's marginal ∝ exp(−γw_1²/2)·(2nβ·w_1² + γ)^(−1/2), drawn by
    rejection from N(0, 1/γ); then w_2 | w_1 ~ N(0, 1/(2nβ·w_1² + γ))."""
    w1 = np.empty(0)
    while w1.size < np.prod(SHAPE):
        x = rng.normal(scale=GAMMA**-0.5, size=4 * np.prod(SHAPE))
        keep = rng.random(x.size) < np.sqrt(GAMMA / (2 * NBETA * x**2 + GAMMA))
        w1 = np.concatenate([w1, x[keep]])
    w1 = w1[: np.prod(SHAPE)]
    w2 = rng.normal(size=w1.size) / np.sqrt(2 * NBETA * w1**2 + GAMMA)
    return ((w1 * w2) ** 2).reshape(SHAPE)


def crossing_log_volume(eps: float) -> float:
    """log P[(w_1·w_2)² ≤ ε] for w ~ N(0, I/γ): with x = √γ·|w_1| (half-normal),
    P[√γ·|w_2| ≤ γ√ε/x] = erf(γ·√(ε/2)/x), averaged over x by quadrature."""
    s = GAMMA * np.sqrt(eps / 2)

    def f(x: float) -> float:
        return special.erf(s / x) * np.exp(-x * x / 2)

    val = sum(integrate.quad(f, a, b, limit=200)[0]
              for a, b in [(0, s), (s, 1), (1, np.inf)])
    return float(np.log(val * np.sqrt(2 / np.pi)))


@pytest.mark.parametrize("k", [2, 9, 20])
def test_regular_quadratic_gives_half_the_dimension(k):
    est = volume_scaling(regular(np.random.default_rng(k), k), NBETA)
    assert isinstance(est, VolumeEstimate)
    assert abs(est.llc - k / 2) < 3 * est.stderr, est
    assert 0 < est.stderr < 0.02 * k / 2
    assert est.eps_low < est.eps_high and est.points == 24 and est.chains == SHAPE[0]
    assert 0 < est.draws_in_range <= np.prod(SHAPE)


def test_degenerate_quartic_block_adds_one_half():
    rng = np.random.default_rng(1)
    k = 8
    est = volume_scaling(regular(rng, k) + quartic(rng), NBETA)
    assert abs(est.llc - (k + 1) / 2) < 3 * est.stderr, est
    # the naive count of the dimension would be k/2 + 1: far outside
    assert abs(est.llc - (k / 2 + 1)) > 10 * est.stderr


def test_crossing_follows_the_exact_local_slope():
    """λ = 1/2 with multiplicity 2: V(ε) ∝ √ε·log(1/ε), so the slope over any range is the
    exact log V's local slope there (a least-squares slope of a smooth curve lies between
    its local slopes), below 1/2 by ≈ 1/(2·log(1/ε))."""
    est = volume_scaling(crossing(np.random.default_rng(2)), NBETA)
    grid = np.geomspace(est.eps_low, est.eps_high, 9)
    log_v = np.array([crossing_log_volume(e) for e in grid])
    local = np.diff(log_v) / np.diff(np.log(grid))
    assert local.min() - 3 * est.stderr < est.llc < local.max() + 3 * est.stderr, (est, local)
    assert est.llc < 0.5 - 10 * est.stderr


def test_invariances_and_what_is_left_out():
    rng = np.random.default_rng(3)
    dl = regular(rng, 6)
    base = volume_scaling(dl, NBETA)
    # only nβ·ΔL enters the weights, and a rescaled ΔL rescales ε: same slope
    scaled = volume_scaling(dl * 10, NBETA / 10)
    assert scaled.llc == pytest.approx(base.llc, rel=1e-9)
    assert scaled.eps_low == pytest.approx(10 * base.eps_low, rel=1e-9)
    # burn-in drops leading draws
    assert volume_scaling(dl, NBETA, burnin=500).llc == pytest.approx(
        volume_scaling(dl[:, 500:], NBETA).llc, rel=1e-12)
    # a diverged chain is left out, by flag or by its non-finite draws
    bad = dl.copy()
    bad[3, 100] = np.nan
    rest = volume_scaling(np.delete(dl, 3, axis=0), NBETA)
    assert volume_scaling(bad, NBETA).llc == pytest.approx(rest.llc, rel=1e-12)
    flags = np.zeros(SHAPE[0], dtype=bool)
    flags[3] = True
    flagged = volume_scaling(dl, NBETA, diverged=flags)
    assert flagged.llc == pytest.approx(rest.llc, rel=1e-12) and flagged.chains == 15


@pytest.mark.parametrize("args, kwargs, match", [
    ((np.ones(10), 1.0), {}, "chain, draw"),
    ((np.ones((2, 10)), 0.0), {}, "nbeta"),
    ((np.ones((2, 10)), float("nan")), {}, "nbeta"),
    ((np.ones((2, 10)), 1.0), {"burnin": 10}, "burnin"),
    ((np.ones((2, 10)), 1.0), {"diverged": np.zeros(3, bool)}, "diverged"),
    ((np.ones((1, 10)), 1.0), {}, "at least 2 chains"),
    ((np.full((2, 10), np.nan), 1.0), {}, "at least 2 chains"),
    ((np.ones((2, 10)), 1.0), {"points": 2}, "points"),
    ((np.ones((2, 10)), 1.0), {"min_ess": 0.5}, "min_ess"),
    ((np.ones((2, 10)), 1.0), {"min_draws": 0}, "min_draws"),
    ((-np.ones((2, 10)), 1.0), {}, "ΔL > 0"),
])
def test_input_validation(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        volume_scaling(*args, **kwargs)


def test_too_few_draws_is_a_clear_error():
    dl = regular(np.random.default_rng(4), 10)
    with pytest.raises(ValueError, match="too few draws for the volume-scaling fit"):
        volume_scaling(dl[:, :1], NBETA)  # 16 draws: no range with ESS ≥ 10
    with pytest.raises(ValueError, match=r"too few draws .* lie in the usable ε range"):
        volume_scaling(dl[:, :3], NBETA)  # 48 draws: a range, but with too few draws


def test_estimate_dln_reports_the_volume_estimate():
    cfg = DLN_SAMPLER.model_copy(update={"chains": 4, "draws": 300, "steps_per_draw": 5,
                                         "warmup_steps": 1000, "step_size": 1e-4,
                                         "burnin": 50})
    out = estimate_dln(DLNProblem(widths=(3, 2, 3), true_rank=1, samples=10_000), cfg,
                       systematic=False)
    assert {"llc_volume", "llc_volume_stderr", "llc_volume_draws"} <= out.keys()
    assert out["llc_volume"] == pytest.approx(out["true_llc"], rel=0.3)
    assert out["llc_volume_stderr"] > 0
    assert 0 < out["llc_volume_draws"] <= 4 * 250
    # too few draws for the fit: the keys are there, None
    few = cfg.model_copy(update={"chains": 2, "draws": 30, "warmup_steps": 0, "burnin": 0})
    out = estimate_dln(DLNProblem(widths=(3, 2, 3), true_rank=1, samples=10_000), few,
                       systematic=False)
    assert out["llc_volume"] is None and out["llc_volume_stderr"] is None
    assert out["llc_volume_draws"] is None and out["llc_mean"] > 0
