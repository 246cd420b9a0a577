"""rllc.estimators: localized SGLD and (refined) LLC estimation in plain torch (no Ray).

    λ̂ = nβ · ( E_w[L_n(w)] − L_n(w*) ),  w ~ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²)

Weight refinement = a ``WeightSelection``; data refinement = the dataset passed to
``sample``. Both compose.
"""

from .config import SGLDConfig
from .llc import AllChainsDivergedError, LLCEstimate, summarize
from .sampler import (
    Objective,
    SamplingResult,
    estimate_llc,
    full_data_loss,
    sample,
    supervised_objective,
)
from .selection import (
    SelectionError,
    WeightSelection,
    select_all,
    select_parameters,
    select_slices,
)

__all__ = [
    "AllChainsDivergedError",
    "LLCEstimate",
    "Objective",
    "SGLDConfig",
    "SamplingResult",
    "SelectionError",
    "WeightSelection",
    "estimate_llc",
    "full_data_loss",
    "sample",
    "select_all",
    "select_parameters",
    "select_slices",
    "summarize",
    "supervised_objective",
]
