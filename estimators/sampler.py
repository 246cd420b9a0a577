"""Batched localized SGLD over a weight selection, returning the chains' traces.

All C chains advance together: the sampled entries are stacked as ``theta[chain, k]`` and
one ``torch.func.vmap`` of ``grad_and_value`` over ``functional_call`` computes every
chain's loss and gradient in one call. Only the selected entries are ever copied or
differentiated; everything else is read from the frozen w*.

Reproducibility: chain ``c`` draws its noise from its own generator seeded by
``(seed, c)`` (``(seed, c, *noise_key)`` when a component key is given), and minibatch
order depends on ``seed`` alone (or on ``(seed, c)`` with ``independent_batches``), so
chain ``c`` of a batched run equals a one-chain run with ``chain_ids=[c]`` up to
floating-point reassociation in the batched kernels.

The SGLD loop itself (``run_sgld``) only needs a step function giving each row's loss and
gradient; ``sample`` builds the general one (vmap over ``functional_call``), and
specialised samplers (``rllc.models.fastpath`` for attention heads) supply their own, so
every path shares the update, the recorded traces and the divergence rule.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from .config import Burnin, SGLDConfig
from .diagnostics import mala_log_acceptance
from .llc import LLCEstimate, llc_draws_paired, llc_draws_plain, resolve_burnin, summarize
from .mcse import epoch_draws
from .selection import WeightSelection, select_all

Batch = tuple[Tensor, ...]
#: ``objective(params, batch) → scalar``: mean per-sample negative log-likelihood of the
#: model with parameters (and buffers) ``params`` on ``batch``. Build one with
#: ``supervised_objective`` or write it with ``torch.func.functional_call``.
Objective = Callable[[Mapping[str, Tensor], Batch], Tensor]


@dataclass(frozen=True)
class SamplingResult:
    """Traces of one sampling run. Arrays are numpy, dims named in order.

    ``loss[chain, draw]`` is L_B(w_t) on the draw's minibatch, taken before the update that
    uses that batch; ``batch_init_loss[chain, draw]`` is L_B(w*) on the same batch (for the
    paired estimator); ``init_loss`` is L_n(w*). ``data_rows`` is the number of rows the
    minibatches were drawn from (default ``n_samples``): with the config it fixes the epoch
    structure the standard error respects. ``extra`` holds provenance: ``threads``
    (``torch.get_num_threads()`` when sampling started) and what a specialised sampler adds.
    """

    config: SGLDConfig
    nbeta: float
    n_samples: int
    num_weights: int
    chain_ids: list[int]
    init_loss: float
    loss: np.ndarray  # [chain, draw]
    batch_init_loss: np.ndarray  # [chain, draw]
    distance: np.ndarray  # [chain, draw]  ‖w − w*‖ over the sampled weights
    grad_norm: np.ndarray  # [chain, draw]  ‖∇L_B(w)‖ over the sampled weights
    mala_acceptance: np.ndarray  # [chain, draw]  MH acceptance estimate of the last step
    diverged: np.ndarray  # [chain]
    seconds: float
    extra: dict[str, object] = field(default_factory=dict)
    data_rows: int | None = None

    @property
    def independent_chains(self) -> bool:
        """Whether the chains share no randomness: own minibatch streams, or full batch."""
        return independent_chains(self.config, self.data_rows or self.n_samples)

    @property
    def epoch(self) -> int | None:
        """Draws per whole epoch of minibatches (``rllc.estimators.mcse.epoch_draws``)."""
        cfg = self.config
        return epoch_draws(self.data_rows or self.n_samples, cfg.batch_size, cfg.steps_per_draw)

    def llc_draws(self, estimator: str | None = None) -> np.ndarray:
        """Per-draw contributions to λ̂, ``[chain, draw]``."""
        estimator = estimator or self.config.estimator
        if estimator == "paired":
            return llc_draws_paired(self.loss, self.batch_init_loss, self.nbeta)
        if estimator == "plain":
            return llc_draws_plain(self.loss, self.init_loss, self.nbeta)
        raise ValueError(f"estimator must be 'plain' or 'paired', got {estimator!r}")

    def burnin(self, estimator: str | None = None) -> int:
        """The config's burn-in in draws (``"auto"`` resolved on this run's trace)."""
        return resolve_burnin(self.llc_draws(estimator), self.config.burnin, self.diverged,
                              self.epoch)

    def llc(self, burnin: Burnin | None = None, estimator: str | None = None) -> LLCEstimate:
        """λ̂ over non-diverged chains; burn-in and estimator default to the config's."""
        burnin = self.config.burnin if burnin is None else burnin
        return summarize(self.llc_draws(estimator), burnin=burnin, diverged=self.diverged,
                         independent=self.independent_chains, epoch=self.epoch)


