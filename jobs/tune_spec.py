"""What ``rllc tune`` searches: the ``search:`` block, and the tune spec around it.

A tune spec is a sweep spec (``rllc.jobs.spec``) whose checkpoints × components ×
datasets name the few points to tune on, plus a ``search:`` block::

    name: tune-heads
    checkpoints: runs/demo/ckpt-final
    components: ["0:3", "1:6"]
    datasets: [train]
    sampler: {chains: 4, draws: 200}     # everything but ε, γ (, nβ) stays as given
    search:
      step_size: [1e-5, 1e-1]            # log-uniform ranges
      localization: [1, 10000]           # or one value (200): γ pinned, not searched
      nbeta: null                        # or [lo, hi] to search nβ too
      trials: 24
      algorithm: optuna                  # or grid
      criteria: {se_rel: 0.02}           # rllc.estimators.tuning.TuneCriteria

Omitted ranges take ``DEFAULT_RANGES`` for the kind of problem: they start at step sizes
that diverge (two decades and more above the usable ones), so that the search finds the
edge rather than assuming it.
"""

from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from rllc.estimators.tuning import TuneCriteria

from .spec import SpecError, SweepSpec, load_spec

Range = tuple[float, float]

#: Default search ranges by kind of problem (the one place that defines them). Linear
#: networks at nβ = 1000 sample well near ε ≈ 10⁻⁵…10⁻⁴ with γ ≈ 1; transformer heads at
#: nβ = 30 near the paper's ε = 10⁻³, γ = 200.
DEFAULT_RANGES: dict[str, dict[str, Range]] = {
    "dln": {"step_size": (1e-7, 1e-2), "localization": (0.1, 100.0)},
    "model": {"step_size": (1e-5, 1e-1), "localization": (1.0, 1e4)},
}


class SearchAlgorithm(enum.StrEnum):
    """How trials are proposed: Optuna's TPE (``OptunaSearch``), or a log-spaced grid."""

    OPTUNA = "optuna"
    GRID = "grid"


class SearchSpace(BaseModel):
    """The ``search:`` block: ranges (log scale), trials, algorithm and the criteria."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    step_size: Range | None = Field(None, description="[lo, hi] of ε (default by kind).")
    localization: Range | float | None = Field(
        None, description="[lo, hi] of γ (default by kind), or one γ: pinned, not searched "
        "(it is then part of what is measured, and the γ/2 check is not made).")
    nbeta: Range | None = Field(None, description="[lo, hi] of nβ, or null: not searched.")
    trials: int = Field(24, ge=1, le=1000, description="Trials (grid: points per axis = "
                        "round(trials^(1/axes))).")
    algorithm: SearchAlgorithm = Field(SearchAlgorithm.OPTUNA)
    max_concurrent: int | None = Field(
        None, ge=1, description="Trials at once (default: as many as the cluster's CPUs fit)."
    )
    seed: int = Field(0, description="Seed of the search algorithm.")
    criteria: TuneCriteria = Field(default_factory=TuneCriteria)

    @field_validator("step_size", "localization", "nbeta")
    @classmethod
    def _range(cls, v: Range | float | None, info) -> Range | float | None:
        if v is None:
            return v
        if not isinstance(v, tuple):
            if not (math.isfinite(v) and v > 0):
                raise ValueError(f"{info.field_name} needs a finite value > 0, got {v}")
            return v
        lo, hi = v
        if not (math.isfinite(lo) and math.isfinite(hi) and lo > 0):
            raise ValueError(f"{info.field_name} range needs finite values > 0, got {[lo, hi]}")
        if not lo < hi:
            raise ValueError(f"{info.field_name} range is empty or inverted: [{lo}, {hi}] "
                             "(write [lo, hi] with lo < hi)")
        return v

    def ranges(self, kind: str) -> dict[str, Range]:
        """The searched parameters and their ranges, defaults filled in for ``kind``."""
        out = {k: getattr(self, k) or DEFAULT_RANGES[kind][k]
               for k in ("step_size", "localization") if k not in self.pinned()}
        if self.nbeta is not None:
            out["nbeta"] = self.nbeta
        return out

    def pinned(self) -> dict[str, float]:
        """Parameters given one value instead of a range: fixed, not searched."""
        return {"localization": float(self.localization)} if isinstance(
            self.localization, float | int) else {}

    def grid_points(self, kind: str) -> int:
        """Points per axis of the grid."""
        axes = len(self.ranges(kind))
        return max(2, round(self.trials ** (1 / axes)))

    def n_trials(self, kind: str) -> int:
        """Trials the search will start."""
        if self.algorithm == SearchAlgorithm.GRID:
            return self.grid_points(kind) ** len(self.ranges(kind))
        return self.trials


class TuneSpec(SweepSpec):
    """A sweep spec naming the points to tune on, with a ``search:`` block."""

    search: SearchSpace = Field(default_factory=SearchSpace)


def parse_search(data: Any, field: str = "search") -> SearchSpace:
    """Validate a ``search:`` mapping; errors name the field (``search.step_size: …``)."""
    try:
        return SearchSpace.model_validate(data or {})
    except ValidationError as err:
        first = err.errors()[0]
        loc = _field_path(first)
        raise SpecError(".".join((field, *loc)), _message(first, len(loc) == 1)) from None


def parse_tune_spec(data: Any) -> TuneSpec:
    """Validate a tune spec mapping; one ``SpecError`` naming the first bad field."""
    if not isinstance(data, dict):
        raise SpecError("spec", f"expected a mapping of tune fields, got {type(data).__name__}")
    try:
        return TuneSpec.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = _field_path(first)
        raise SpecError(".".join(loc) or "spec", _message(first, loc[:1] == ("search",)
                                                          and len(loc) == 2)) from None


def load_tune_spec(path: str | Path) -> TuneSpec:
    """Read and validate a YAML or JSON tune spec file."""
    return load_spec(path, parse_tune_spec)


def _field_path(error: dict[str, Any]) -> tuple[str, ...]:
    """The error's location without pydantic's union members (``tuple[float, float]``)."""
    return tuple(str(x) for x in error["loc"]
                 if not (isinstance(x, str) and (x in ("float", "int") or "[" in x)))


def _message(error: dict[str, Any], in_search: bool) -> str:
    if error["type"] == "extra_forbidden" and in_search:
        return (f"unknown parameter {error['loc'][-1]!r}; the search block takes step_size, "
                "localization, nbeta, trials, algorithm, max_concurrent, seed, criteria")
    return error["msg"].removeprefix("Value error, ")
