"""Curvature of a scalar loss restricted to a flat weight vector: Hessian traces and ranks.

Every function takes ``loss_fn(theta[d]) → scalar``, the loss L_n restricted to one
component (everything outside ``theta`` frozen), and ``theta0[d]``, the point w* at which
the Hessian

    H = ∇²L_n(w*)   [d, d]

is taken. H is only ever touched through Hessian-vector products (``hvp_fn``:
forward-over-reverse, ``jvp`` of ``grad``, vmapped over a batch of vectors), so nothing of
size d² is built unless a block is small enough to be done exactly (d ≤ ``EXACT_MAX_DIM``
by default, or ``exact=True``).

- ``hessian_trace``: tr H exactly, or by Hutchinson's estimator with Rademacher probes,
  tr H = E_v[vᵀHv].
- ``hessian_rank``: the number of eigenvalues with |λ_i| > rank_tol · max_j |λ_j|, exactly
  (full eigendecomposition) or by stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017),
  with the top eigenvalues from the same Lanczos runs (extreme Ritz values).

Reductions (traces, Lanczos recurrences, eigenvalues) run in float64; the HVPs themselves
run in ``theta0``'s dtype, since ``loss_fn`` usually mixes ``theta`` with frozen weights of
that dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor
from torch.func import grad, jvp, vmap

#: Blocks up to this size are done exactly (d² Hessian, full eigendecomposition) by default.
EXACT_MAX_DIM: int = 1024

#: Vectors per vmapped HVP call: bounds the memory of one batched forward-over-reverse pass.
HVP_CHUNK: int = 64

LossFn = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of a trace: exact (``stderr`` 0, ``probes`` 0) or a Monte-Carlo mean."""

    value: float  # the trace estimate
    stderr: float  # its standard error (0.0 when exact)
    probes: int  # probe vectors used (0 when exact)
    exact: bool
    dim: int


@dataclass(frozen=True)
class RankEstimate:
    """The numerical rank of H: #{i : |λ_i| > threshold}, threshold = rank_tol · max |λ|."""

    rank: float  # number of eigenvalues with |λ_i| > threshold (exact: an integer value)
    rank_stderr: float  # 0.0 when exact; SLQ's standard error over probes otherwise
    exact: bool
    dim: int
    rank_tol: float  # the relative threshold asked for
    threshold: float  # the absolute one: rank_tol · max_i |λ_i|
    top_eigenvalues: tuple[float, ...]  # largest-|λ| eigenvalues, signed, by |λ| descending
    probes: int
    lanczos_steps: int


def hvp_fn(
    loss_fn: LossFn, theta0: Tensor, *, chunk_size: int = HVP_CHUNK
) -> Callable[[Tensor], Tensor]:
    """``v[k, d] → (H v)[k, d]``, H = ∇²loss_fn(theta0).

    Forward-over-reverse: (H v) = ∂/∂ε ∇L(θ0 + ε v) at ε = 0, i.e. ``jvp`` of ``grad``,
    vmapped over the k vectors in chunks of ``chunk_size`` (one chunk is one batched
    forward-and-backward pass, so the chunk bounds memory).
    """
    theta0 = theta0.detach()
    grad_fn = grad(loss_fn)

    def one(v: Tensor) -> Tensor:  # v[d] → (H v)[d]
        return jvp(grad_fn, (theta0,), (v,))[1]

    batched = vmap(one, chunk_size=chunk_size)

    def hvp(v: Tensor) -> Tensor:
        return batched(v.to(dtype=theta0.dtype, device=theta0.device))

    return hvp


def exact_hessian(loss_fn: LossFn, theta0: Tensor) -> Tensor:
    """H[d, d] = ∇²loss_fn(theta0), built column by column from HVPs with the identity
    (chunked, so memory stays at d² plus one chunk), symmetrised: (H + Hᵀ)/2."""
    d = theta0.numel()
    eye = torch.eye(d, dtype=theta0.dtype, device=theta0.device)
    h = hvp_fn(loss_fn, theta0)(eye)  # row i = H e_i = column i (H symmetric up to rounding)
    return 0.5 * (h + h.T)


