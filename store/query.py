"""Pure queries over a stored sweep (an ``xarray.Dataset`` from ``TraceStore.open_sweep``).

λ̂ is recomputed from the raw traces, so burn-in and estimator are chosen at query time:

- plain:  λ̂_c = nβ · ( mean_{t ≥ burnin} L_{B_t}(w_{c,t}) − L_n(w*) )
- paired: λ̂_c = nβ · mean_{t ≥ burnin} ( L_{B_t}(w_{c,t}) − L_{B_t}(w*) )

per chain c (``rllc.estimators.llc``), pooled over the chains of every done seed of a
(checkpoint, component, dataset); diverged chains are left out. ``llc_std`` is the spread
of the per-chain λ̂_c, ``llc_stderr`` the Monte-Carlo standard error of their mean by batch
means over whole epochs (``rllc.estimators.mcse``, as ``rllc estimate`` reports it) and
``llc_stderr_ess`` the ESS-based one. The burn-in of a row is the largest of the burn-ins
stored with its cells (each chosen from the cell's trace when written), unless the query
names one: a number, or ``"auto"`` to choose it again from the pooled trace.
"""

from __future__ import annotations

import warnings
from fnmatch import fnmatchcase
from typing import Any

import numpy as np
import xarray as xr

from rllc.estimators.config import Burnin, SGLDConfig
from rllc.estimators.llc import (
    AllChainsDivergedError,
    llc_draws_paired,
    llc_draws_plain,
    summarize,
)
from rllc.estimators.mcse import epoch_draws
from rllc.estimators.sampler import independent_chains

from .errors import QueryError
from .sweep import config_from_attrs, metrics_from_attrs
from .zarr_store import open_store

#: Keys of every ``llc_table`` row (docs/cli.md §3), then extras.
ROW_KEYS = (
    "checkpoint",
    "step",
    "component",
    "dataset",
    "llc_mean",
    "llc_std",
    "llc_stderr",
    "chains",
    "seeds",
    "burnin",
)


def open_sweep(uri: str, sweep_id: str | None = None) -> xr.Dataset:
    """Open a sweep read-only; ``sweep_id`` may be omitted when the store has only one."""
    return open_store(uri, read_only=True).open_sweep(sweep_id)


def sweep_config(ds: xr.Dataset) -> SGLDConfig:
    """The sampler config a sweep was run with."""
    return config_from_attrs(ds.attrs)


def select(
    ds: xr.Dataset,
    *,
    component: str | None = None,
    dataset: str | None = None,
    checkpoint: str | None = None,
) -> xr.Dataset:
    """The part of a sweep whose labels match; each filter is an exact label or a glob
    (``"1:*"``); a checkpoint also matches by its training step (``"2000"``)."""
    for dim, pattern in (
        ("component", component),
        ("dataset", dataset),
        ("checkpoint", checkpoint),
    ):
        if pattern is None:
            continue
        labels = [str(x) for x in ds[dim].values]
        steps = [str(int(x)) for x in ds["step"].values] if dim == "checkpoint" else labels
        keep = [
            i
            for i, (label, step) in enumerate(zip(labels, steps, strict=True))
            if label == pattern or step == pattern or fnmatchcase(label, pattern)
        ]
        if not keep:
            shown = ", ".join(labels[:12]) + (" …" if len(labels) > 12 else "")
            raise QueryError(f"no {dim} matches {pattern!r}; the sweep has: {shown}")
        ds = ds.isel({dim: keep})
    return ds


def columns_of(ds: xr.Dataset, metrics: list[str]) -> list[str]:
    """The stored columns of each name: a metric's columns (``hessian_trace`` →
    ``hessian_trace``, ``hessian_trace_stderr``), or one column by its own name
    (``ablation_zero``); ``llc`` adds none. ``QueryError`` names a metric the sweep did
    not compute."""
    stored = metrics_from_attrs(ds.attrs)
    every = [c for cols in stored.values() for c in cols]
    out: list[str] = []
    for name in metrics:
        if name == "llc":
            continue
        cols = stored.get(name) or ([name] if name in every else [])
        if not cols:
            have = ", ".join(["llc", *stored])
            raise QueryError(f"metric {name!r} is not in this sweep; it has: {have}")
        out += [c for c in cols if c not in out]
    return out


