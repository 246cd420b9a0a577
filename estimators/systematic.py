"""The systematic error of λ̂ from the step size, measured by the run itself.

SGLD with step ε samples a distribution a distance O(ε) from the tempered posterior, so λ̂
carries a bias c·ε (plus what γ and the finite nβ bring, which halving ε does not see).
Running again at ε/2 with twice the steps per draw (so the chains cover the same Langevin
time) measures that bias:

    λ̂(ε) − λ̂(ε/2) ≈ c·ε/2 = bias of λ̂(ε/2)

``StepRefinement`` reports the finer run's λ̂ with its Monte-Carlo SE as ``llc_stderr``
and |λ̂(ε) − λ̂(ε/2)| as ``llc_systematic``: the first-order ε-bias of the reported value,
derived from the run, never a fixed margin. Being a difference of two estimates it also
carries their noise, so it never comes out as an unjustified 0. The total uncertainty is
√(SE² + systematic²).

Richardson extrapolation removes the first-order term instead,

    λ̂_R = 2·λ̂(ε/2) − λ̂(ε),   SE_R = √(4·SE(ε/2)² + SE(ε)²),

at about 2.2× the Monte-Carlo SE; it is reported beside (``llc_richardson``), and what it
buys is measured in benchmarks/README.md ("Error bars").

Tuning (``rllc tune``) uses the same comparison as its refinement check.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .config import SGLDConfig
from .llc import LLCEstimate


def halved_step(config: SGLDConfig) -> SGLDConfig:
    """``config`` at ε/2 with twice the steps per draw: the same Langevin time per draw."""
    return config.model_copy(
        update={"step_size": config.step_size / 2, "steps_per_draw": 2 * config.steps_per_draw}
    )


@dataclass(frozen=True)
class StepRefinement:
    """λ̂ at ε (``coarse``) and at ε/2 (``fine``) of the same problem."""

    coarse: LLCEstimate
    fine: LLCEstimate

    @property
    def llc_mean(self) -> float:
        """The reported λ̂: the finer run's."""
        return self.fine.llc_mean

    @property
    def llc_stderr(self) -> float:
        """Monte-Carlo SE of the reported λ̂."""
        return self.fine.llc_stderr

    @property
    def llc_systematic(self) -> float:
        """|λ̂(ε) − λ̂(ε/2)|: the first-order step-size bias of λ̂(ε/2)."""
        return abs(self.coarse.llc_mean - self.fine.llc_mean)

    @property
    def llc_total(self) -> float:
        """√(SE² + systematic²)."""
        return math.hypot(self.llc_stderr, self.llc_systematic)

    @property
    def llc_richardson(self) -> float:
        """2·λ̂(ε/2) − λ̂(ε): λ̂ extrapolated to ε → 0 (first order)."""
        return 2 * self.fine.llc_mean - self.coarse.llc_mean

    @property
    def llc_richardson_stderr(self) -> float:
        """√(4·SE(ε/2)² + SE(ε)²): the runs are independent."""
        return math.hypot(2 * self.fine.llc_stderr, self.coarse.llc_stderr)

    def as_dict(self) -> dict[str, float]:
        return {
            "llc_mean": self.llc_mean,
            "llc_stderr": self.llc_stderr,
            "llc_systematic": self.llc_systematic,
            "llc_total": self.llc_total,
            "llc_coarse": self.coarse.llc_mean,
            "llc_coarse_stderr": self.coarse.llc_stderr,
            "llc_richardson": self.llc_richardson,
            "llc_richardson_stderr": self.llc_richardson_stderr,
        }


def refine_step(
    estimate: Callable[[SGLDConfig], LLCEstimate], config: SGLDConfig
) -> StepRefinement:
    """``estimate(config)`` and ``estimate(halved_step(config))`` as a ``StepRefinement``.

    ``estimate`` runs the sampler on one problem and summarizes it; the two runs should use
    different seeds' noise or the same: either way they are treated as independent.
    """
    return StepRefinement(coarse=estimate(config), fine=estimate(halved_step(config)))


def uncertainty(
    estimate: Callable[[SGLDConfig], LLCEstimate], config: SGLDConfig, systematic: bool
) -> tuple[LLCEstimate, dict[str, float | None]]:
    """The reported estimate and its uncertainty keys: with ``systematic`` the ε/2 run of
    ``refine_step`` and ``StepRefinement.as_dict()``; without, the run at ε with
    ``llc_systematic`` None (not measured) and ``llc_total`` its SE."""
    if systematic:
        refined = refine_step(estimate, config)
        return refined.fine, dict(refined.as_dict())
    est = estimate(config)
    return est, {"llc_systematic": None, "llc_total": est.llc_stderr}