def hessian_trace(
    loss_fn: LossFn,
    theta0: Tensor,
    *,
    probes: int = 32,
    seed: int = 0,
    exact: bool | None = None,
) -> TraceEstimate:
    """tr H, H = ∇²loss_fn(theta0).

    ``exact=None``: exact (trace of ``exact_hessian``) iff d ≤ ``EXACT_MAX_DIM``; ``True``
    forces exact, ``False`` forces Hutchinson's estimator with ``probes`` Rademacher vectors
    v_i (entries ±1, drawn from a ``torch.Generator`` seeded with ``seed``):

        tr H ≈ (1/P) Σ_i v_iᵀ H v_i,   stderr = sd_i(v_iᵀ H v_i) / √P.
    """
    d = theta0.numel()
    if _use_exact(exact, d):
        h = exact_hessian(loss_fn, theta0)
        return TraceEstimate(float(h.double().trace()), 0.0, 0, True, d)
    _check_probes(probes)
    v = _rademacher(probes, d, seed, theta0)  # [probe, d]
    hv = hvp_fn(loss_fn, theta0)(v)  # [probe, d]
    q = (v.double() * hv.double()).sum(dim=1)  # [probe]  v_iᵀ H v_i
    return TraceEstimate(
        value=float(q.mean()),
        stderr=float(q.std(unbiased=True)) / math.sqrt(probes),
        probes=probes,
        exact=False,
        dim=d,
    )


def hessian_rank(
    loss_fn: LossFn,
    theta0: Tensor,
    *,
    rank_tol: float = 1e-3,
    top_k: int = 5,
    exact: bool | None = None,
    probes: int = 8,
    lanczos_steps: int = 48,
    seed: int = 0,
) -> RankEstimate:
    """The numerical rank of H = ∇²loss_fn(theta0): the number of eigenvalues with

        |λ_i| > threshold = rank_tol · max_j |λ_j|,

    i.e. the directions whose curvature is within a factor ``rank_tol`` of the stiffest
    one; the rest count as flat. Magnitudes, because a mid-training checkpoint is not a
    minimum: H has negative eigenvalues there, and a direction of negative curvature is no
    flatter than one of positive curvature of the same size. ``top_eigenvalues`` are the
    ``top_k`` largest-|λ| eigenvalues, signed, sorted by |λ| descending.

    ``exact=None``: exact iff d ≤ ``EXACT_MAX_DIM``. Exact: full eigendecomposition
    (``torch.linalg.eigvalsh`` of ``exact_hessian``) and an integer count.

    Stochastic (``exact=False``), by stochastic Lanczos quadrature. For each of ``probes``
    Rademacher vectors v, ``lanczos_steps`` Lanczos steps from
    v/‖v‖ (full reorthogonalisation) give a tridiagonal T = Σ_k θ_k u_k u_kᵀ, and

        vᵀ 1(|H| > thr) v / ‖v‖² ≈ Σ_k τ_k 1(|θ_k| > thr),   τ_k = (u_k[0])²

    (Gauss quadrature of the spectral measure seen from v), so the probe's count is
    d · Σ_k τ_k 1(|θ_k| > thr); ``rank`` is the mean over probes and ``rank_stderr`` its
    sd / √probes. The same runs give the top eigenvalues: the extreme Ritz values θ_k
    converge first (that is what plain Lanczos is good at; counting thousands of
    eigenvalues is not), so the i-th largest |λ| is taken as the largest i-th |θ| over the
    probes (Ritz values never exceed the spectrum's extremes). It sets the threshold
    before the counts are read off the quadratures. A Lanczos breakdown (β ≈ 0: the Krylov space is invariant) ends that
    probe early, and its quadrature is then exact. Memory: probes · (lanczos_steps + 1) · d
    float64 for the Lanczos bases. With d = 1 the stochastic path falls back to exact.
    """
    if not 0.0 < rank_tol < 1.0:
        raise ValueError(f"rank_tol must lie in (0, 1), got {rank_tol!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k!r}")
    d = theta0.numel()
    if _use_exact(exact, d) or d < 2:
        return _exact_rank(loss_fn, theta0, rank_tol, top_k)
    _check_probes(probes)
    if lanczos_steps < 1:
        raise ValueError(f"lanczos_steps must be >= 1, got {lanczos_steps!r}")

    hvp = hvp_fn(loss_fn, theta0)
    steps = min(lanczos_steps, d)  # a Krylov space cannot exceed d
    v = _rademacher(probes, d, seed, theta0).double()  # [probe, d]
    alpha, beta, used = _lanczos(hvp, v, steps, theta0.dtype)
    ritz = []  # per probe: (nodes θ_k, weights τ_k)
    for p in range(probes):
        m = used[p]
        nodes, vecs = scipy.linalg.eigh_tridiagonal(alpha[p, :m], beta[p, : m - 1])
        ritz.append((nodes, vecs[0] ** 2))
    top = _top_ritz(ritz, min(top_k, d))
    scale = abs(top[0])
    threshold = rank_tol * scale
    if scale == 0.0:  # H = 0: nothing is above any threshold
        return RankEstimate(0.0, 0.0, False, d, rank_tol, 0.0, top, probes, steps)
    counts = np.array([d * float(w[np.abs(nodes) > threshold].sum()) for nodes, w in ritz])
    return RankEstimate(
        rank=float(counts.mean()),
        rank_stderr=float(counts.std(ddof=1)) / math.sqrt(probes),
        exact=False,
        dim=d,
        rank_tol=rank_tol,
        threshold=threshold,
        top_eigenvalues=top,
        probes=probes,
        lanczos_steps=steps,
    )