def llc_table(
    ds: xr.Dataset,
    component: str | None = None,
    dataset: str | None = None,
    checkpoint: str | None = None,
    burnin: Burnin | None = None,
    estimator: str | None = None,
    metrics: list[str] | None = None,
) -> list[dict[str, Any]]:
    """One row per (checkpoint, component, dataset) with at least one done cell.

    Args:
        ds: a sweep, from ``open_sweep``.
        component, dataset, checkpoint: filters (see ``select``).
        burnin: leading draws left out, or ``"auto"`` (default: the burn-ins stored with
            the cells; for sweeps written before they were stored, the config's).
        estimator: ``"plain"`` or ``"paired"`` (default: the sweep config's).
        metrics: baselines whose columns to add (``columns_of``), each the mean over the
            row's done seeds; a ``…_stderr`` column is the standard error of that mean,
            √(Σ SE²)/seeds.

    Returns:
        Rows ``{checkpoint, step, component, dataset, llc_mean, llc_std, llc_stderr,
        chains, seeds, burnin, draws, diverged_chains, llc_stderr_ess}`` and the metric
        columns; ``llc_*`` are NaN when every chain diverged or the sweep computed no
        LLC, and ``chains`` counts the chains used.
    """
    extra = columns_of(ds, metrics) if metrics else []
    config = sweep_config(ds)
    estimator = estimator or config.estimator
    n_draws = ds.sizes["draw"]
    if burnin is not None and burnin != "auto" and not 0 <= int(burnin) < n_draws:
        raise QueryError(f"burnin must lie in [0, {n_draws}) for this sweep, got {burnin}")
    if estimator not in ("plain", "paired"):
        raise QueryError(f"estimator must be 'plain' or 'paired', got {estimator!r}")

    ds = select(ds, component=component, dataset=dataset, checkpoint=checkpoint)
    done = ds["done"].values.astype(bool)  # [checkpoint, component, dataset, seed]
    if not done.any():
        return []
    loss = ds["loss"].values  # [checkpoint, component, dataset, seed, chain, draw]
    base = ds["batch_init_loss" if estimator == "paired" else "init_loss"].values
    nbeta, diverged = ds["nbeta"].values, ds["diverged"].values.astype(bool)
    n_samples = ds["n_samples"].values
    stored_burnin = ds["burnin"].values if "burnin" in ds else None  # layout ≥ 3

    rows = []
    checkpoints, steps = ds["checkpoint"].values, ds["step"].values
    for k, h, d in np.ndindex(done.shape[:3]):
        seeds = np.flatnonzero(done[k, h, d])
        if seeds.size == 0:
            continue
        cells = [(k, h, d, s) for s in seeds]
        draws = np.concatenate(
            [_cell_draws(loss[c], base[c], nbeta[c], estimator) for c in cells]
        )  # [seed·chain, draw]
        bad = np.concatenate([diverged[c] for c in cells])
        seed_of_chain = np.repeat(np.arange(len(cells)), [len(diverged[c]) for c in cells])
        rows_n = int(n_samples[cells[0]])
        row_burnin = burnin
        if row_burnin is None:
            kept = [int(stored_burnin[c]) for c in cells] if stored_burnin is not None else []
            row_burnin = max(kept) if kept and min(kept) >= 0 else config.burnin
        if np.isfinite(draws).any():
            summary = _summary(draws, row_burnin, bad, independent_chains(config, rows_n),
                               epoch_draws(rows_n, config.batch_size, config.steps_per_draw),
                               seed_of_chain)
        else:  # a sweep of baselines only
            summary = _no_estimate(draws, 0, bad)
        row = {
            "checkpoint": str(checkpoints[k]),
            "step": int(steps[k]),
            "component": str(ds["component"].values[h]),
            "dataset": str(ds["dataset"].values[d]),
            **summary,
            "seeds": int(seeds.size),
        }
        for col in extra:
            values = np.array([float(ds[col].values[c]) for c in cells])
            if col.endswith("_stderr"):
                row[col] = float(np.sqrt(np.sum(values**2)) / len(values))
            else:
                row[col] = float(np.mean(values))
        rows.append({key: row[key] for key in ROW_KEYS} | row)
    return rows