def independent_chains(config: SGLDConfig, data_rows: int) -> bool:
    """Whether chains of ``config`` over ``data_rows`` rows share no minibatch noise."""
    return config.independent_batches or config.batch_size >= data_rows


class _Batches:
    """Epoch-shuffled minibatch indices from a seeded generator (full batch if B ≥ n)."""

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        self.n, self.batch_size = n, min(batch_size, n)
        self.gen = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.long)
        self.pos = 0

    def __iter__(self) -> Iterator[Tensor]:
        return self

    def __next__(self) -> Tensor:
        if self.batch_size == self.n:
            return torch.arange(self.n)
        if self.pos + self.batch_size > self.perm.numel():
            self.perm, self.pos = torch.randperm(self.n, generator=self.gen), 0
        idx = self.perm[self.pos : self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx


def _seed(*keys: int) -> int:
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


_NOISE, _BATCH = 1, 2  # stream tags for per-purpose seeds


#: ``step(theta[row, d], batch, need_star) → (∇L_B[row, d], L_B[row], L_B(w*)[row] | None)``:
#: loss and gradient of every row (chain) at its sampled weights on one minibatch, and, when
#: ``need_star``, L_B(w*) of each row's minibatch (the paired baseline; None otherwise).
StepFn = Callable[[Tensor, object, bool], tuple[Tensor, Tensor, Tensor | None]]


def noise_seed(seed: int, chain: int, key: Sequence[int] = ()) -> int:
    """Seed of chain ``chain``'s noise generator: a function of ``(seed, chain, *key)`` only.

    ``key`` names the component when several are sampled as one batch (e.g. a head's
    ``(layer, head)``), so a row of a multi-component run equals a one-component run with
    the same key; the default ``()`` is the plain per-chain stream."""
    return _seed(seed, _NOISE, chain, *key)


class MinibatchStream:
    """Minibatch indices for one run: ``next()`` → ``[B]`` shared by all chains, or
    ``[chain, B]`` with ``config.independent_batches`` (chain c's stream seeded by
    ``(seed, c)``). Order depends only on the seed and chain ids, never on the model."""

    def __init__(self, n: int, config: SGLDConfig, chain_ids: Sequence[int]) -> None:
        self.independent = config.independent_batches
        if self.independent:
            self.streams = [_Batches(n, config.batch_size, _seed(config.seed, _BATCH, c))
                            for c in chain_ids]
        else:
            self.streams = [_Batches(n, config.batch_size, _seed(config.seed, _BATCH))]

    def next(self) -> Tensor:
        if not self.independent:
            return next(self.streams[0])
        return torch.stack([next(s) for s in self.streams])


def sample(
    model: nn.Module,
    objective: Objective,
    data: Tensor | Sequence[Tensor],
    selection: WeightSelection | None = None,
    config: SGLDConfig | None = None,
    *,
    chain_ids: Sequence[int] | None = None,
    init_loss: float | None = None,
    num_samples: int | None = None,
    noise_key: Sequence[int] = (),
    progress: bool | Callable[[int, int], None] = False,
) -> SamplingResult:
    """Run ``config.chains`` localized SGLD chains around the model's current weights w*.

    Args:
        model: any ``nn.Module``; its current parameters are w*. It is not modified.
        objective: ``(params, batch) → mean per-sample NLL`` (see ``Objective``).
        data: tensors sharing a leading sample dim n (the loss's dataset; pass another
            dataset for a data-refined LLC).
        selection: weights to sample (default: all of them, the unrefined LLC).
        config: sampler settings (default ``SGLDConfig()``).
        chain_ids: which chains to run (default ``range(config.chains)``); chain c's noise
            depends only on ``(seed, c)``.
        init_loss: L_n(w*) if already known (shared by all components of a checkpoint).
        num_samples: n of L_n when ``data`` is not one row per sample (e.g. sufficient
            statistics of the whole dataset); default: the rows of ``data``.
        noise_key: extra integers mixed into every chain's noise seed (``noise_seed``);
            multi-head runs (``rllc.models.fastpath``) key each head by ``(layer, head)``.
        progress: show a tqdm bar on stderr, or a callback ``(step, total_steps)``.
    """
    config = config or SGLDConfig()
    selection = selection or select_all(model)
    selection.validate(model)
    tensors = (data,) if isinstance(data, Tensor) else tuple(data)
    n = int(tensors[0].shape[0])
    if n == 0 or any(int(t.shape[0]) != n for t in tensors):
        raise ValueError("data tensors must be non-empty and share their leading dimension")
    ids = list(range(config.chains)) if chain_ids is None else [int(c) for c in chain_ids]
    n_chains = len(ids)
    if n_chains == 0:
        raise ValueError("chain_ids is empty: at least one chain is needed")

    device = next(iter(model.parameters())).device
    tensors = tuple(t.to(device) for t in tensors)
    frozen = frozen_state(model)
    nbeta = config.resolve_nbeta(n if num_samples is None else num_samples)

    w_star = selection.gather(frozen)  # [d]
    d = int(w_star.numel())

    def loss_of(theta: Tensor, batch: Batch) -> Tensor:
        return objective(selection.scatter(frozen, theta), batch)

    batch_dim = 0 if config.independent_batches else None
    grad_and_loss = vmap(grad_and_value(loss_of), in_dims=(0, batch_dim))
    loss_at_star = vmap(lambda b: objective(frozen, b)) if config.independent_batches else None
    stream = MinibatchStream(n, config, ids)

    def next_batch() -> Batch:
        idx = stream.next().to(device)  # [B] or [chain, B]
        return tuple(t[idx] for t in tensors)

    def step(theta: Tensor, batch: Batch, need_star: bool):
        with torch.enable_grad():
            grad_loss, loss = grad_and_loss(theta, batch)  # [chain, d], [chain]
        star = None
        if need_star:
            star = (
                loss_at_star(batch)
                if config.independent_batches
                else objective(frozen, batch).expand(n_chains)
            )
        return grad_loss, loss, star

    if init_loss is None:
        init_loss = full_data_loss(objective, frozen, tensors, config)

    seeds = [noise_seed(config.seed, c, noise_key) for c in ids]
    threads = torch.get_num_threads()  # provenance: the CPU threads this run sampled with
    traces, diverged, seconds = run_sgld(
        step, w_star.expand(n_chains, d), next_batch, seeds, config, nbeta, progress
    )
    return SamplingResult(
        config=config,
        nbeta=nbeta,
        n_samples=n if num_samples is None else num_samples,
        num_weights=d,
        chain_ids=ids,
        init_loss=float(init_loss),
        diverged=diverged,
        seconds=seconds,
        extra={"threads": threads},
        data_rows=n,
        **traces,
    )


def run_sgld(
    step: StepFn,
    w_star: Tensor,
    next_batch: Callable[[], object],
    seeds: Sequence[int],
    config: SGLDConfig,
    nbeta: float,
    progress: bool | Callable[[int, int], None] = False,
) -> tuple[dict[str, np.ndarray], np.ndarray, float]:
    """The SGLD loop shared by every sampler: rows (chains, or chains × components) of
    ``theta[row, d]`` advance together from ``w_star[row, d]``.

        Δw = (ε/2)·G·(−nβ·∇L_B(w) − γ·(w − w*)) + N(0, ε·G)

    ``step`` supplies loss and gradient per row (see ``StepFn``); row r's noise comes from a
    generator seeded by ``seeds[r]``. Returns the traces ``{name: [row, draw]}``, the
    diverged flags ``[row]`` and the wall time in seconds.
    """
    n_rows, d = w_star.shape
    device, dtype = w_star.device, w_star.dtype
    gamma, eps = config.localization, config.step_size
    noise = ChainNoise(seeds, d, device, dtype)
    theta = w_star.clone()  # [row, d]
    sq_avg = torch.zeros_like(theta)
    n_draws, spd = config.draws, config.steps_per_draw
    rec = {k: torch.full((n_rows, n_draws), math.nan) for k in
           ("loss", "batch_init_loss", "distance", "grad_norm", "mala_acceptance")}
    # (theta, U − nβ·L_B(w*), ∇U) of the step before a draw, for the MALA estimate
    prev: tuple[Tensor, Tensor, Tensor] | None = None

    def advance(theta: Tensor, grad_u: Tensor, precond: Tensor | None, step: float) -> Tensor:
        """One Langevin update at step size ``step``; row r's noise from its own stream.
        Plain SGLD (G = 1) takes the scalar form: two fused updates, no [row, d] temporaries
        beyond the noise, which is most of a small model's step."""
        if precond is None:
            return torch.add(theta, grad_u, alpha=-0.5 * step).add_(noise.next(),
                                                                    alpha=math.sqrt(step))
        return theta - 0.5 * step * precond * grad_u + (step * precond).sqrt() * noise.next()

    bar, callback = _progress(progress, config.total_steps)
    start = time.perf_counter()
    with torch.no_grad():
        # Warm-up: the same update at its own ε, nothing recorded.
        warm_eps = config.warmup_step_size or eps
        for w in range(config.warmup_steps):
            grad_loss, _, _ = step(theta, next_batch(), False)
            grad_u = torch.add(grad_loss, theta - w_star, alpha=gamma / nbeta).mul_(nbeta)
            precond = _precondition(config, sq_avg, grad_u)
            theta = advance(theta, grad_u, precond, warm_eps)
            callback(w + 1)
        for i in range(config.recorded_steps):
            batch = next_batch()
            is_draw = (i + 1) % spd == 0
            # L_B(w*) on this batch is needed at a draw (the paired estimator's baseline) and
            # the step before one (it makes potentials of different minibatches comparable
            # for MALA).
            need_star = is_draw or (i + 2) % spd == 0
            grad_loss, loss, star = step(theta, batch, need_star)  # [row, d], [row], [row]
            offset = theta - w_star
            grad_u = torch.add(grad_loss, offset, alpha=gamma / nbeta).mul_(nbeta)  # ∇U
            precond = _precondition(config, sq_avg, grad_u)

            if need_star:  # U(w) − nβ·L_B(w*), U = nβ·L_B + (γ/2)‖w − w*‖²
                u_rel = nbeta * (loss - star) + 0.5 * gamma * offset.square().sum(-1)
            if is_draw:
                j = i // spd
                rec["loss"][:, j] = loss.float().cpu()
                rec["batch_init_loss"][:, j] = star.float().cpu()
                rec["distance"][:, j] = offset.norm(dim=-1).float().cpu()
                rec["grad_norm"][:, j] = grad_loss.norm(dim=-1).float().cpu()
                if prev is not None:
                    log_a = mala_log_acceptance(
                        prev[0], theta, prev[1], u_rel, prev[2], grad_u, eps,
                        1.0 if precond is None else precond,
                    )
                    rec["mala_acceptance"][:, j] = log_a.exp().float().cpu()

                if not rec["loss"][:, j].isfinite().any():
                    break  # every row diverged: the rest of the run would be NaN anyway
            prev = (theta, u_rel, grad_u) if (i + 2) % spd == 0 else None
            theta = advance(theta, grad_u, precond, eps)
            callback(config.warmup_steps + i + 1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - start

    traces = {k: v.numpy().astype(np.float64) for k, v in rec.items()}
    diverged = _diverged(
        traces["loss"], traces["batch_init_loss"], nbeta, config.divergence_factor * d
    )
    return traces, diverged, seconds


def frozen_state(model: nn.Module) -> dict[str, Tensor]:
    """The model's parameters and buffers by name, detached: w* for ``functional_call``."""
    state = {k: v.detach() for k, v in model.named_parameters()}
    state.update({k: v.detach() for k, v in model.named_buffers()})
    return state


def full_data_loss(
    objective: Objective,
    params: Mapping[str, Tensor],
    data: Sequence[Tensor],
    config: SGLDConfig,
) -> float:
    """L_n(w*): mean loss over the dataset (or its first ``init_loss_batches`` batches of a
    seeded shuffle), evaluated in chunks so memory stays bounded."""
    n = int(data[0].shape[0])
    if config.init_loss_batches is None:
        order = torch.arange(n)
        chunk = max(config.batch_size, 256)
    else:
        gen = torch.Generator().manual_seed(_seed(config.seed, _BATCH, 10**6))
        order = torch.randperm(n, generator=gen)[: config.init_loss_batches * config.batch_size]
        chunk = config.batch_size
    total, count = 0.0, 0
    with torch.no_grad():
        for idx in order.split(chunk):
            idx = idx.to(data[0].device)
            total += float(objective(params, tuple(t[idx] for t in data))) * idx.numel()
            count += idx.numel()
    return total / count


def _precondition(config: SGLDConfig, sq_avg: Tensor, grad_u: Tensor) -> Tensor | None:
    """G of the update: RMSProp's 1/(δ + √V) (updating ``sq_avg`` = V in place), or None
    for plain SGLD (G = 1)."""
    if config.preconditioner != "rmsprop":
        return None
    sq_avg.mul_(config.rmsprop_alpha).addcmul_(grad_u, grad_u, value=1 - config.rmsprop_alpha)
    return 1.0 / (config.rmsprop_eps + sq_avg.sqrt())


class ChainNoise:
    """N(0, I) noise ``[row, d]`` per step, row r's from its own generator seeded by
    ``seeds[r]``, so a row's noise never depends on which other rows run beside it.

    On the CPU the generators are numpy's PCG64 with its ziggurat normals, drawn ``block``
    steps at a time: consecutive draws, so the stream is the same for any block size, and
    about 5× faster than torch's CPU normals, which dominated small models' steps. Elsewhere
    they are torch generators on the device, one ``randn`` per row and step.
    """

    def __init__(self, seeds: Sequence[int], d: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.device, self.dtype, self.d = torch.device(device), dtype, d
        if self.device.type == "cpu":
            self.np_dtype = np.float32 if dtype != torch.float64 else np.float64
            self.gens = [np.random.Generator(np.random.PCG64(s)) for s in seeds]
            self.block = max(1, min(64, (1 << 16) // max(d, 1)))
            self.buf = np.empty((len(seeds), self.block, d), dtype=self.np_dtype)
            self.pos = self.block
        else:
            self.gens = [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def next(self) -> Tensor:
        if self.device.type != "cpu":
            return torch.stack([torch.randn(self.d, generator=g, device=self.device,
                                            dtype=self.dtype) for g in self.gens])
        if self.pos == self.block:
            for row, g in zip(self.buf, self.gens, strict=True):
                g.standard_normal(out=row, dtype=self.np_dtype)
            self.pos = 0
        out = torch.from_numpy(self.buf[:, self.pos])  # [row, d], a view of the block
        self.pos += 1
        return out if out.dtype == self.dtype else out.to(self.dtype)


def _diverged(
    loss: np.ndarray, batch_init_loss: np.ndarray, nbeta: float, limit: float
) -> np.ndarray:
    """Chains whose loss went non-finite or rose above w*'s loss on the same minibatch by
    more than ``limit`` in nβ units (paired, so minibatch noise cannot trip it)."""
    with np.errstate(invalid="ignore"):
        exploded = (nbeta * (loss - batch_init_loss) > limit).any(axis=1)
    return ~np.isfinite(loss).all(axis=1) | exploded


def _progress(progress: bool | Callable[[int, int], None], total: int):
    if callable(progress):
        return None, lambda step: progress(step, total)
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="SGLD", unit="step", leave=False)
        return bar, lambda step: bar.update(1)
    return None, lambda step: None


def supervised_objective(
    model: nn.Module, nll: Callable[[Tensor, Tensor], Tensor] | str = "gaussian"
) -> Objective:
    """Objective for ``batch = (x, y)``: mean over samples of ``nll(model(x), y)``.

    ``"gaussian"`` is the per-sample NLL of y ~ N(f(x), I) up to a constant,
    ½‖y − f(x)‖²; ``"cross_entropy"`` is for class labels.
    """
    if nll == "gaussian":
        def nll_fn(out: Tensor, y: Tensor) -> Tensor:
            return 0.5 * (out - y).square().flatten(1).sum(-1).mean()
    elif nll == "cross_entropy":
        nll_fn = torch.nn.functional.cross_entropy
    elif callable(nll):
        nll_fn = nll
    else:
        raise ValueError(f"nll must be 'gaussian', 'cross_entropy' or a callable, got {nll!r}")

    def objective(params: Mapping[str, Tensor], batch: Batch) -> Tensor:
        x, y = batch
        return nll_fn(functional_call(model, dict(params), (x,)), y)

    return objective


def estimate_llc(
    model: nn.Module,
    objective: Objective,
    data: Tensor | Sequence[Tensor],
    selection: WeightSelection | None = None,
    config: SGLDConfig | None = None,
    **kwargs,
) -> tuple[LLCEstimate, SamplingResult]:
    """``sample`` then ``result.llc()``: the (refined) LLC estimate and its traces."""
    result = sample(model, objective, data, selection, config, **kwargs)
    return result.llc(), result
