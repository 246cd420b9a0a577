"""rllc.kernels: what makes the head fast path fast, apart from its algebra.

- ``precision``: the one ``Precision`` type (float32 | bfloat16 | int8) and its table;
- ``fused_ce``: chunked fused linear + cross-entropy losses (dense, int8, and the rank-k
  block kernel) that never hold [tokens, vocab] logits;
- ``cpu_kernels``: hand-written C++ CPU kernels (softmax rows, causal attention) built on
  first use from ``csrc/`` with torch's ``cpp_extension``;
- ``cputune``: process settings for CPU steps (freed memory kept, denormals flushed);
- ``threads``: the CPU thread policy chosen before torch starts its pool.

The estimator math (``rllc.estimators``) does not depend on any of it; the transformer's
own algebra (``rllc.models``) calls into it.
"""

__all__ = ["Precision", "parse_precision"]


def __getattr__(name: str):
    # Lazy, so that ``rllc.kernels.threads`` imports without torch (it must run before
    # torch loads OpenMP); ``precision`` imports torch.
    if name in __all__:
        from . import precision

        return getattr(precision, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
