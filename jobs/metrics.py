"""What a sweep cell computes: the metric names, their stored columns and the baselines'
options (light: the spec and the store's callers import it; the work is in
``rllc.jobs.baselines``).

A baseline's result is ``{key: value}``; its ``value`` is the column named after the metric,
its other scalar keys ``<metric>_<key>`` (``COLUMNS``), as a sweep stores them and
``rllc query --metric`` shows them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rllc.estimators.curvature import EXACT_MAX_DIM
from rllc.models.baselines import ABLATIONS


class Metric(StrEnum):
    """What a sweep cell computes: the rLLC and the baselines beside it."""

    LLC = "llc"
    HESSIAN_TRACE = "hessian_trace"
    FISHER_TRACE = "fisher_trace"
    HESSIAN_RANK = "hessian_rank"
    ABLATION = "ablation"


#: The baselines (every metric but the LLC), in the order they are computed.
BASELINES = (Metric.HESSIAN_TRACE, Metric.FISHER_TRACE, Metric.HESSIAN_RANK, Metric.ABLATION)

#: The scalar columns of each baseline, as ``rllc baselines --json`` names them (docs/cli.md)
#: and as a sweep stores them and ``rllc query --metric NAME`` shows them. ``fisher_trace``
#: is the true Fisher's trace; ``hessian_top_eigenvalue`` the first of ``top_eigenvalues``.
COLUMNS: dict[Metric, tuple[str, ...]] = {
    Metric.HESSIAN_TRACE: ("hessian_trace", "hessian_trace_stderr"),
    Metric.FISHER_TRACE: ("fisher_trace", "fisher_trace_stderr",
                          "empirical_fisher_trace", "empirical_fisher_trace_stderr"),
    Metric.HESSIAN_RANK: ("hessian_rank", "hessian_rank_stderr", "hessian_top_eigenvalue"),
    Metric.ABLATION: tuple(c for kind in ABLATIONS
                           for c in (f"ablation_{kind}", f"ablation_{kind}_stderr")),
}


def parse_metrics(names: Iterable[str]) -> list[Metric]:
    """Metric names → ``Metric`` values, in the given order, without duplicates; a
    ``ValueError`` names an unknown one and lists the known ones."""
    out: list[Metric] = []
    for name in names:
        try:
            metric = Metric(str(name).strip())
        except ValueError:
            known = ", ".join(m.value for m in Metric)
            raise ValueError(f"unknown metric {name!r}; known metrics: {known}") from None
        if metric not in out:
            out.append(metric)
    if not out:
        raise ValueError("metrics is empty: name at least one (e.g. llc)")
    return out


def metric_columns(metrics: Iterable[Metric]) -> dict[str, list[str]]:
    """The stored columns of each baseline among ``metrics`` (the LLC has none: its
    traces are the cell's arrays), as the store records them."""
    return {m.value: list(COLUMNS[m]) for m in map(Metric, metrics) if m != Metric.LLC}


class BaselineOptions(BaseModel):
    """How the baselines are computed (the ``baselines:`` block of a sweep spec, and the
    flags of ``rllc baselines``). One place for their defaults."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sequences: int = Field(8, ge=2, description="Data subset: the first N sequences of the "
                           "loss dataset (at least 2, for the resample ablation).")
    probes: int = Field(32, ge=2, description="Hutchinson probe vectors for the Hessian "
                        "trace.")
    rank_tol: float = Field(1e-3, description="Hessian rank threshold, relative to the "
                            "largest |eigenvalue|: counts |λ_i| > rank_tol·max|λ|.")
    rank_probes: int = Field(8, ge=2, description="Stochastic Lanczos quadrature probes.")
    lanczos_steps: int = Field(24, ge=4, description="Lanczos steps per probe.")
    top_k: int = Field(5, ge=1, description="Top eigenvalues reported with the rank.")
    fisher_samples: int = Field(1, ge=1, description="Draws of y per token for the true "
                                "Fisher's expectation over the model's distribution.")
    exact_max_dim: int = Field(EXACT_MAX_DIM, ge=0, description="Blocks with at most this "
                               "many weights get the exact Hessian trace and rank.")

    @field_validator("rank_tol")
    @classmethod
    def _tol(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError(f"rank_tol must lie in (0, 1), got {v}")
        return v


def flatten(result: Mapping[str, Any]) -> dict[str, float]:
    """The stored columns of one component's ``compute_baselines`` result: its scalar keys,
    ``ablation_<kind>`` from the nested ``ablation`` and ``hessian_top_eigenvalue``; NaN
    where a metric does not apply (ablations of a component that is not one head)."""
    out: dict[str, float] = {}
    for metric in BASELINES:
        for col in COLUMNS[metric]:
            if metric == Metric.ABLATION:
                if "ablation" not in result:
                    continue
                v = (result["ablation"] or {}).get(col.removeprefix("ablation_"))
            elif col == "hessian_top_eigenvalue":
                if "top_eigenvalues" not in result:
                    continue
                v = (result["top_eigenvalues"] or [None])[0]
            elif col in result:
                v = result[col]
            else:
                continue
            out[col] = math.nan if v is None else float(v)
    return out
