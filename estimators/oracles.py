"""Exact learning coefficients, used to validate the estimator against the truth.

- Regular models: λ = d/2 (d parameters, non-degenerate Fisher information).
- Reduced-rank regression (2-layer linear network M → H → N, true rank r):
  Aoyagi & Watanabe (2005), "Stochastic complexities of reduced rank regression in
  Bayesian estimation", Neural Networks 18(7).
- Deep linear networks H_0 → H_1 → … → H_L: Aoyagi (2024), "Consideration on the learning
  efficiency of multiple-layered neural networks with linear units", Neural Networks 172.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class ExactLC:
    """An exact learning coefficient λ with its multiplicity m (None where not derived)."""

    llc: float
    multiplicity: int | None
    case: str


def regular_lc(num_params: int) -> ExactLC:
    """λ = d/2 for a regular (identifiable, non-degenerate) model with d parameters."""
    if num_params < 1:
        raise ValueError(f"num_params must be ≥ 1, got {num_params}")
    return ExactLC(num_params / 2, 1, "regular")


def rrr_lc(m: int, h: int, n: int, r: int) -> ExactLC:
    """Aoyagi & Watanabe (2005): λ of reduced-rank regression y = B·A·x, x ∈ R^M, A: H×M,
    B: N×H, at a true parameter of rank r ≤ min(M, H, N).

    Case 1 (N + r ≤ M + H, M + r ≤ N + H, H + r ≤ M + N):
        M + H + N + r even: λ = [2(H + r)(M + N) − (M − N)² − (H + r)²] / 8,      m = 1
        M + H + N + r odd:  λ = [2(H + r)(M + N) − (M − N)² − (H + r)² + 1] / 8,  m = 2
    Case 2 (M + H < N + r): λ = (HM − Hr + Nr) / 2
    Case 3 (N + H < M + r): λ = (HN − Hr + Mr) / 2
    Case 4 (M + N < H + r): λ = MN / 2
    """
    _check_dims([m, h, n], r)
    if n + h < m + r:
        return ExactLC((h * n - h * r + m * r) / 2, 1, "case 3 (N + H < M + r)")
    if m + h < n + r:
        return ExactLC((h * m - h * r + n * r) / 2, 1, "case 2 (M + H < N + r)")
    if m + n < h + r:
        return ExactLC(m * n / 2, 1, "case 4 (M + N < H + r)")
    base = 2 * (h + r) * (m + n) - (m - n) ** 2 - (h + r) ** 2
    if (m + h + n + r) % 2 == 0:
        return ExactLC(base / 8, 1, "case 1, even")
    return ExactLC((base + 1) / 8, 2, "case 1, odd")


def dln_lc(widths: Sequence[int], r: int) -> ExactLC:
    """Aoyagi (2024): λ of a deep linear network with layer widths H_0 (input), …, H_L
    (output) at a true parameter whose end-to-end matrix has rank r.

    With M_i = H_i − r, take the subset S of {0, …, L} (ℓ = |S| − 1 ≥ 1) such that
        max_{i∈S} M_i < min_{k∉S} M_k,  Σ_S M_i ≥ ℓ·max_S M_i,  Σ_S M_i < ℓ·min_{k∉S} M_k,
    and with M̄ = ⌈Σ_S M_i / ℓ⌉, a = Σ_S M_i − (M̄ − 1)·ℓ:
        λ = (−r² + r(H_0 + H_L))/2 + a(ℓ − a)/(4ℓ) − ℓ(ℓ − 1)/4·(Σ_S M_i/ℓ)²
            + ½·Σ_{i<j ∈ S} M_i·M_j.
    For L = 2 this reproduces ``rrr_lc``.
    """
    widths = list(widths)
    if len(widths) < 2:
        raise ValueError(f"a linear network needs at least 2 widths, got {widths}")
    if len(widths) == 2:  # one layer: a regular model, unless r < full rank
        m_in, n_out = widths
        _check_dims(widths, r)
        if r != min(m_in, n_out):
            raise ValueError("a one-layer linear model has full rank; use true rank min(M, N)")
        return regular_lc(m_in * n_out)
    _check_dims(widths, r)
    ms = [w - r for w in widths]
    subset = _aoyagi_subset(ms)
    sel = [ms[i] for i in subset]
    total, ell = sum(sel), len(sel) - 1
    m_bar = math.ceil(total / ell)
    a = total - (m_bar - 1) * ell
    lam = (
        (-(r**2) + r * (widths[0] + widths[-1])) / 2
        + a * (ell - a) / (4 * ell)
        - ell * (ell - 1) / 4 * (total / ell) ** 2
        + sum(x * y for x, y in itertools.combinations(sel, 2)) / 2
    )
    return ExactLC(lam, None, f"Aoyagi subset {tuple(subset)}")


def _aoyagi_subset(ms: Sequence[int]) -> tuple[int, ...]:
    for size in range(2, len(ms) + 1):
        for subset in itertools.combinations(range(len(ms)), size):
            sel = [ms[i] for i in subset]
            rest = [ms[i] for i in range(len(ms)) if i not in subset]
            ell = size - 1
            if rest and not max(sel) < min(rest):
                continue
            if not sum(sel) >= ell * max(sel):
                continue
            if rest and not sum(sel) < ell * min(rest):
                continue
            return subset
    raise ValueError(f"no Aoyagi subset exists for M_i = {list(ms)}")  # not reachable for M_i ≥ 0


def _check_dims(widths: Sequence[int], r: int) -> None:
    if any(w < 1 for w in widths):
        raise ValueError(f"widths must be ≥ 1, got {list(widths)}")
    if not 0 <= r <= min(widths):
        raise ValueError(f"true rank must lie in [0, min(widths) = {min(widths)}], got {r}")