def llc_query(
    uri: str,
    sweep_id: str | None = None,
    *,
    component: str | None = None,
    dataset: str | None = None,
    checkpoint: str | None = None,
    burnin: Burnin | None = None,
    estimator: str | None = None,
    metrics: list[str] | None = None,
) -> dict[str, Any]:
    """The LLC table of a stored sweep with what it was computed with: what
    ``rllc query --format json`` prints and the HTTP service's ``GET /sweeps/{id}/llc``
    answers, so the two agree by construction.

    Returns ``{rows, store, sweep, burnin, estimator, columns}``; ``rows`` as
    ``llc_table``, ``burnin`` the one asked for (else the sweep config's), ``columns``
    the row keys with the metrics' columns.
    """
    store = open_store(uri, read_only=True)
    sweep_id = store.resolve_sweep(sweep_id)
    ds = store.open_sweep(sweep_id)
    config = ds.attrs.get("sgld_config", {})
    rows = llc_table(ds, component=component, dataset=dataset, checkpoint=checkpoint,
                     burnin=burnin, estimator=estimator, metrics=metrics or None)
    return {
        "rows": rows,
        "store": uri,
        "sweep": sweep_id,
        "burnin": config.get("burnin") if burnin is None else burnin,
        "estimator": estimator or config.get("estimator"),
        "columns": [*ROW_KEYS, *columns_of(ds, metrics)] if metrics else list(ROW_KEYS),
    }


def _cell_draws(loss: np.ndarray, base: Any, nbeta: float, estimator: str) -> np.ndarray:
    """Per-draw λ̂ contributions ``[chain, draw]`` of one cell."""
    if estimator == "paired":
        return llc_draws_paired(loss, base, float(nbeta))
    return llc_draws_plain(loss, float(base), float(nbeta))


def _summary(draws: np.ndarray, burnin: Burnin, diverged: np.ndarray, independent: bool,
             epoch: int | None, groups: np.ndarray) -> dict[str, Any]:
    """``summarize`` as row fields; NaN estimates (not an error) when all chains diverged."""
    try:
        with warnings.catch_warnings():
            # Diverged chains are reported in the row; no warning per row.
            warnings.simplefilter("ignore", RuntimeWarning)
            est = summarize(draws, burnin=burnin, diverged=diverged, independent=independent,
                            epoch=epoch, groups=groups)
    except AllChainsDivergedError:
        return _no_estimate(draws, burnin, diverged)
    return {
        "llc_mean": est.llc_mean,
        "llc_std": est.llc_std,
        "llc_stderr": est.llc_stderr,
        "chains": est.chains,
        "burnin": est.burnin,
        "draws": est.draws,
        "diverged_chains": est.diverged_chains,
        "llc_stderr_ess": est.llc_stderr_ess,
    }


def _no_estimate(draws: np.ndarray, burnin: Burnin, diverged: np.ndarray) -> dict[str, Any]:
    """Row fields of a row without an estimate: every chain diverged, or no traces."""
    nan = float("nan")
    kept = 0 if burnin == "auto" else int(burnin)
    return {
        "llc_mean": nan,
        "llc_std": nan,
        "llc_stderr": nan,
        "chains": 0,
        "burnin": kept,
        "draws": draws.shape[1] - kept,
        "diverged_chains": int(diverged.sum()),
        "llc_stderr_ess": nan,
    }
