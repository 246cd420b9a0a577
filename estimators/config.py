"""Sampler configuration: the one place that defines SGLD's defaults.

Every field name is the contract used by the CLI flags (``--step-size`` →
``step_size``), sweep specs and stored trace attributes. ``nbeta`` is nβ's only name.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Preconditioner = Literal["none", "rmsprop"]
#: Leading draws left out of the estimate, or "auto": chosen from the trace
#: (``rllc.estimators.burnin``).
Burnin = int | Literal["auto"]
LossEstimator = Literal["plain", "paired"]


class SGLDConfig(BaseModel):
    """Localized, tempered SGLD (Welling & Teh 2011; Lau et al. 2023) settings.

    The sampler targets p(w) ∝ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²) over the *selected*
    weights, with the update

        Δw = (ε/2)·G·(−nβ·∇L_B(w) − γ·(w − w*)) + N(0, ε·G)

    where L_B is the mean per-sample negative log-likelihood on a minibatch B and G is the
    preconditioner (G = 1 for plain SGLD, RMSProp's 1/(δ + √V) for pSGLD, Li et al. 2016).

    Defaults are the paper's transformer settings (ε = 1e-3, γ = 200, nβ = 30,
    4 chains × 200 draws, minibatch 32). Exact-λ validation on deep linear networks uses
    ``rllc.estimators.dln.DLN_SAMPLER`` instead: full batch, nβ = 1000 with n = 10⁶
    samples (β = 10⁻³, not the theory's 1/log n; that module says why).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_size: float = Field(1e-3, description="ε, the SGLD step size (> 0).")
    localization: float = Field(200.0, description="γ, strength of the pull towards w* (≥ 0).")
    nbeta: float | None = Field(
        30.0,
        description="nβ, the inverse temperature times n. None means n/log n with n the "
        "number of samples in the loss dataset (the theory's β = 1/log n).",
    )
    chains: int = Field(4, description="Independent chains, run together as one batch.")
    draws: int = Field(200, description="Recorded draws per chain (burn-in included).")
    burnin: Burnin = Field(
        "auto",
        description="Leading draws left out of the reported estimate, or auto: chosen "
        "from the trace (MSER, at most half the draws).",
    )
    steps_per_draw: int = Field(1, description="SGLD steps between recorded draws.")
    warmup_steps: int = Field(
        0,
        description="Unrecorded SGLD steps before the first draw, at warmup_step_size: "
        "they carry the chains from w* along slow, flat directions, which a small ε "
        "crosses in more steps than the run has (docs/errors.md §3).",
    )
    warmup_step_size: float | None = Field(
        None, description="ε during the warm-up steps; None means step_size."
    )
    batch_size: int = Field(32, description="Minibatch size; ≥ the dataset size means full batch.")
    preconditioner: Preconditioner = Field("none", description="none (SGLD) or rmsprop (pSGLD).")
    rmsprop_alpha: float = Field(0.99, description="RMSProp decay of the squared-gradient average.")
    rmsprop_eps: float = Field(1e-1, description="δ, RMSProp's damping added to √V.")
    estimator: LossEstimator = Field(
        "paired",
        description="paired: nβ·mean_t (L_B(w_t) − L_B(w*)) on the same minibatch (lower "
        "variance; equal to plain over whole epochs); plain: nβ·(mean_t L_B(w_t) − L_n(w*)).",
    )
    independent_batches: bool = Field(
        False, description="Give each chain its own minibatch stream (uncorrelated chains)."
    )
    init_loss_batches: int | None = Field(
        None, description="Batches used for L_n(w*); None means the whole dataset."
    )
    divergence_factor: float = Field(
        10.0,
        description="A chain diverges when its loss is non-finite or nβ·(L − L(w*)) exceeds "
        "this factor times the number of sampled weights (λ ≤ d/2 always).",
    )
    seed: int = Field(0, description="Seed for minibatch order and per-chain noise.")

    @field_validator("step_size")
    @classmethod
    def _positive_finite(cls, v: float) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"step_size (ε) must be a finite number > 0, got {v}")
        return v

    @field_validator("warmup_step_size")
    @classmethod
    def _warmup_eps(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"warmup_step_size must be a finite number > 0 or null, got {v}")
        return v

    @field_validator("warmup_steps")
    @classmethod
    def _warmup(cls, v: int) -> int:
        if v < 0:
            raise ValueError(f"warmup_steps must be ≥ 0, got {v}")
        return v

    @field_validator("localization")
    @classmethod
    def _nonneg(cls, v: float) -> float:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"localization (γ) must be a finite number ≥ 0, got {v}")
        return v

    @field_validator("nbeta")
    @classmethod
    def _nbeta(cls, v: float | None) -> float | None:
        if v is not None and not (math.isfinite(v) and v > 0):
            raise ValueError(f"nbeta (nβ) must be a finite number > 0 or null, got {v}")
        return v

    @field_validator("chains", "draws", "steps_per_draw", "batch_size")
    @classmethod
    def _at_least_one(cls, v: int, info) -> int:
        if v < 1:
            raise ValueError(f"{info.field_name} must be ≥ 1, got {v}")
        return v

    @field_validator("burnin")
    @classmethod
    def _burnin(cls, v: Burnin) -> Burnin:
        if v != "auto" and v < 0:
            raise ValueError(f"burnin must be ≥ 0, got {v}")
        return v

    @field_validator("rmsprop_alpha")
    @classmethod
    def _alpha(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"rmsprop_alpha must lie in (0, 1), got {v}")
        return v

    @field_validator("rmsprop_eps", "divergence_factor")
    @classmethod
    def _positive(cls, v: float, info) -> float:
        if not (math.isfinite(v) and v > 0):
            raise ValueError(f"{info.field_name} must be a finite number > 0, got {v}")
        return v

    @field_validator("init_loss_batches")
    @classmethod
    def _init_batches(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"init_loss_batches must be ≥ 1 or null, got {v}")
        return v

    @model_validator(mode="after")
    def _burnin_below_draws(self) -> SGLDConfig:
        if self.burnin != "auto" and self.burnin >= self.draws:
            raise ValueError(
                f"burnin ({self.burnin}) must be smaller than draws ({self.draws}): "
                "no draw would be left for the estimate"
            )
        return self

    @property
    def total_steps(self) -> int:
        """SGLD steps each chain takes, warm-up included."""
        return self.warmup_steps + self.recorded_steps

    @property
    def recorded_steps(self) -> int:
        """SGLD steps from the end of the warm-up to the last draw."""
        return self.draws * self.steps_per_draw

    def resolve_nbeta(self, n: int) -> float:
        """nβ for a loss dataset of n samples: the configured value, else n / log n."""
        if self.nbeta is not None:
            return float(self.nbeta)
        if n < 3:
            raise ValueError(f"nbeta=None needs a dataset of at least 3 samples, got {n}")
        return n / math.log(n)
