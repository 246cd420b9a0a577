"""Judging SGLD settings from the chains alone: the objective of ``rllc tune``.

A setting (ε, γ, nβ) is *usable* when the chains it produces pass every check below. None
of them knows λ: they use only the traces, the honest SE (``rllc.estimators.mcse``), the
automatic burn-in (``rllc.estimators.burnin``) and reruns of the same problem.

    diverged        no chain diverged                        (fraction ≤ max_diverged)
    acceptance      the MALA acceptance of the recorded steps lies in [a_lo, a_hi] (full-batch
                    losses only: with minibatches the estimate compares the potentials of
                    two different batches and sits far below 1 at any ε)
    stationarity    |m₂ − m₁| ≤ z·√(SE₁² + SE₂²): the two halves of the kept draws agree
    positive        λ̂ > 0 (a chain that finds loss below L(w*) is not sampling near w*)
    precision       SE ≤ max(se_rel·|λ̂|, se_abs): a noisy run cannot pass the checks below
                    by being noisy
    step            |λ̂(ε) − λ̂(ε/2)| ≤ max(2·√(SE² + SE'²), rel·|λ̂(ε/2)|), the ε/2 run twice
                    as long, itself precise: the ε-bias is below the tolerance
    localization    the same at γ/2: a γ too large pulls λ̂ low
    nbeta           the same at 2nβ (with ε/2), where nβ is searched: λ̂ is flat in nβ

Each check has a value and a limit; it passes when value ≤ limit. A failed check adds
1 + min(value/limit − 1, 9)/10 to the trial's penalty (so more failed checks rank worse,
and among equal counts, nearer misses rank better). A trial stops at its first failed
check, so each refinement stage it did not reach counts as one more failed check
(``stages_left``): failing the stationarity of the first run never ranks above failing the
step check of the second. A trial whose chains all diverge gets ``DIVERGED_PENALTY``. The
objective, minimised, is

    objective = penalty + stages_left                      if any check failed (≥ 1)
              = −(log ε − log ε_lo)/(log ε_hi − log ε_lo)   if all passed (in [−1, 0])

so every usable setting beats every unusable one, and among the usable ones the largest ε
(the cheapest: fewest steps for the same Langevin time) wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from .llc import AllChainsDivergedError, LLCEstimate, summarize
from .sampler import SamplingResult

DIVERGED_PENALTY = 100.0


class TuneCriteria(BaseModel):
    """Limits of the checks (module docstring): the one place that defines them."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    acceptance: tuple[float, float] = Field(
        (0.9, 1.0),
        description="Band for the mean MALA acceptance. Below it the ε-bias is large. The "
        "upper edge is open by default: steps too small to be worth their cost lose to "
        "larger ones through the objective's preference for the largest ε, not a check.",
    )
    stationarity_z: float = Field(2.0, gt=0, description="z for the halves' agreement.")
    se_rel: float = Field(0.02, gt=0, description="SE target, relative to |λ̂|.")
    se_abs: float = Field(0.05, ge=0, description="SE target, absolute (for small λ̂).")
    refine_rel: float = Field(
        0.02, gt=0, description="Refinement tolerance, relative to |λ̂|, below which 2 SE "
        "never forces it (an equivalence margin, not a failure to reject). The bias of the "
        "ε run is about twice its difference from the ε/2 run (first order in ε), so 2% "
        "bounds it near 4%."
    )
    max_diverged: float = Field(0.0, ge=0, le=1, description="Allowed diverged fraction.")

    @model_validator(mode="after")
    def _band(self) -> TuneCriteria:
        lo, hi = self.acceptance
        if not 0 <= lo < hi <= 1:
            raise ValueError(f"acceptance must be a band [lo, hi] within [0, 1], got {[lo, hi]}")
        return self


@dataclass(frozen=True)
class Check:
    """One criterion: passes when ``value ≤ limit``."""

    name: str
    value: float
    limit: float

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.value) and self.value <= self.limit)

    @property
    def penalty(self) -> float:
        if self.passed:
            return 0.0
        if not math.isfinite(self.value) or self.limit <= 0:
            return 2.0
        return 1.0 + min(self.value / self.limit - 1.0, 9.0) / 10.0


