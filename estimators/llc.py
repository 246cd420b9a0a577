"""The LLC estimate from loss traces, and its uncertainty.

    λ̂ = nβ · ( E_w[L_n(w)] − L_n(w*) ),   w ~ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²)

The expectation is the mean of the recorded draws after burn-in. Two forms:

- plain:  λ̂_c = nβ · ( mean_t L_{B_t}(w_{c,t}) − L_n(w*) )       (the reference estimator)
- paired: λ̂_c = nβ · mean_t ( L_{B_t}(w_{c,t}) − L_{B_t}(w*) )    (same minibatch for both)

Both estimate the same quantity when w_t does not depend on B_t (the loss is taken before
the update that uses B_t) and every sample is drawn equally often, as epochs of shuffled
minibatches ensure; paired differences cancel most of the minibatch noise of L_B draw by
draw, and over whole epochs the two coincide exactly (``rllc.estimators.burnin``). Paired
is the default (``SGLDConfig.estimator``): its SE is never larger and often much smaller
(benchmarks/README.md, "Error bars"). Plain is the one to use where L_B(w*) of each draw's
batch is not known (traces of other tools) or the batches do not cover the data evenly.

Uncertainty: ``llc_stderr`` is the Monte-Carlo SE by batch means over whole epochs
(``rllc.estimators.mcse``, which says why not the ESS); the ESS-based SE is kept as the
diagnostic ``llc_stderr_ess``. The burn-in is chosen from the trace by default
(``rllc.estimators.burnin``). The systematic error of the discretisation is a separate
term (``rllc.estimators.systematic``); neither SE includes it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .burnin import auto_burnin
from .config import Burnin
from .mcse import batch_means_stderr, ess_stderr


class AllChainsDivergedError(RuntimeError):
    """Every chain diverged: no estimate can be formed."""


@dataclass(frozen=True)
class LLCEstimate:
    """Summary of λ̂ over the chains that did not diverge.

    ``llc_per_chain[chain]`` is NaN for diverged chains. ``llc_std`` is the spread of the
    per-chain estimates; ``llc_stderr`` the Monte-Carlo standard error of the mean by batch
    means (``rllc.estimators.mcse``: ``se_blocks`` blocks of ``se_block`` draws, pooled over
    chains when they are independent), ``llc_stderr_ess`` the ESS-based one (a diagnostic:
    too wide where minibatch noise cancels over epochs). ``burnin`` is the number of
    leading draws left out (chosen from the trace when asked for ``"auto"``).
    """

    llc_mean: float
    llc_std: float
    llc_stderr: float
    llc_per_chain: np.ndarray  # [chain]
    chains: int  # chains used (not diverged)
    draws: int  # draws used per chain (after burn-in)
    diverged_chains: int
    ess: float
    burnin: int = 0
    llc_stderr_ess: float = float("nan")
    se_block: int = 0
    se_blocks: int = 0

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
            "burnin": self.burnin,
            "llc_stderr_ess": self.llc_stderr_ess,
        }


def llc_draws_plain(loss: np.ndarray, init_loss: float, nbeta: float) -> np.ndarray:
    """nβ·(L_{B_t}(w_t) − L_n(w*)) for each draw: ``loss[chain, draw]`` → ``[chain, draw]``."""
    return nbeta * (np.asarray(loss, dtype=np.float64) - float(init_loss))


def llc_draws_paired(loss: np.ndarray, batch_init_loss: np.ndarray, nbeta: float) -> np.ndarray:
    """nβ·(L_{B_t}(w_t) − L_{B_t}(w*)) for each draw: ``[chain, draw]`` → ``[chain, draw]``."""
    return nbeta * (
        np.asarray(loss, dtype=np.float64) - np.asarray(batch_init_loss, dtype=np.float64)
    )


def resolve_burnin(
    llc_draws: np.ndarray, burnin: Burnin, diverged: np.ndarray, epoch: int | None = None
) -> int:
    """``burnin`` as a number of draws: itself, or for ``"auto"`` the trace's choice over the
    chains that did not diverge (0 when all did)."""
    if burnin != "auto":
        return int(burnin)
    ok = ~np.asarray(diverged, dtype=bool)
    return auto_burnin(np.asarray(llc_draws)[ok], epoch) if ok.any() else 0


def summarize(
    llc_draws: np.ndarray,
    burnin: Burnin = "auto",
    diverged: np.ndarray | None = None,
    *,
    independent: bool = False,
    epoch: int | None = None,
    groups: np.ndarray | None = None,
) -> LLCEstimate:
    """Mean, spread and standard error of λ̂ from per-draw contributions ``[chain, draw]``.

    Args:
        llc_draws: nβ·(L − baseline) per draw (``llc_draws_plain`` / ``llc_draws_paired``).
        burnin: leading draws to leave out, or ``"auto"`` to choose them from the trace.
        diverged: chains to leave out (default: those with a non-finite draw); they are
            excluded with a warning, and ``AllChainsDivergedError`` is raised if none is left.
        independent: whether the chains are independent (own minibatch streams, or a
            full-batch loss); only then are their blocks pooled for the SE.
        epoch: draws per whole epoch of minibatches (``mcse.epoch_draws``), so that SE
            blocks and the automatic burn-in align to epochs; None where there is none.
        groups: ``groups[chain]``, for chains pooled from independent runs (a sweep's
            seeds): chains that are not independent are averaged within their group only.
    """
    draws = np.asarray(llc_draws, dtype=np.float64)
    if draws.ndim != 2:
        raise ValueError(f"llc_draws must be [chain, draw], got shape {draws.shape}")
    n_chains, n_draws = draws.shape
    if diverged is None:
        diverged = ~np.isfinite(draws).all(axis=1)
    diverged = np.asarray(diverged, dtype=bool)
    burnin = resolve_burnin(draws, burnin, diverged, epoch)
    if not 0 <= burnin < n_draws:
        raise ValueError(f"burnin must lie in [0, {n_draws}), got {burnin}")
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
    ess, stderr_ess = ess_stderr(kept)
    kept_groups = None if groups is None else np.asarray(groups)[~diverged]
    blocked = batch_means_stderr(kept, independent=independent, epoch=epoch,
                                 groups=kept_groups)
    return LLCEstimate(
        llc_mean=float(used.mean()),
        llc_std=std,
        llc_stderr=blocked.stderr,
        llc_per_chain=per_chain,
        chains=int(used.size),
        draws=int(kept.shape[1]),
        diverged_chains=n_div,
        ess=ess,
        burnin=int(burnin),
        llc_stderr_ess=stderr_ess,
        se_block=blocked.block,
        se_blocks=blocked.blocks,
    )