def _exact_rank(loss_fn: LossFn, theta0: Tensor, rank_tol: float, top_k: int) -> RankEstimate:
    eig = torch.linalg.eigvalsh(exact_hessian(loss_fn, theta0).double()).cpu().numpy()  # [d]
    mag = np.abs(eig)
    threshold = rank_tol * float(mag.max())
    order = np.argsort(-mag, kind="stable")[:top_k]
    return RankEstimate(
        rank=float((mag > threshold).sum()),
        rank_stderr=0.0,
        exact=True,
        dim=eig.size,
        rank_tol=rank_tol,
        threshold=threshold,
        top_eigenvalues=tuple(float(x) for x in eig[order]),
        probes=0,
        lanczos_steps=0,
    )


def _top_ritz(ritz: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[float, ...]:
    """The k largest-|λ| eigenvalues from the probes' Ritz values: the i-th is the signed
    Ritz value of largest |θ| among the probes' i-th largest (by |θ|)."""
    ranked = [nodes[np.argsort(-np.abs(nodes), kind="stable")] for nodes, _ in ritz]
    top = []
    for i in range(min(k, max(len(r) for r in ranked))):
        cands = [r[i] for r in ranked if len(r) > i]
        top.append(float(max(cands, key=abs)))
    return tuple(top)


def _lanczos(
    hvp: Callable[[Tensor], Tensor], v: Tensor, steps: int, dtype: torch.dtype
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lanczos from each row of ``v[probe, d]`` (normalised), all probes together so that
    each step is one batched HVP. Full reorthogonalisation (twice, classical Gram-Schmidt)
    against the probe's basis: cheap at these sizes and it keeps T free of ghost copies.

    Returns ``alpha[probe, steps]`` (diagonal of T), ``beta[probe, steps]`` (off-diagonal:
    β_j couples steps j and j+1) and ``used[probe]``, the steps before breakdown (a probe
    whose residual β falls below sqrt(eps)·scale has found an invariant subspace and
    stops; scale is the largest |α|, β met so far, a lower bound on ‖H‖)."""
    p, d = v.shape
    rel = math.sqrt(torch.finfo(dtype).eps)  # HVPs are only as accurate as dtype
    scale = 0.0
    basis = torch.zeros(p, steps, d, dtype=torch.float64, device=v.device)  # Q[probe, j, d]
    alpha = torch.zeros(p, steps, dtype=torch.float64)
    beta = torch.zeros(p, steps, dtype=torch.float64)
    used = np.full(p, steps)
    active = torch.ones(p, dtype=torch.bool, device=v.device)
    q = v / v.norm(dim=1, keepdim=True)  # [probe, d]
    for j in range(steps):
        basis[:, j] = q
        w = hvp(q).double()  # [probe, d]
        alpha[:, j] = (q * w).sum(dim=1).cpu()
        q_j = basis[:, : j + 1]  # [probe, j+1, d]
        for _ in range(2):  # subtracts α_j q_j, β_{j-1} q_{j-1} and the rounding drift
            w = w - torch.einsum("pjd,pj->pd", q_j, torch.einsum("pjd,pd->pj", q_j, w))
        b = w.norm(dim=1)  # [probe]
        beta[:, j] = b.cpu()
        scale = max(scale, float(alpha[:, j].abs().max()), float(b.max()))
        tol = rel * scale
        broke = active & (b <= tol)
        for i in torch.nonzero(broke).flatten().tolist():
            used[i] = j + 1
        active = active & ~broke
        if not bool(active.any()) or j + 1 == steps:
            break
        # finished probes carry zeros; their rows of alpha/beta past `used` are ignored
        q = torch.where(active[:, None], w / b.clamp_min(tol)[:, None], torch.zeros_like(w))
    return alpha.numpy(), beta.numpy(), used


def _use_exact(exact: bool | None, d: int) -> bool:
    return d <= EXACT_MAX_DIM if exact is None else bool(exact)


def _check_probes(probes: int) -> None:
    if probes < 2:  # one probe has no spread, hence no standard error
        raise ValueError(f"probes must be >= 2 for a stochastic estimate, got {probes!r}")


def _rademacher(probes: int, d: int, seed: int, like: Tensor) -> Tensor:
    """v[probe, d] with entries ±1, from a CPU generator (reproducible across devices)."""
    gen = torch.Generator().manual_seed(seed)
    v = torch.randint(0, 2, (probes, d), generator=gen).to(like.dtype).mul_(2).sub_(1)
    return v.to(like.device)
