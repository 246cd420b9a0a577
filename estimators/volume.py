"""The volume-scaling estimator of λ: the slope of log V(ε) against log ε.

The learning coefficient is the exponent of the volume of near-minimal weights: under the
localising prior φ(w) = N(w*; γ⁻¹I),

    V(ε) = ∫ φ(w)·1[ΔL(w) ≤ ε] dw  ∝  ε^λ·(log 1/ε)^(m−1)      (ε → 0),

with ΔL(w) = L_n(w) − L_n(w*) and m the multiplicity. Draws of the tempered posterior
p(w) ∝ exp(−nβ·ΔL(w))·φ(w) almost never fall where ε is small enough for that law (nβ·ΔL
is roughly Gamma(λ, 1), so P[nβ·ΔL ≤ t] ≈ t^λ/Γ(λ + 1)), so counting them is useless;
but reweighting each draw by exp(nβ·ΔL) undoes the tempering exactly and turns them into
draws of φ. With t_i = nβ·ΔL_i over all draws i (chains and draws pooled after burn-in),
the self-normalised importance-sampling estimate is

    V̂(ε) = Σ_i exp(t_i)·1[ΔL_i ≤ ε] / Σ_i exp(t_i),

computed in log space (logsumexp), and

    λ̂_vol = slope of log V̂(ε) against log ε over [ε_low, ε_high]

by weighted least squares on ``points`` log-spaced ε. The normaliser shifts log V̂ by a
constant and leaves the slope alone; it is dropped.

**Fitting range.** log V̂(ε) is only as good as the draws that carry it: the sum is
dominated by the draws with the largest t below ε, and its effective sample size
ESS(ε) = (Σ exp t_i)²/Σ exp(2·t_i) over draws with ΔL_i ≤ ε counts them. ESS(ε) rises from
0 at the smallest draw, peaks near the bulk of the posterior, and falls to ≈ 1 again in
the upper tail, where a few draws of large t (huge weight, few of them) dominate every
sum. The fit uses the contiguous ε range around the peak where ESS(ε) ≥ ``min_ess``
(default 10, "a handful" of effective draws) for the pooled draws and for every
leave-one-chain-out subset, so that the jackknife below never meets an empty or
one-draw point; it must span ``min_decades`` and hold ``min_draws`` draws. On the deep
linear networks of ``rllc.estimators.dln`` (nβ = 1000, γ = 1) that is nβ·ΔL ≈ 1–3 up to
≈ 20–30 and all but a few dozen draws. It lies well below the prior's own scale
(nβ·ΔL ≈ nβ·O(1/γ)), where V(ε) stops growing as a power law and bends towards 1; the
rule does not look for that bend, so it suits problems where nβ/γ is large against λ.
Nor can it see a slow curvature of log V: on (5,4,5), r = 0 the slope rose from 7.62 to
7.77 to 7.94 (λ = 8) as nβ went 250, 1000, 4000 (benchmarks/README.md,
"volume_scaling.py"), while each run's curve looked straight.

Each point is weighted by its ESS (var log V̂ ≈ 1/ESS), which takes the weight off the
two noisy ends: on 16 × 2,000 exact Gamma(8, 1) draws of nβ·ΔL the weighted slope spreads
by 0.013 over replicates, an unweighted one by 0.048 (the mean nβ·ΔL, the usual λ̂, by
√(8/32,000) = 0.016).

**Standard error.** Jackknife over chains: the slope is refitted with each chain left out
(same ε grid, same weights), SE² = (C − 1)/C·Σ_c (λ̂_(c) − λ̂_(·))². Chains must be
independent, as they are for a full-batch loss.

**Exact losses only.** ``delta_loss`` must be the exact full-batch ΔL = L_n(w) − L_n(w*)
of each draw (as ``rllc.estimators.dln.sample_dln`` records it). On minibatch traces
(attention heads, any ``batch_size`` < n) L_B(w) − L_B(w*) carries minibatch noise of
order the batch loss's own spread, far above the small ΔL this estimator lives on, and
exp(nβ·ΔL) amplifies it: do not use the estimator there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

#: Fine grid for choosing the range: points per factor of 10 in ε.
_SCAN_PER_DECADE = 100


@dataclass(frozen=True)
class VolumeEstimate:
    """λ̂_vol with its jackknife SE and the range it was fitted over.

    ``draws_in_range`` counts the draws (pooled over the chains used, after burn-in) with
    ε_low ≤ ΔL ≤ ε_high; ``points`` is the number of ε grid points of the fit; ``chains``
    the chains used.
    """

    llc: float  # λ̂_vol, the fitted slope
    stderr: float
    draws_in_range: int  # draws with ΔL inside the fitted ε range
    eps_low: float
    eps_high: float
    points: int  # ε grid points in the fit
    chains: int = 0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "llc_volume": self.llc,
            "llc_volume_stderr": self.stderr,
            "llc_volume_draws": self.draws_in_range,
            "eps_low": self.eps_low,
            "eps_high": self.eps_high,
            "points": self.points,
            "chains": self.chains,
        }


def _draws(
    delta_loss: np.ndarray, nbeta: float, diverged: np.ndarray | None, burnin: int
) -> list[np.ndarray]:
    """Validated ΔL per chain used: finite draws after burn-in, diverged chains dropped."""
    dl = np.asarray(delta_loss, dtype=np.float64)
    if dl.ndim != 2:
        raise ValueError(f"delta_loss must be [chain, draw], got shape {dl.shape}")
    if not (np.isfinite(nbeta) and nbeta > 0):
        raise ValueError(f"nbeta must be a finite number > 0, got {nbeta}")
    n_chains, n_draws = dl.shape
    if not 0 <= int(burnin) < n_draws:
        raise ValueError(f"burnin must lie in [0, draws = {n_draws}), got {burnin}")
    dl = dl[:, int(burnin):]
    if diverged is None:
        diverged = ~np.isfinite(dl).all(axis=1)
    diverged = np.asarray(diverged, dtype=bool)
    if diverged.shape != (n_chains,):
        raise ValueError(f"diverged must have shape ({n_chains},), got {diverged.shape}")
    chains = [row[np.isfinite(row)] for row, bad in zip(dl, diverged, strict=True) if not bad]
    chains = [c for c in chains if c.size]
    if len(chains) < 2:
        raise ValueError(
            f"volume_scaling needs at least 2 chains with finite draws for its jackknife "
            f"SE, got {len(chains)} (of {n_chains}, {int(diverged.sum())} diverged)"
        )
    return chains


def _log_sums(t: list[np.ndarray], dl: list[np.ndarray], eps: np.ndarray, power: int
              ) -> np.ndarray:
    """log Σ_{i in chain c, ΔL_i ≤ ε_j} exp(power·t_i), ``[chain, grid]`` (−inf if none)."""
    out = np.full((len(t), eps.size), -np.inf)
    for c, (tc, dc) in enumerate(zip(t, dl, strict=True)):
        order = np.argsort(dc)
        dc, tc = dc[order], power * tc[order]
        # running logsumexp over the draws sorted by ΔL, read at each ε
        cum = np.logaddexp.accumulate(tc) if tc.size else tc
        k = np.searchsorted(dc, eps, side="right")
        out[c, k > 0] = cum[k[k > 0] - 1]
    return out


def _leave_one_out(log_s: np.ndarray) -> np.ndarray:
    """``[1 + chain, grid]``: the pooled log-sum, then each leave-one-chain-out one."""
    n = log_s.shape[0]
    rows = [logsumexp(log_s, axis=0)]
    for c in range(n):
        rows.append(logsumexp(np.delete(log_s, c, axis=0), axis=0))
    return np.stack(rows)


def _wls_slope(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted least-squares slope of each row of ``y[r, j]`` on ``x[j]`` with weights
    ``w[j]``."""
    w = w / w.sum()
    xm = (w * x).sum()
    ym = (y * w).sum(axis=-1, keepdims=True)
    return ((y - ym) * w * (x - xm)).sum(axis=-1) / (w * (x - xm) ** 2).sum()


