"""rllc.estimators: localized SGLD and (refined) LLC estimation in plain torch (no Ray).

    λ̂ = nβ · ( E_w[L_n(w)] − L_n(w*) ),  w ~ exp(−nβ·L_n(w) − (γ/2)·‖w − w*‖²)

Weight refinement = a ``WeightSelection``; data refinement = the dataset passed to
``sample``. Both compose.

Samplers with their own batched loss and gradient (the head fast path in
``rllc.models.fastpath``) reuse the same loop through the step API: ``run_sgld`` (the
update, traces and divergence checks), ``MinibatchStream`` (minibatch indices as
``sample`` draws them), ``noise_seed`` (one chain's noise generator seed) and
``frozen_state`` (a model's detached parameters and buffers at w*).
"""

from .config import SGLDConfig
from .llc import AllChainsDivergedError, LLCEstimate, summarize
from .sampler import (
    MinibatchStream,
    Objective,
    SamplingResult,
    estimate_llc,
    frozen_state,
    full_data_loss,
    noise_seed,
    run_sgld,
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
    "MinibatchStream",
    "Objective",
    "SGLDConfig",
    "SamplingResult",
    "SelectionError",
    "WeightSelection",
    "estimate_llc",
    "frozen_state",
    "full_data_loss",
    "noise_seed",
    "run_sgld",
    "sample",
    "select_all",
    "select_parameters",
    "select_slices",
    "summarize",
    "supervised_objective",
]
