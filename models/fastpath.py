"""Weight-refined LLCs of many attention heads at once: the entry point sweeps call.

    results = sample_heads(model, tokens, ["0:*", "1:*"], SGLDConfig(...))
    results["1:6"].llc().llc_mean            # one SamplingResult per head

Heads of one layer run as one batch of rows (head, chain) through ``HeadLayerStep``
(``rllc.models.head_step``): the frozen prefix of each minibatch is computed once for all of
them, only the sampled head's contribution is recomputed, gradients are taken for the
sampled weights only, and the unembedding + cross-entropy run fused in token chunks, never
holding [tokens, vocab] logits (last-layer heads may opt into the rank-k unembedding).
Same SGLD loop (``rllc.estimators.sampler.run_sgld``), so the traces equal the general
path's:

    sample_heads(model, tokens, ["1:3"], cfg)["1:3"]
      == sample(model, lm_objective(model), tokens, head_selection(model, "1:3"), cfg,
                noise_key=(1, 3))                  (up to float reassociation)

Row (head L:H, chain c) draws its noise from a generator seeded by (seed, c, L, H), so a
head's chains do not depend on which other heads share its batch, and minibatch order
depends on the seed only (all heads and chains of a run see the same minibatches unless
``independent_batches``). L_n(w*) is computed once for all heads.

The general path (vmapped ``functional_call`` of the whole model) runs where the fast path
does not apply: models other than an attention-only ``AttentionOnlyTransformer`` (e.g. with
MLPs), components that are not heads, or ``fast=False``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn

from rllc.estimators import (
    MinibatchStream,
    SamplingResult,
    SGLDConfig,
    frozen_state,
    full_data_loss,
    noise_seed,
    run_sgld,
    sample,
)
from rllc.kernels.cputune import tune_cpu
from rllc.kernels.fused_ce import compile_available, default_chunk
from rllc.kernels.precision import Precision, check_device, parse_precision

from .components import component_selection, expand_components, parse_component
from .head_step import (
    FrozenTransformer,
    HeadLayerStep,
    LayerPrefix,
    Numerics,
    step_flops,
)
from .objective import lm_objective
from .transformer import AttentionOnlyTransformer, TransformerConfig


class FastPathError(ValueError):
    """``fast=True`` was asked for where the fast path does not apply."""


def fast_path_reason(model: nn.Module | TransformerConfig) -> str | None:
    """Why the head fast path cannot sample ``model`` (None when it can); a
    ``TransformerConfig`` stands for the ``AttentionOnlyTransformer`` it builds."""
    if isinstance(model, AttentionOnlyTransformer):
        model = model.cfg
    if not isinstance(model, TransformerConfig):
        return f"{type(model).__name__} is not an rllc AttentionOnlyTransformer"
    if model.mlp:
        return "the model has MLP blocks (the fast path is for attention-only models)"
    return None


def takes_fast_path(model: nn.Module | TransformerConfig, component: str) -> bool:
    """Whether ``component`` is sampled on the head fast path of ``model``: a head
    ``"L:H"`` of a model the fast path applies to. The one rule that sweeps' work units
    (``rllc.jobs.sweep_plan``), checkpoint sessions and ``sample_heads`` share."""
    return fast_path_reason(model) is None and parse_component(component).kind == "head"


def head_noise_key(component: str) -> tuple[int, ...]:
    """Noise key of a component: ``(L, H)`` for a head ``"L:H"``, ``()`` otherwise."""
    comp = parse_component(component)
    return (comp.layer, comp.head) if comp.kind == "head" else ()


def sample_heads(
    model: nn.Module,
    data: Tensor | Sequence[Tensor],
    heads: Sequence[str],
    config: SGLDConfig | None = None,
    *,
    chain_ids: Sequence[int] | None = None,
    init_loss: float | Callable[[str, str], float] | None = None,
    num_samples: int | None = None,
    fast: bool | None = None,
    precision: str | Precision = Precision.FLOAT32,
    compile: bool | None = None,
    chunk_size: int | None = None,
    max_rows: int | None = None,
    lowrank: bool | None = None,
    cpu_tuning: bool = True,
    progress: bool | Callable[[int, int], None] = False,
) -> dict[str, SamplingResult]:
    """Localized SGLD chains for each of ``heads`` around the model's weights w*.

    Args:
        model: the model at w* (not modified).
        data: tokens ``[n, T]`` (or a 1-tuple of it): the loss's dataset.
        heads: component strings; ``"L:H"`` and ``"L:*"`` (expanded to its heads) take the
            fast path, anything else (``"embed"``, patterns) the general one.
        config: sampler settings (default ``SGLDConfig()``).
        chain_ids: chains to run per head (default ``range(config.chains)``).
        init_loss: L_n(w*) if already known, or a function ``(precision,
            unembed_precision)`` that returns it as a layer's rows compute losses (rank-k
            rows unembed in float32 even in bfloat16; the general path is float32 in
            both); otherwise computed once per distinct pair (``frozen_data_loss``).
        num_samples: n of L_n if not the rows of ``data``.
        fast: None = fast path where it applies; True = require it (``FastPathError``
            otherwise); False = always the general path.
        precision: a ``Precision`` (``rllc.kernels.precision``'s table): float32 is exact
            (the traces equal the general path's); bfloat16 and int8 round only frozen
            matmuls, and L_n(w*) and L_B(w*) use the rows' own numerics, so the
            estimators' differences stay consistent. Fast path only; the general path is
            float32.
        compile: fuse the rows' forward/backward with ``torch.compile`` and the loss's
            chunk kernels (on a CPU the hand-written ``cpu_kernels``; seconds to compile once
            per shape, cached on disk); None = when a C++ compiler is available and the
            vocabulary is large (≥ 2048).
        chunk_size: tokens per block of the fused loss (default ``default_chunk``: 128,
            512 compiled, ≈ 2²⁴ / vocab with the CPU kernel).
        max_rows: at most this many (head, chain) rows per forward/backward pass (bounds
            memory; default: about 2²⁴ numbers per [rows, batch, seq, d_model] activation,
            or 2²⁶ per [rows, chunk, vocab] block of the rank-k loss, at least one chain of
            every head).
        lowrank: last-layer heads through the rank-k unembedding (docs/fastpath.md §1; exact: its
            matmuls are k-wide instead of d_model-wide; in bfloat16 only the sampled head's
            terms are rounded). None = when ``compile`` is on: its vocabulary-wide passes
            need fusing (paper-shaped model, 2 CPU cores: 55 against 81 ms per row in bf16,
            78 against 142 in fp32; eager it is slower than the dense path).
        cpu_tuning: keep freed memory in the process and flush denormal floats to zero
            (``rllc.kernels.cputune.tune_cpu``; process-wide): no per-step page faults
            or slow denormal arithmetic, together ≈ 1.4–1.8× faster steps on a CPU.
        progress: tqdm bar on stderr, or a callback ``(step, total_steps)`` per layer run.

    Returns:
        ``{component: SamplingResult}`` in the order given (``"L:*"`` expanded). Each
        result's ``extra`` has ``path`` ("fast" or "general") and ``threads`` (torch's CPU
        threads when its sampling started); fast results also have
        ``flops_per_step`` (matmul FLOPs of one SGLD step of this head's chains),
        ``batch_heads`` (heads sampled in the same batch) and ``batch_seconds`` (that
        batch's wall time; ``seconds`` is its share, batch_seconds / len(batch_heads)).
    """
    config = config or SGLDConfig()
    tokens = data if isinstance(data, Tensor) else data[0]
    if not isinstance(data, Tensor) and len(data) != 1:
        raise ValueError("sample_heads takes one token tensor [n, T] as data")
    if tokens.dim() != 2 or tokens.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"data must be integer tokens [n, T], got {tuple(tokens.shape)} "
                         f"{tokens.dtype}")
    components = list(dict.fromkeys(expand_components(model, list(heads))))
    for comp in components:
        component_selection(model, comp)  # raises SelectionError on unknown heads
    ids = list(range(config.chains)) if chain_ids is None else [int(c) for c in chain_ids]
    if not ids:
        raise ValueError("chain_ids is empty: at least one chain is needed")
    reason = fast_path_reason(model)
    if fast and reason:
        raise FastPathError(f"the head fast path does not apply: {reason}")
    use_fast = reason is None and fast is not False
    tokens = tokens.to(next(iter(model.parameters())).device)

    by_layer: dict[int, list[int]] = {}
    general: list[str] = []
    for comp in components:
        if fast is not False and takes_fast_path(model, comp):
            parsed = parse_component(comp)
            by_layer.setdefault(parsed.layer, []).append(parsed.head)
        else:
            general.append(comp)

    numerics = _numerics(model, precision, compile, chunk_size)
    lowrank = numerics.compile if lowrank is None else bool(lowrank)
    if cpu_tuning and use_fast and tokens.device.type == "cpu":
        tune_cpu()
    known: dict[tuple[str, str], float] = {}

    def loss_at_w_star(n: Numerics) -> float:
        """L_n(w*) as rows with numerics ``n`` compute losses, once per distinct
        (precision, unembedding precision) (docs/fastpath.md §5)."""
        key = (n.precision, n.unembed_precision)
        if callable(init_loss):
            return float(init_loss(*key))
        if init_loss is not None:  # a number (float, numpy or 0-d tensor)
            return float(init_loss)
        if key not in known:
            known[key] = (
                _frozen_loss(model, tokens, config, n) if use_fast else full_data_loss(
                    lm_objective(model), frozen_state(model), (tokens,), config))
        return known[key]

    results: dict[str, SamplingResult] = {}
    for layer, layer_heads in by_layer.items():
        step_fn = HeadLayerStep(model, layer, layer_heads, numerics, max_rows, lowrank)
        results.update(_sample_layer(model, tokens, step_fn, config, ids,
                                     loss_at_w_star(step_fn.fm.numerics), num_samples,
                                     progress))
    for comp in general:  # the general path samples, and so measures, in float32
        res = sample(model, lm_objective(model), tokens, component_selection(model, comp),
                     config, chain_ids=ids, init_loss=loss_at_w_star(Numerics()),
                     num_samples=num_samples, noise_key=head_noise_key(comp), progress=progress)
        res.extra["path"] = "general"
        results[comp] = res
    return {comp: results[comp] for comp in components}


def frozen_data_loss(
    model: AttentionOnlyTransformer,
    tokens: Tensor,
    config: SGLDConfig,
    precision: str | Precision = Precision.FLOAT32,
    unembed_precision: str | Precision | None = None,
) -> float:
    """L_n(w*) as ``sample_heads`` computes it for its fast path: the batches
    ``full_data_loss`` takes (``config.init_loss_batches``), through the fused chunked loss
    with frozen blocks in ``precision`` and the unembedding in ``unembed_precision``
    (default ``precision``; rank-k rows use "float32"). Pass it as ``init_loss=`` to reuse
    it across calls."""
    reason = fast_path_reason(model)
    if reason:
        raise FastPathError(f"the head fast path does not apply: {reason}")
    numerics = replace(_numerics(model, precision, None, None),  # as sample_heads's defaults
                       unembed=unembed_precision)  # Numerics parses it
    return _frozen_loss(model, tokens.to(next(iter(model.parameters())).device), config,
                        numerics)


def _frozen_loss(model: AttentionOnlyTransformer, tokens: Tensor, config: SGLDConfig,
                 numerics: Numerics) -> float:
    fm = FrozenTransformer(model, numerics)
    return full_data_loss(lambda _p, b: fm.loss(b[0]), {}, (tokens,), config)


class _PrefixCache:
    """The frozen prefixes of the last few minibatches, keyed by their sample indices
    ``idx`` [B] (one minibatch) or [C, B] (one per chain, stacked in one prefix); a
    full-batch run reuses them across steps."""

    def __init__(self, build: Callable[[Tensor], LayerPrefix], size: int) -> None:
        self.build, self.size = build, size
        self.items: OrderedDict[tuple[tuple[int, ...], bytes], LayerPrefix] = OrderedDict()

    def get(self, idx: Tensor, tokens: Tensor) -> LayerPrefix:
        key = (tuple(idx.shape), idx.cpu().numpy().tobytes())
        if key not in self.items:
            self.items[key] = self.build(tokens[idx])
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[key]


def _numerics(model: nn.Module, precision: str | Precision, compile: bool | None,
              chunk_size: int | None) -> Numerics:
    precision = parse_precision(precision)
    vocab = getattr(getattr(model, "cfg", None), "d_vocab", 0)
    if compile is None:
        compile = vocab >= 2048 and compile_available()
    device = next(model.parameters()).device
    check_device(precision, device)
    chunk = chunk_size or default_chunk(vocab, bool(compile), device)
    return Numerics(precision=precision, compile=bool(compile), chunk=int(chunk))


def _sample_layer(
    model: AttentionOnlyTransformer,
    tokens: Tensor,
    step_fn: HeadLayerStep,
    config: SGLDConfig,
    ids: list[int],
    init_loss: float,
    num_samples: int | None,
    progress: bool | Callable[[int, int], None],
) -> dict[str, SamplingResult]:
    """All heads of ``step_fn``'s layer × chains ``ids`` as one batch of rows, head-major."""
    n = int(tokens.shape[0])
    layer, heads = step_fn.layer, step_fn.heads
    H, C = len(heads), len(ids)
    w_star = step_fn.pack_star()  # [H, d]
    _check_layout(model, layer, heads, w_star)
    nbeta = config.resolve_nbeta(n if num_samples is None else num_samples)
    seeds = [noise_seed(config.seed, c, (layer, h)) for h in heads for c in ids]
    stream = MinibatchStream(n, config, ids)
    cache = _PrefixCache(step_fn.prefix, size=1)

    def step(theta: Tensor, idx: Tensor, need_star: bool):
        # Independent minibatches: idx [C, B], one prefix of the C batches stacked, chain c's
        # rows (one per head) on batch c, all rows in one pass (docs/fastpath.md §3); chains
        # that all drew the same batch (a full-batch run) share one.
        if idx.dim() == 2 and bool((idx == idx[:1]).all()):
            idx = idx[0]
        return step_fn(theta, cache.get(idx, tokens), need_star)

    threads = torch.get_num_threads()  # provenance: the CPU threads this batch sampled with
    traces, diverged, seconds = run_sgld(
        step, w_star.repeat_interleave(C, dim=0), lambda: stream.next().to(tokens.device),
        seeds, config, nbeta, progress,
    )
    B, T = min(config.batch_size, n), int(tokens.shape[1])
    groups = C if config.independent_batches and n > B else 1  # minibatches per step
    flops = sum(step_flops(model.cfg, layer, H * C, H, B, T, step_fn.lowrank, groups).values())
    out = {}
    for i, h in enumerate(heads):
        rows = slice(i * C, (i + 1) * C)
        out[f"{layer}:{h}"] = SamplingResult(
            config=config,
            nbeta=nbeta,
            n_samples=n if num_samples is None else num_samples,
            num_weights=int(w_star.shape[1]),
            chain_ids=ids,
            init_loss=init_loss,
            diverged=diverged[rows],
            seconds=seconds / H,
            extra={"path": "fast", "flops_per_step": flops / H,
                   "precision": step_fn.fm.numerics.precision, "lowrank": step_fn.lowrank,
                   "batch_heads": [f"{layer}:{x}" for x in heads], "batch_seconds": seconds,
                   "threads": threads},
            **{k: v[rows] for k, v in traces.items()},
        )
    return out


def _check_layout(model: nn.Module, layer: int, heads: list[int], w_star: Tensor) -> None:
    """The fast path reads theta as the general sampler flattens a head's selection
    (sorted parameter names, sorted flat indices); fail loudly if that ever drifts."""
    params = dict(model.named_parameters())
    for i, h in enumerate(heads):
        sel = component_selection(model, f"{layer}:{h}")
        flat = torch.cat([params[k].detach().reshape(-1)[idx.to(w_star.device)]
                          for k, idx in sel.entries.items()])
        if flat.shape != w_star[i].shape or not torch.equal(flat, w_star[i]):
            raise RuntimeError(f"fast-path weight layout of head {layer}:{h} does not match "
                               "its selection (rllc.models.components.head_indices)")