@dataclass
class Verdict:
    """The checks of a trial so far, and the λ̂ of each run (``runs[name]``)."""

    checks: list[Check] = field(default_factory=list)
    runs: dict[str, LLCEstimate] = field(default_factory=dict)
    all_diverged: bool = False

    @property
    def penalty(self) -> float:
        if self.all_diverged:
            return DIVERGED_PENALTY
        return sum(c.penalty for c in self.checks)

    @property
    def passed(self) -> bool:
        return not self.all_diverged and all(c.passed for c in self.checks)

    def failed(self) -> list[str]:
        return ["diverged"] if self.all_diverged else [c.name for c in self.checks if not c.passed]

    def objective(self, step_size: float, step_range: tuple[float, float],
                  stages_left: int = 0) -> float:
        """The module docstring's objective (lower is better); ``stages_left``: the
        refinement stages a failed trial did not reach."""
        if not self.passed:
            return self.penalty + (0 if self.all_diverged else stages_left)
        lo, hi = (math.log(x) for x in step_range)
        return -(math.log(step_size) - lo) / (hi - lo) if hi > lo else -1.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "checks": {c.name: {"value": c.value, "limit": c.limit, "passed": c.passed}
                       for c in self.checks},
            "failed": self.failed(),
            "penalty": self.penalty,
            "passed": self.passed,
        }


def halves_z(est: LLCEstimate, draws: np.ndarray, independent: bool,
             epoch: int | None) -> float:
    """|m₂ − m₁| / √(SE₁² + SE₂²) over the two halves of the kept draws ``[chain, draw]``
    (non-diverged chains, after ``est.burnin``); NaN when a half is too short for an SE."""
    ok = np.isfinite(draws).all(axis=1)
    kept = draws[ok, est.burnin:]
    half = kept.shape[1] // 2
    if half < 2:
        return math.nan
    a = summarize(kept[:, :half], burnin=0, independent=independent, epoch=epoch)
    b = summarize(kept[:, half:2 * half], burnin=0, independent=independent, epoch=epoch)
    se = math.hypot(a.llc_stderr, b.llc_stderr)
    return abs(b.llc_mean - a.llc_mean) / se if se > 0 else math.inf


def judge_run(result: SamplingResult, criteria: TuneCriteria, verdict: Verdict,
              name: str = "base") -> LLCEstimate | None:
    """Add one run's own checks (divergence, acceptance, stationarity, sign, precision) to
    ``verdict``; returns its λ̂, or None when every chain diverged."""
    diverged = np.asarray(result.diverged, dtype=bool)
    try:
        est = result.llc()
    except AllChainsDivergedError:
        verdict.all_diverged = True
        return None
    verdict.runs[name] = est
    suffix = "" if name == "base" else f"_{name}"
    verdict.checks.append(Check(f"diverged{suffix}", float(diverged.mean()),
                                criteria.max_diverged))
    if result.config.batch_size >= (result.data_rows or result.n_samples):
        # Full batch only: with minibatches the estimate compares potentials of two
        # different batches, whose noise holds it far below 1 at any ε.
        acc = result.mala_acceptance[~diverged, est.burnin:]
        mean_acc = float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan
        verdict.checks.append(_band_check(f"acceptance{suffix}", mean_acc,
                                          *criteria.acceptance))
    z = halves_z(est, result.llc_draws(), result.independent_chains, result.epoch)
    verdict.checks.append(Check(f"stationarity{suffix}", z, criteria.stationarity_z))
    # λ̂ > 0 as "−λ̂ < 0"; the limit is a hair below 0 so that λ̂ = 0 fails
    verdict.checks.append(Check(f"positive{suffix}", -est.llc_mean, -1e-12))
    verdict.checks.append(Check(f"precision{suffix}", est.llc_stderr,
                                max(criteria.se_rel * abs(est.llc_mean), criteria.se_abs)))
    return est


def _band_check(name: str, value: float, lo: float, hi: float) -> Check:
    """``value`` in [lo, hi] as a ``Check``: its value is the distance outside the band
    relative to the band's nearest edge, plus 1; the limit is 1."""
    if not math.isfinite(value):
        return Check(name, math.nan, 1.0)
    gap = max(lo - value, value - hi, 0.0)
    return Check(name, 1.0 + gap / max(lo, 1e-12), 1.0)


def judge_agreement(name: str, reference: LLCEstimate, other: LLCEstimate,
                    criteria: TuneCriteria, verdict: Verdict) -> None:
    """Equivalence of two runs: |λ̂ − λ̂'| ≤ max(2·√(SE² + SE'²), rel·|λ̂'|)."""
    diff = abs(reference.llc_mean - other.llc_mean)
    limit = max(2 * math.hypot(reference.llc_stderr, other.llc_stderr),
                criteria.refine_rel * abs(other.llc_mean))
    verdict.checks.append(Check(name, diff, limit))
