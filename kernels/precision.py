"""The one type for matmul precision, and the one table of what each value does.

The head fast path (``rllc.models.fastpath``), its fused losses (``rllc.kernels.fused_ce``),
sweep specs (``compute.precision``) and ``rllc estimate model --precision`` all take a
``Precision``; the sweep store records it with the sweep's config, so a resumed sweep
runs in the precision it started with.

| value | frozen projections and unembedding | rank-k head terms | devices |
|---|---|---|---|
| float32 | the model's dtype (exact) | the model's dtype | any |
| bfloat16 | bf16 operands, fp32 accumulation | bf16 operands | any |
| int8 | bf16, except the dense unembedding of heads below the last layer: int8 differences from w* (int32 accumulation) | bf16 operands | CPU only |

Softmax, losses, LayerNorms, attention and every sampled weight stay in the model's dtype
whatever the precision; L_n(w*) is taken with the numerics of the rows it is compared with.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch


class Precision(StrEnum):
    """Matmul precision of the frozen parts of a head's loss (module table)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    INT8 = "int8"

    @property
    def behaviour(self) -> Behaviour:
        return BEHAVIOUR[self]

    def matmul_dtype(self, model_dtype: torch.dtype) -> torch.dtype:
        """Operand dtype of the frozen projections (and of a dense unembedding that is not
        int8)."""
        return model_dtype if self is Precision.FLOAT32 else torch.bfloat16

    @property
    def head_terms(self) -> Precision:
        """The precision of the rank-k loss's head terms (int8 has no rank-k form)."""
        return Precision.BFLOAT16 if self is Precision.INT8 else self


@dataclass(frozen=True)
class Behaviour:
    """What one precision does (one row of the module table)."""

    summary: str
    int8_unembedding: bool = False
    cpu_only: bool = False


BEHAVIOUR: dict[Precision, Behaviour] = {
    Precision.FLOAT32: Behaviour("exact: every matmul in the model's dtype"),
    Precision.BFLOAT16: Behaviour(
        "bf16 operands with fp32 accumulation for the unembedding and the frozen later "
        "blocks' projections (faster on GPUs and CPUs with bf16 units)"),
    Precision.INT8: Behaviour(
        "bfloat16, with the unembedding of heads below the last layer taken as int8 "
        "differences from w* (twice the bf16 rate on CPUs with int8 dot products; CPU only)",
        int8_unembedding=True, cpu_only=True),
}

#: One line per value, for ``--help`` texts and field descriptions.
HELP = "; ".join(f"{p.value}: {BEHAVIOUR[p].summary}" for p in Precision)


def parse_precision(value: str | Precision) -> Precision:
    """``value`` as a ``Precision``; ``ValueError`` naming the choices otherwise."""
    try:
        return Precision(value)
    except ValueError:
        choices = ", ".join(p.value for p in Precision)
        raise ValueError(f"precision must be one of {choices}, got {value!r}") from None


def check_device(precision: Precision, device: torch.device | str) -> None:
    """Refuse a CPU-only precision elsewhere, with a message that says what to use."""
    device = torch.device(device)
    if precision.behaviour.cpu_only and device.type != "cpu":
        # torch._int_mm on CUDA wants multiples of 8 and 16 rows; untested there so far
        raise ValueError(f"precision {precision.value!r} runs on the CPU only, the model is "
                         f"on {device}; use 'bfloat16'")
