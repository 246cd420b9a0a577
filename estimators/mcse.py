"""The Monte-Carlo standard error of λ̂: batch means over whole epochs, blocked from the trace.

λ̂ is the mean of the kept per-draw contributions ``x[chain, draw]``; its standard error
must account for two kinds of dependence between draws:

- **the chain's own autocorrelation** (SGLD moves a little per step);
- **minibatch noise that cancels over an epoch.** Minibatches run through the dataset in
  shuffled epochs (``rllc.estimators.sampler``), so over one whole epoch the batches cover
  every sample exactly once: Σ_epoch L_B(w*) = (batches per epoch)·L_n(w*). The per-draw
  noise of L_B is strongly *negatively* correlated within an epoch. An ESS-based SE
  (ArviZ's ``mcse``, Geyer's initial positive sequence) cuts the autocorrelation sum off at
  the first negative pair, so it counts that noise as if it never cancelled: measured on
  the paper's heads, it made the bars 2–4× too wide (issue 17).

**Batch means** (Flyvbjerg & Petersen 1989; Jones et al. 2006) see both. The kept draws of
a chain are cut into blocks of ``b`` consecutive draws, ``b`` a multiple of the epoch (when
one draw is one SGLD step, so that a block's batches are whole epochs), and the variance of
the mean is estimated from the spread of the block means:

    SE² = s²(block means) / (number of blocks)

The block must be long against the autocorrelation time τ, or the block means are
correlated and the SE too small; it must be short against the run, or few blocks make the
SE noisy. ``choose_block`` reblocks at b = e, 2e, 4e, … and takes the smallest b with
b³ ≥ 16·N·(r_b)², where N is the draws per chain and r_b = b·s²_b / s²_e ≈ 2τ the variance
ratio at that block size: twice the block of Lee, Drummond & Needs' rule b³ ≥ 2·N·r_b²
(2011, the one ``pyblock`` uses), because a block too short understates the SE while one
too long only makes it noisier (on AR(1) chains with τ ≈ 5 and 800 draws, Lee's block gave
0.75× the true SE, twice it 0.85×; tests/estimators/test_mcse.py).

**Independent series are replicates too.** Where several independent series are pooled,
the spread of their means, s(series means)/√(series), is an unbiased estimate of the same
variance whatever the autocorrelation, but noisy with few series; batch means are precise
but understate the SE when the autocorrelation time approaches the block length (on the
linear networks, whose flat directions relax over ≈ 10⁵ steps, pooled batch means gave
0.63× the spread over 16 replicate runs). The reported SE is the larger of the two.

**Which blocks are pooled** depends on whether the chains are independent:

- independent chains (each its own minibatch stream, or full-batch losses, as the linear
  networks have): blocks of all chains are pooled, giving chains × blocks − 1 degrees of
  freedom. This is a replicate-based SE: it *needs* independent batches;
- chains that share minibatches are correlated through the shared batch noise, so the
  chains are averaged draw by draw first and only that one series is blocked (fewer
  degrees of freedom, but the cross-chain correlation is inside each block).

``ess_stderr`` keeps the ESS-based SE as a diagnostic (``llc_stderr_ess``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from .diagnostics import arviz_module

#: Fewest blocks per series (chain, or the chain mean) a block size may leave.
MIN_BLOCKS = 4


@dataclass(frozen=True)
class BlockedSE:
    """A batch-means standard error: ``stderr`` from ``blocks`` block means of ``block``
    draws each (``pooled`` over chains, or of the chain-mean series)."""

    stderr: float
    block: int  # draws per block
    blocks: int  # block means used (degrees of freedom + 1)
    pooled: bool


def epoch_draws(n_rows: int, batch_size: int, steps_per_draw: int) -> int | None:
    """Draws per whole epoch of minibatches, where blocks should align to epochs.

    ``None`` when there is no epoch structure to respect: full batch (no minibatch noise),
    or more than one SGLD step per draw (the recorded batches are then a subset of each
    epoch, and their noise does not cancel). A final partial epoch is never drawn from
    (``sampler._Batches`` reshuffles instead), so an epoch is ``n // B`` batches.
    """
    if batch_size >= n_rows or steps_per_draw != 1:
        return None
    return n_rows // batch_size


def block_means(x: np.ndarray, block: int) -> np.ndarray:
    """``x[series, draw]`` → means of consecutive blocks ``[series, draws // block]``; a final
    partial block is left out."""
    k = x.shape[1] // block
    return x[:, : k * block].reshape(x.shape[0], k, block).mean(axis=2)


def choose_block(x: np.ndarray, epoch: int | None = None) -> int:
    """The block length for ``x[series, draw]`` (see the module docstring): the smallest
    b = e·2^k with b³ ≥ 16·N·(b·s²_b / s²_e)², e the epoch (1 without one), keeping at least
    ``MIN_BLOCKS`` blocks per series; the largest such b if none meets the rule."""
    n = x.shape[1]
    unit = epoch if epoch and epoch * MIN_BLOCKS <= n else 1
    base = _var_of_means(x, unit)
    b = unit
    while 2 * b * MIN_BLOCKS <= n:
        ratio = b * _var_of_means(x, b) / (unit * base) if base > 0 else 1.0
        if b**3 >= 16 * n * ratio**2:
            return b
        b *= 2
    return b


def batch_means_stderr(
    x: np.ndarray,
    *,
    independent: bool,
    epoch: int | None = None,
    block: int | None = None,
    groups: np.ndarray | None = None,
) -> BlockedSE:
    """SE of the mean of ``x[chain, draw]`` by batch means (module docstring); NaN for
    chains of fewer than ``MIN_BLOCKS`` draws or when fewer than two blocks can be formed.

    Chains that are not ``independent`` are averaged draw by draw before blocking: all of
    them, or, with ``groups[chain]``, those of each group (e.g. the chains of one seed of
    a sweep, which share its minibatches, while different seeds are independent); the
    groups' series are then pooled."""
    x = np.asarray(x, dtype=np.float64)
    if independent:
        series = x
    elif groups is None:
        series = x.mean(axis=0, keepdims=True)
    else:
        groups = np.asarray(groups)
        series = np.stack([x[groups == g].mean(axis=0) for g in np.unique(groups)])
    b = block or choose_block(series, epoch)
    means = block_means(series, b).ravel()
    if means.size < 2 or x.shape[1] < MIN_BLOCKS:
        return BlockedSE(math.nan, b, int(means.size), independent)
    stderr = float(means.std(ddof=1) / math.sqrt(means.size))
    if series.shape[0] > 1:  # independent series: their means are replicates too
        stderr = max(stderr, float(series.mean(axis=1).std(ddof=1) / math.sqrt(series.shape[0])))
    return BlockedSE(stderr=stderr, block=b, blocks=int(means.size), pooled=independent)


def ess_stderr(x: np.ndarray) -> tuple[float, float]:
    """Bulk ESS and ArviZ's ESS-based SE of the mean of ``x[chain, draw]`` (NaN if
    undefined): the diagnostic that ignores epoch cancellation (module docstring)."""
    if x.shape[1] < 4:
        return float("nan"), float("nan")
    az = arviz_module()
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        ess = float(az.ess(x, method="mean"))
        mcse = float(az.mcse(x, method="mean"))
    return ess, mcse


def _var_of_means(x: np.ndarray, block: int) -> float:
    means = block_means(x, block)
    if means.shape[1] < 2:
        return math.nan
    return float(means.var(axis=1, ddof=1).mean())
