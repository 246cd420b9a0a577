"""The LLC estimate from loss traces, and its uncertainty.

    λ̂ = nβ · ( E_w[L_n(w)] − L_n(w*) ),   w ~ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²)

The expectation is the mean of the recorded draws after burn-in. Two forms:

- plain:  λ̂_c = nβ · ( mean_t L_{B_t}(w_{c,t}) − L_n(w*) )       (the reference estimator)
- paired: λ̂_c = nβ · mean_t ( L_{B_t}(w_{c,t}) − L_{B_t}(w*) )    (same minibatch for both)

Both estimate the same quantity when w_t does not depend on B_t (the loss is taken before
the update that uses B_t) and batches are drawn uniformly; paired differences cancel most
of the minibatch noise of L_B.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .diagnostics import arviz_module


class AllChainsDivergedError(RuntimeError):
    """Every chain diverged: no estimate can be formed."""


@dataclass(frozen=True)
class LLCEstimate:
    """Summary of λ̂ over the chains that did not diverge.

    ``llc_per_chain[chain]`` is NaN for diverged chains. ``llc_std`` is the spread of the
    per-chain estimates; ``llc_stderr`` is the Monte-Carlo standard error of the mean from
    the effective sample size of all draws (ArviZ ``mcse``), which stays honest when chains
    are autocorrelated or share minibatches.
    """

    llc_mean: float
    llc_std: float
    llc_stderr: float
    llc_per_chain: np.ndarray  # [chain]
    chains: int  # chains used (not diverged)
    draws: int  # draws used per chain (after burn-in)
    diverged_chains: int
    ess: float

    def as_dict(self) -> dict[str, object]:
        return {
            "llc_mean": self.llc_mean,
            "llc_std": self.llc_std,
            "llc_stderr": self.llc_stderr,
            "llc_per_chain": [None if np.isnan(x) else float(x) for x in self.llc_per_chain],
            "chains": self.chains,
            "draws": self.draws,
            "diverged_chains": self.diverged_chains,
            "ess": self.ess,
        }


def llc_draws_plain(loss: np.ndarray, init_loss: float, nbeta: float) -> np.ndarray:
    """nβ·(L_{B_t}(w_t) − L_n(w*)) for each draw: ``loss[chain, draw]`` → ``[chain, draw]``."""
    return nbeta * (np.asarray(loss, dtype=np.float64) - float(init_loss))


def llc_draws_paired(loss: np.ndarray, batch_init_loss: np.ndarray, nbeta: float) -> np.ndarray:
    """nβ·(L_{B_t}(w_t) − L_{B_t}(w*)) for each draw: ``[chain, draw]`` → ``[chain, draw]``."""
    return nbeta * (
        np.asarray(loss, dtype=np.float64) - np.asarray(batch_init_loss, dtype=np.float64)
    )


def summarize(
    llc_draws: np.ndarray, burnin: int = 0, diverged: np.ndarray | None = None
) -> LLCEstimate:
    """Mean, spread and standard error of λ̂ from per-draw contributions ``[chain, draw]``.

    Diverged chains (``diverged[chain]``) are excluded with a warning; if none is left,
    ``AllChainsDivergedError`` is raised.
    """
    draws = np.asarray(llc_draws, dtype=np.float64)
    if draws.ndim != 2:
        raise ValueError(f"llc_draws must be [chain, draw], got shape {draws.shape}")
    n_chains, n_draws = draws.shape
    if not 0 <= burnin < n_draws:
        raise ValueError(f"burnin must lie in [0, {n_draws}), got {burnin}")
    if diverged is None:
        diverged = ~np.isfinite(draws).all(axis=1)
    diverged = np.asarray(diverged, dtype=bool)
    kept = draws[~diverged, burnin:]
    n_div = int(diverged.sum())
    if kept.shape[0] == 0:
        raise AllChainsDivergedError(
            f"all {n_chains} chains diverged (non-finite or exploding loss); "
            "try a smaller step size (ε) or a larger localization (γ)"
        )
    if n_div:
        warnings.warn(
            f"{n_div} of {n_chains} chains diverged and are excluded from the estimate",
            RuntimeWarning,
            stacklevel=2,
        )
    per_chain = np.full(n_chains, np.nan)
    per_chain[~diverged] = kept.mean(axis=1)
    used = per_chain[~diverged]
    std = float(used.std(ddof=1)) if used.size > 1 else float("nan")
    ess, stderr = _ess_and_mcse(kept)
    return LLCEstimate(
        llc_mean=float(used.mean()),
        llc_std=std,
        llc_stderr=stderr,
        llc_per_chain=per_chain,
        chains=int(used.size),
        draws=int(kept.shape[1]),
        diverged_chains=n_div,
        ess=ess,
    )


def _ess_and_mcse(x: np.ndarray) -> tuple[float, float]:
    """Bulk ESS and the standard error of the mean of ``x[chain, draw]`` (NaN if undefined)."""
    if x.shape[1] < 4:
        return float("nan"), float("nan")
    az = arviz_module()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ess = float(az.ess(x, method="mean"))
        mcse = float(az.mcse(x, method="mean"))
    return ess, mcse

