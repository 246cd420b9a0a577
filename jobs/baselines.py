"""Baselines beside the rLLC, per component at a checkpoint on a dataset: Hessian trace,
Fisher-information traces, Hessian rank and head ablations (the paper's Appendices D–E).

Every baseline is restricted to the component's weights, everything else at w*, and is
computed on a stated data subset: the first ``BaselineOptions.sequences`` sequences of the
loss dataset (the same tokens for every component and metric of a checkpoint).

- ``hessian_trace``: tr ∇²L_n over the component's weights; exact from the full Hessian
  where the block has at most ``exact_max_dim`` weights, else Hutchinson's estimate with
  ``probes`` Rademacher vectors and its standard error (``rllc.estimators.curvature``).
- ``fisher_trace``: per token, the mean over tokens of ‖∇θ log p(y | x)‖², in two forms.
  ``true``: y drawn from the model's own next-token distribution (``fisher_samples`` draws
  per token): the Fisher information. ``empirical``: y the observed next token
  (``rllc.estimators.fisher``). Standard errors are over tokens.
- ``hessian_rank``: the number of eigenvalues with |λ_i| > ``rank_tol``·max|λ|, counted
  exactly by a full eigendecomposition where the block is small, else by stochastic Lanczos
  quadrature (``rank_probes`` probes × ``lanczos_steps`` steps) with its standard error;
  with the ``top_k`` largest-|λ| eigenvalues.
- ``ablation`` (heads only): zero, mean and resample ablation of the head's output, each
  L(ablated) − L(clean) with its standard error over sequences (``rllc.models.baselines``).

A result is keyed as ``rllc baselines --json`` prints it (docs/cli.md);
``rllc.jobs.metrics.flatten`` picks the columns a sweep stores and a query shows.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from torch import Tensor

from rllc.estimators.curvature import hessian_rank, hessian_trace
from rllc.estimators.fisher import fisher_traces
from rllc.models.baselines import (
    LayerPrefixes,
    component_functions,
    head_ablations,
    start_layer,
)
from rllc.models.components import component_selection, parse_component
from rllc.models.transformer import AttentionOnlyTransformer

from .metrics import BaselineOptions, Metric


def compute_baselines(
    model: AttentionOnlyTransformer,
    tokens: Tensor,
    components: Sequence[str],
    metrics: Iterable[Metric],
    options: BaselineOptions | None = None,
    *,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """The baselines ``metrics`` of each component on the first ``options.sequences``
    sequences of ``tokens`` [n, T] (module docstring), keyed as ``rllc baselines --json``
    prints them (docs/cli.md): ``{component: {num_weights, hessian_trace, …, seconds}}``,
    ``seconds`` per metric.

    Components of one layer share the frozen prefix below it (computed once); ablations of
    a layer's heads share its clean run. ``seed`` seeds the probes, the true Fisher's
    draws and the resample ablation's pairing.
    """
    options = options or BaselineOptions()
    metrics = [Metric(m) for m in metrics if Metric(m) != Metric.LLC]
    subset = tokens[: options.sequences]
    if subset.shape[0] < 2:
        raise ValueError(f"baselines need at least 2 sequences, the dataset has "
                         f"{tokens.shape[0]}")
    prefixes = LayerPrefixes(model, subset)
    out: dict[str, dict[str, Any]] = {
        c: {"num_weights": component_selection(model, c).size(model),
            "sequences": int(subset.shape[0]), "seconds": {}} for c in components}
    say = progress or (lambda _msg: None)

    if Metric.ABLATION in metrics:
        by_layer: dict[int, list[str]] = {}
        for c in components:
            comp = parse_component(c)
            if comp.kind == "head":
                by_layer.setdefault(comp.layer, []).append(c)
            else:  # ablations are of one head's output
                out[c]["ablation"] = None
        for layer, heads in by_layer.items():
            start = time.perf_counter()
            scores = head_ablations(model, layer, [parse_component(c).head for c in heads],
                                    prefixes, seed=seed)
            seconds = (time.perf_counter() - start) / len(heads)
            for c in heads:
                out[c]["ablation"] = scores[parse_component(c).head]
                out[c]["seconds"]["ablation"] = seconds
            say(f"ablations of layer {layer}: {len(heads)} heads")

    for c in components:
        fns = None
        for metric in metrics:
            if metric == Metric.ABLATION:
                continue
            start = time.perf_counter()
            if fns is None:
                fns = component_functions(model, c, prefixes)
            small = fns.theta0.numel() <= options.exact_max_dim
            if metric == Metric.HESSIAN_TRACE:
                est = hessian_trace(fns.loss, fns.theta0, probes=options.probes, seed=seed,
                                    exact=small)
                res = {"hessian_trace": est.value, "hessian_trace_stderr": est.stderr,
                       "hessian_trace_exact": est.exact, "hessian_trace_probes": est.probes}
            elif metric == Metric.FISHER_TRACE:
                res = _fisher(model, c, prefixes, options, seed)
            else:
                rank = hessian_rank(
                    fns.loss, fns.theta0, rank_tol=options.rank_tol, top_k=options.top_k,
                    exact=small, probes=options.rank_probes,
                    lanczos_steps=options.lanczos_steps, seed=seed)
                res = {"hessian_rank": rank.rank, "hessian_rank_stderr": rank.rank_stderr,
                       "hessian_rank_exact": rank.exact, "rank_tol": rank.rank_tol,
                       "rank_threshold": rank.threshold,
                       "top_eigenvalues": list(rank.top_eigenvalues)}
            out[c] |= res
            out[c]["seconds"][metric.value] = time.perf_counter() - start
            say(f"{metric.value} of {c}: {out[c]['seconds'][metric.value]:.1f} s")
    return out


def _fisher(model: AttentionOnlyTransformer, component: str, prefixes: LayerPrefixes,
            options: BaselineOptions, seed: int) -> dict[str, Any]:
    """Both Fisher traces over the subset, one sequence at a time: a token's gradient
    touches only its own sequence, so per-sequence Jacobians cost 1/B of a batched one.
    The per-sequence estimates (mean and standard error over its tokens) are pooled into
    the mean and standard error over all tokens."""
    parts: dict[str, list[tuple[int, float, float]]] = {"true": [], "empirical": []}
    prefixes.before(start_layer(component))  # once for the subset; each sequence slices it
    for i in range(prefixes.tokens.shape[0]):
        fns = component_functions(model, component, prefixes.sequence(i))
        est = fisher_traces(fns.logprobs, fns.theta0, fns.targets,
                            true_samples=options.fisher_samples, seed=seed * 100_003 + i)
        for kind in parts:
            parts[kind].append((int(fns.targets.numel()), est[kind].value, est[kind].stderr))
    true, true_se = pool(parts["true"])
    emp, emp_se = pool(parts["empirical"])
    return {"fisher_trace": true, "fisher_trace_stderr": true_se,
            "empirical_fisher_trace": emp, "empirical_fisher_trace_stderr": emp_se,
            "fisher_tokens": sum(n for n, _, _ in parts["true"]),
            "fisher_samples": options.fisher_samples}


def pool(parts: Sequence[tuple[int, float, float]]) -> tuple[float, float]:
    """Mean and standard error over all items from per-part ``(n, mean, stderr)``, where
    each part's stderr is its items' sd/√n (ddof 1): the sum of squares is rebuilt from
    the parts (within-part variance plus the spread of the part means)."""
    n = sum(k for k, _, _ in parts)
    mean = sum(k * m for k, m, _ in parts) / n
    ss = sum((se**2 * k) * (k - 1) + k * (m - mean) ** 2 for k, m, se in parts)
    var = ss / max(n - 1, 1)
    return mean, math.sqrt(var / n)
