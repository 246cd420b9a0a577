"""The language-model objective handed to the SGLD sampler."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn
from torch.func import functional_call

from rllc.estimators import Objective

from .transformer import lm_loss


def lm_objective(model: nn.Module) -> Objective:
    """``objective(params, (tokens,))``: mean next-token cross-entropy of ``model`` with
    parameters ``params`` on ``tokens`` [batch, pos] (per-sample NLL averaged over
    sequences and their T−1 predicted positions)."""

    def objective(params: Mapping[str, Tensor], batch: tuple[Tensor, ...]) -> Tensor:
        (tokens,) = batch
        return lm_loss(functional_call(model, dict(params), (tokens,)), tokens)

    return objective
