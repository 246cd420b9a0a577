"""Chain diagnostics on ``[chain, draw]`` arrays: MALA acceptance, R-hat, ESS.

Each function is plain numpy/torch and returns NaN where the diagnostic is undefined
(too few draws), never raises for short chains.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch


def mala_log_acceptance(
    w: torch.Tensor,  # [chain, d] state before the step
    w_new: torch.Tensor,  # [chain, d] state after the step
    u: torch.Tensor,  # [chain] potential U(w) = nβ·L(w) + (γ/2)·‖w − w*‖²
    u_new: torch.Tensor,  # [chain] U(w_new)
    grad_u: torch.Tensor,  # [chain, d] ∇U(w)
    grad_u_new: torch.Tensor,  # [chain, d] ∇U(w_new)
    step_size: float,
    precond: torch.Tensor | float = 1.0,  # G, broadcastable to [chain, d]
) -> torch.Tensor:
    """log of the Metropolis-Hastings acceptance ratio of one Langevin step, per chain.

    The Langevin proposal is q(w'|w) = N(w − (ε/2)·G·∇U(w), ε·G). Then

        log α = −U(w') + U(w) + log q(w|w') − log q(w'|w),
        log q(a|b) = −‖a − b + (ε/2)·G·∇U(b)‖²_{(εG)⁻¹} / 2.

    SGLD never rejects; how far α falls below 1 says how much discretisation error the
    step size ε brings (a common target is α ≈ 0.9). With minibatch potentials it is an
    estimate, as in devinterp's ``mala_acceptance_probability``.
    """
    eps = step_size
    fwd = w_new - w + 0.5 * eps * precond * grad_u
    bwd = w - w_new + 0.5 * eps * precond * grad_u_new
    log_q_fwd = -(fwd.square() / (eps * precond)).sum(-1) / 2
    log_q_bwd = -(bwd.square() / (eps * precond)).sum(-1) / 2
    return (u - u_new + log_q_bwd - log_q_fwd).clamp(max=0.0)


def rhat(x: np.ndarray) -> float:
    """Rank-normalised split R-hat (Vehtari et al. 2021) of ``x[chain, draw]``; NaN if undefined."""
    return _arviz("rhat", x)


def ess(x: np.ndarray) -> float:
    """Bulk effective sample size of ``x[chain, draw]``; NaN if undefined."""
    return _arviz("ess", x)


def arviz_module():
    """ArviZ, imported on first use: it costs ≈ 2 s, which every Ray worker would pay."""
    with warnings.catch_warnings():  # ArviZ announces its refactor on import; not our concern.
        warnings.simplefilter("ignore", FutureWarning)
        import arviz

    return arviz


def _arviz(name: str, x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] < 4 or not np.isfinite(x).all():
        return float("nan")
    fn = getattr(arviz_module(), name)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        return float(fn(x))

