"""Per-token Fisher-information traces restricted to a flat weight vector.

For a next-token model with log-probabilities log p_θ(y | x_t) over a vocabulary of V
tokens, and the N observed next tokens y_t, two Fisher matrices are in use:

- the **true** Fisher, with y drawn from the model's own predictive distribution:

      F = (1/N) Σ_t E_{y ~ p_θ(·|x_t)} [∇θ log p_θ(y|x_t) ∇θ log p_θ(y|x_t)ᵀ],

  which equals E_{y ~ p_θ}[−∇²θ log p_θ(y|x_t)]: the expected Hessian of the negative
  log-likelihood when the tokens follow the model, i.e. the NLL Hessian at a well-fit
  model;
- the **empirical** Fisher, with the observed tokens in place of the expectation:

      F̂ = (1/N) Σ_t ∇θ log p_θ(y_t|x_t) ∇θ log p_θ(y_t|x_t)ᵀ.

Only their traces are needed, tr F = (1/N) Σ_t E_y ‖∇θ log p_θ(y|x_t)‖², and these need
only the per-token gradients' squared norms, restricted to ``theta`` (the component; all
else frozen).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.func import vjp, vmap

from .curvature import TraceEstimate


def fisher_traces(
    logprob_fn: Callable[[Tensor], Tensor],
    theta0: Tensor,
    targets: Tensor,
    *,
    true_samples: int = 1,
    seed: int = 0,
    exact_true: bool = False,
    chunk_size: int = 64,
) -> dict[str, TraceEstimate]:
    """Traces of the true and the empirical Fisher per token, restricted to ``theta``.

    ``logprob_fn(theta[d])`` returns ``logp[N, V]``, the log-probabilities (log_softmax of
    the logits) of N tokens' next-token distributions; ``targets[N]`` the observed next
    tokens. Returns ``{"true": …, "empirical": …}``, each a ``TraceEstimate`` with the mean
    over tokens, its standard error sd(per-token values)/√N (NaN for N = 1), and ``probes``
    the number of per-token gradients it used:

    - ``"empirical"``: (1/N) Σ_t ‖∇θ log p(y_t|x_t)‖², y_t = ``targets[t]``;
    - ``"true"``: (1/N) Σ_t E_{y ~ p(·|x_t)} ‖∇θ log p(y|x_t)‖², the expectation by
      Monte Carlo over ``true_samples`` draws of y per token from the model's own
      distribution at ``theta0`` (``torch.multinomial``, a generator seeded with ``seed``),
      or with ``exact_true`` the exact sum Σ_y p(y|x_t) ‖∇θ log p(y|x_t)‖² over the whole
      vocabulary (N·V gradients: for tiny models and tests only).

    All gradients come from one forward pass and one vmapped reverse pass over the
    selected entries [logp[t, y] for every (t, y) pair], in chunks of ``chunk_size``
    cotangents (what ``torch.func.jacrev(chunk_size=…)`` does, except that each chunk is
    reduced to squared norms at once, so memory is chunk_size·d rather than pairs·d).
    """
    if true_samples < 1:
        raise ValueError(f"true_samples must be >= 1, got {true_samples!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    theta0 = theta0.detach()
    with torch.no_grad():
        logp0 = logprob_fn(theta0)  # [N, V]
    if logp0.ndim != 2:
        raise ValueError(f"logprob_fn must return logp[N, V], got shape {tuple(logp0.shape)}")
    n, v = logp0.shape
    targets = targets.to(device=logp0.device, dtype=torch.long).reshape(-1)
    if targets.numel() != n:
        raise ValueError(f"targets must have N = {n} entries, got {targets.numel()}")

    tokens = torch.arange(n, device=logp0.device)
    p0 = logp0.double().exp()  # [N, V]
    if exact_true:
        true_rows = tokens.repeat_interleave(v)  # [N·V]
        true_cols = torch.arange(v, device=logp0.device).repeat(n)
    else:
        gen = torch.Generator().manual_seed(seed)  # CPU: reproducible across devices
        draws = torch.multinomial(p0.cpu(), true_samples, replacement=True, generator=gen)
        true_rows = tokens.repeat_interleave(true_samples)  # [N·S]
        true_cols = draws.to(logp0.device).reshape(-1)

    rows = torch.cat([tokens, true_rows])  # [pairs]: the empirical ones first
    cols = torch.cat([targets, true_cols])
    sq = _grad_sq_norms(logprob_fn, theta0, rows, cols, chunk_size)  # [pairs]
    emp_t = sq[:n]  # [N]
    if exact_true:
        true_t = (p0 * sq[n:].reshape(n, v)).sum(dim=1)  # [N]  Σ_y p(y) ‖∇ log p(y)‖²
    else:
        true_t = sq[n:].reshape(n, true_samples).mean(dim=1)  # [N]
    d = theta0.numel()
    return {
        "true": _token_mean(true_t, probes=true_rows.numel(), dim=d),
        "empirical": _token_mean(emp_t, probes=n, dim=d),
    }


def _grad_sq_norms(
    logprob_fn: Callable[[Tensor], Tensor],
    theta0: Tensor,
    rows: Tensor,
    cols: Tensor,
    chunk_size: int,
) -> Tensor:
    """‖∇θ logp[rows[i], cols[i]]‖² for every pair i, float64 ``[pairs]``: one forward,
    then the vjp with one-hot cotangents, vmapped in chunks."""

    def picked(theta: Tensor) -> Tensor:  # theta[d] → [pairs]
        return logprob_fn(theta)[rows, cols]

    out, vjp_fn = vjp(picked, theta0)
    batched = vmap(vjp_fn)
    pairs = out.numel()
    sq = torch.empty(pairs, dtype=torch.float64, device=out.device)
    for start in range(0, pairs, chunk_size):
        stop = min(start + chunk_size, pairs)
        onehot = torch.zeros(stop - start, pairs, dtype=out.dtype, device=out.device)
        onehot[torch.arange(stop - start), torch.arange(start, stop)] = 1
        (g,) = batched(onehot)  # [chunk, d]
        sq[start:stop] = g.double().pow(2).sum(dim=1)
    return sq


def _token_mean(x: Tensor, *, probes: int, dim: int) -> TraceEstimate:
    """Mean over tokens of ``x[N]`` and its SE, sd/√N, treating tokens as independent."""
    n = x.numel()
    stderr = float(x.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.nan
    return TraceEstimate(value=float(x.mean()), stderr=stderr, probes=probes, exact=False, dim=dim)
