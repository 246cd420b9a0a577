"""Burn-in chosen from the trace: where the chains have stopped drifting away from w*.

Every chain starts at w*, where L(w*) is the lowest loss it will see, and climbs to the
posterior's typical loss; draws of that climb pull λ̂ low (on the paper's heads, by ≈ 3%
with no burn-in, several times the spread over seeds). The burn-in is chosen by MSER
(the marginal standard error rule; White 1997, as batched "MSER-m" by Spratt 1998):

    d* = argmin_d  Σ_{j ≥ d} (Y_j − Ȳ_{≥d})² / (K − d)²,   d ≤ K/2

over the means Y_j of K consecutive blocks of the chain-averaged series. Leaving out
more draws trades a smaller bias for fewer draws; the rule stops where dropping another
block no longer narrows the confidence interval of the remaining mean, i.e. where the
block means stop trending within their noise. The minimum is taken over at most the first
half, so at least half of the draws are kept.

Where minibatches run in whole epochs (one draw per SGLD step, ``mcse.epoch_draws``) the
burn-in is rounded up to an epoch boundary, so that the kept draws are whole epochs when
the run is; then the plain and paired estimators coincide (their difference,
nβ·(mean L_B(w*) − L_n(w*)), is a sum over whole epochs: zero).
"""

from __future__ import annotations

import math

import numpy as np

from .mcse import block_means

#: Blocks the trace is cut into for MSER (MSER-m with m = draws / MSER_BLOCKS).
MSER_BLOCKS = 40


def auto_burnin(x: np.ndarray, epoch: int | None = None) -> int:
    """Draws to leave out of ``x[chain, draw]`` (diverged chains already removed), by MSER
    on the chain-averaged series (module docstring); a multiple of ``epoch`` when given and
    at most half the draws."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[1]
    m = max(1, n // MSER_BLOCKS)
    y = block_means(x.mean(axis=0, keepdims=True), m)[0]  # [K]
    k = y.size
    if k < 4 or not np.isfinite(y).all():
        return 0
    scores = [
        float(((y[d:] - y[d:].mean()) ** 2).sum()) / (k - d) ** 2 for d in range(k // 2 + 1)
    ]
    burnin = min(int(np.argmin(scores)) * m, n // 2)
    if epoch and epoch <= n // 4:
        up = math.ceil(burnin / epoch) * epoch
        burnin = up if up <= n // 2 else burnin // epoch * epoch
    return burnin