def _usable_run(ok: np.ndarray, weight: np.ndarray) -> tuple[int, int] | None:
    """The contiguous run of True in ``ok`` holding the largest ``weight``: (first, last)."""
    best, best_w, start = None, -np.inf, None
    for j, flag in enumerate(np.append(ok, False)):
        if flag and start is None:
            start = j
        elif not flag and start is not None:
            w = weight[start:j].max()
            if w > best_w:
                best, best_w = (start, j - 1), w
            start = None
    return best


def volume_scaling(
    delta_loss: np.ndarray,
    nbeta: float,
    *,
    diverged: np.ndarray | None = None,
    burnin: int = 0,
    min_ess: float = 10.0,
    points: int = 24,
    min_decades: float = 0.15,
    min_draws: int = 100,
) -> VolumeEstimate:
    """λ̂_vol: the slope of the reweighted log-volume log V̂(ε) against log ε.

    Args:
        delta_loss: ``[chain, draw]`` exact full-batch ΔL = L_n(w) − L_n(w*) of each draw
            (``loss − init_loss`` of a full-batch ``SamplingResult``). Not minibatch
            losses: their noise swamps the small ΔL the fit lives on (module docstring).
        nbeta: the nβ the draws were sampled at.
        diverged: ``[chain]`` chains to leave out (default: those with a non-finite draw
            after burn-in). Other non-finite draws are dropped.
        burnin: leading draws of each chain to leave out.
        min_ess: the least effective sample size of V̂(ε) (pooled and with any one chain
            left out) at every ε of the fitted range.
        points: log-spaced ε of the fit, from ε_low to ε_high.
        min_decades: the least width of the range, log₁₀(ε_high/ε_low).
        min_draws: the least number of draws inside the range (with fewer, a range that
            passes ``min_ess`` still gives a slope, but a meaningless one: 32 draws of a
            Gamma(5) posterior gave 2.5 ± 0.6).

    Fits log V̂(ε) = λ·log ε + c over the range where ESS(ε) ≥ ``min_ess`` (module
    docstring), V̂(ε) ∝ Σ_i exp(nβ·ΔL_i)·1[ΔL_i ≤ ε]; SE by the jackknife over chains.

    Raises:
        ValueError: bad shapes or arguments, fewer than 2 usable chains, or no ε range of
            at least ``min_decades`` decades holding ``min_draws`` draws where V̂ has an
            effective sample size of ``min_ess``.
    """
    if points < 3:
        raise ValueError(f"points must be ≥ 3, got {points}")
    if not min_ess >= 1:
        raise ValueError(f"min_ess must be ≥ 1, got {min_ess}")
    if min_draws < 1:
        raise ValueError(f"min_draws must be ≥ 1, got {min_draws}")
    dl = _draws(delta_loss, nbeta, diverged, burnin)
    t = [nbeta * d for d in dl]
    pos = np.concatenate([d[d > 0] for d in dl])
    if pos.size < 2 or pos.min() == pos.max():
        raise ValueError(
            f"too few draws with ΔL > 0 to form a volume curve ({pos.size}): are these "
            "exact losses of a posterior around w*?"
        )

    # Choose the range on a fine log grid of ε spanning the draws.
    lo, hi = np.log10(pos.min()), np.log10(pos.max())
    scan = np.logspace(lo, hi, max(int((hi - lo) * _SCAN_PER_DECADE), 2) + 1)
    s1 = _leave_one_out(_log_sums(t, dl, scan, 1))
    s2 = _leave_one_out(_log_sums(t, dl, scan, 2))
    with np.errstate(invalid="ignore"):
        ess = np.nan_to_num(np.exp(2 * s1 - s2), nan=0.0)  # [1 + chain, grid]
    run = _usable_run(ess.min(axis=0) >= min_ess, ess[0])
    n_total = sum(d.size for d in dl)
    if run is None or np.log10(scan[run[1]] / scan[run[0]]) < min_decades:
        width = 0.0 if run is None else float(np.log10(scan[run[1]] / scan[run[0]]))
        raise ValueError(
            f"too few draws for the volume-scaling fit: the widest ε range where V̂(ε) has "
            f"an effective sample size ≥ {min_ess:g} in every leave-one-chain-out subset "
            f"spans {width:.3f} decades (need {min_decades:g}); {n_total} draws in "
            f"{len(dl)} chains, peak ESS {float(ess[0].max()):.1f}"
        )
    eps_low, eps_high = float(scan[run[0]]), float(scan[run[1]])
    all_dl = np.concatenate(dl)
    in_range = int(np.count_nonzero((all_dl >= eps_low) & (all_dl <= eps_high)))
    if in_range < min_draws:
        raise ValueError(
            f"too few draws for the volume-scaling fit: {in_range} of {n_total} draws lie in "
            f"the usable ε range [{eps_low:.3g}, {eps_high:.3g}] (need {min_draws})"
        )

    grid = np.logspace(np.log10(eps_low), np.log10(eps_high), points)
    grid[0], grid[-1] = eps_low, eps_high  # exactly the checked ends
    log_v = _leave_one_out(_log_sums(t, dl, grid, 1))  # [1 + chain, points]
    log_v2 = _leave_one_out(_log_sums(t, dl, grid, 2))
    weight = np.exp(2 * log_v[0] - log_v2[0])  # ESS of each point
    slopes = _wls_slope(np.log(grid), log_v, weight)
    llc, loo = float(slopes[0]), slopes[1:]
    n = loo.size
    stderr = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
    return VolumeEstimate(llc=llc, stderr=stderr, draws_in_range=in_range, eps_low=eps_low,
                          eps_high=eps_high, points=points, chains=len(dl))
