"""One conformance suite, ``StoreTests``, run against every backend: a local directory and
real S3 over HTTP (moto's server on loopback), as zarr and s3fs test themselves."""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import uuid
import zlib

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from rllc.estimators import SamplingResult, SGLDConfig
from rllc.estimators.mcse import batch_means_stderr
from rllc.store import (
    CELL_DIMS,
    ArraySpec,
    CellKey,
    GroupLayout,
    LayoutMismatchError,
    ReadOnlyStoreError,
    StoreNotFoundError,
    SweepGrid,
    UnknownGroupError,
    llc_table,
    open_store,
    open_sweep,
)

CONFIG = SGLDConfig(chains=3, draws=12, burnin=2, nbeta=25.0, estimator="plain")
GRID = SweepGrid(
    checkpoints=("runs/a/ckpt-100", "runs/a/ckpt-2000"),
    steps=(100, 2000),
    components=("0:1", "1:7"),
    datasets=("train", "dyck"),
    seeds=(0, 1),
)
SPEC = {"name": "demo", "components": ["0:1", "1:7"], "sampler": {"nbeta": 25.0}}


def fake_result(key: CellKey, config: SGLDConfig = CONFIG, diverged: int | None = None):
    """A deterministic ``SamplingResult`` for a cell (its numbers depend on the key)."""
    rng = np.random.default_rng(zlib.crc32(repr(tuple(key)).encode()))
    shape = (config.chains, config.draws)
    init = float(rng.uniform(1, 2))
    flags = np.zeros(config.chains, dtype=bool)
    if diverged is not None:
        flags[diverged] = True
    return SamplingResult(
        config=config,
        nbeta=float(config.nbeta),
        n_samples=int(rng.integers(100, 1000)),
        num_weights=int(rng.integers(10, 100)),
        chain_ids=list(range(config.chains)),
        init_loss=init,
        loss=init + rng.uniform(0, 0.5, shape),
        batch_init_loss=init + rng.normal(0, 0.05, shape),
        distance=rng.uniform(0, 1, shape),
        grad_norm=rng.uniform(0, 3, shape),
        mala_acceptance=rng.uniform(0.5, 1, shape),
        diverged=flags,
        seconds=float(rng.uniform(1, 10)),
    )


def key(i: int = 0) -> CellKey:
    return list(GRID.cells())[i]


def mcse_of_mean(draws: np.ndarray) -> float:
    """sd/√ESS of ``draws[chain, draw]``, written here in numpy (not ArviZ, which the
    store calls): the ESS of the mean as Vehtari et al. (2021) define it. Split chains,
    lag-t autocorrelations ρ_t from plain lagged sums (ρ_t = 1 − (W − mean_chains γ_t)/var⁺),
    Geyer's initial positive sequence of pair sums ρ_2k + ρ_2k+1 made monotone,
    τ = −1 + 2·Σ pairs + the last even lag, ESS = MN/τ capped at MN·log10(MN)."""
    half = draws.shape[1] // 2
    x = np.concatenate([draws[:, :half], draws[:, -half:]])  # split chains
    m, n = x.shape
    c = x - x.mean(axis=1, keepdims=True)
    acov = np.array([[c[j, : n - t] @ c[j, t:] / n for t in range(n)] for j in range(m)])
    acov = acov.mean(axis=0)  # γ_t, averaged over chains
    within = acov[0] * n / (n - 1)  # W
    var_plus = acov[0] + (x.mean(axis=1).var(ddof=1) if m > 1 else 0.0)
    rho = 1 - (within - acov) / var_plus
    even, odd = 1.0, rho[1]
    pairs = [even + odd]
    t = 1
    while t < n - 3 and even + odd > 0:
        even, odd = rho[t + 1], rho[t + 2]
        pairs.append(even + odd)
        t += 2
    # the last pair only through its even lag: when positive, or when the pair still was
    tail = even if even > 0 or even + odd >= 0 else 0.0
    tau = -1 + 2 * np.minimum.accumulate(pairs[:-1]).sum() + tail
    cap = m * n * np.log10(m * n)
    ess = min(m * n / tau, cap) if tau > 0 else cap
    return float(draws.std(ddof=1) / np.sqrt(ess))


def ar1_chains(phi: float, shape: tuple[int, int], seed: int) -> np.ndarray:
    """Stationary AR(1) chains x_t = φ·x_{t−1} + e_t, e_t ~ N(0, 1), x_0 ~ N(0, 1/(1 − φ²))."""
    rng = np.random.default_rng(seed)
    x = np.empty(shape)
    x[:, 0] = rng.normal(0, (1 - phi**2) ** -0.5, shape[0])
    e = rng.normal(size=shape)
    for t in range(1, shape[1]):
        x[:, t] = phi * x[:, t - 1] + e[:, t]
    return x


def ar1_stderr(phi: float, chains: int, draws: int) -> float:
    """The exact standard error of the mean of ``chains`` independent stationary AR(1)
    chains of ``draws`` each: Var(x̄) = γ₀/N·[1 + 2·Σ_{k<N} (1 − k/N)·φᵏ] / C, γ₀ = 1/(1 − φ²)."""
    k = np.arange(1, draws)
    var = (1 + 2 * np.sum((1 - k / draws) * phi**k)) / (1 - phi**2) / draws / chains
    return float(np.sqrt(var))


def _write_cells(uri: str, indices: list[int]) -> None:
    """A worker process: open the store itself and write some cells."""
    store = open_store(uri)
    for i in indices:
        store.write_cell("demo", key(i), fake_result(key(i)))


class StoreTests:
    """Conformance suite; a subclass provides the ``uri`` fixture of an empty store."""

    @pytest.fixture
    def uri(self) -> str:
        raise NotImplementedError

    @pytest.fixture
    def store(self, uri):
        return open_store(uri)

    @pytest.fixture
    def sweep(self, store):
        assert store.create_sweep("demo", GRID, CONFIG, SPEC) is True
        return store

    def test_capabilities(self, store):
        assert store.supports_writes and store.supports_listing
        assert store.supports_concurrent_writers
        assert not store.with_read_only().supports_writes

    def test_round_trip(self, sweep, uri):
        k = key(5)
        res = fake_result(k, diverged=1)
        sweep.write_cell("demo", k, res)
        ds = open_sweep(uri, "demo")
        assert ds["loss"].dims == (*CELL_DIMS, "chain", "draw")
        assert ds["diverged"].dims == (*CELL_DIMS, "chain")
        assert list(ds["checkpoint"].values) == list(GRID.checkpoints)
        assert list(ds["step"].values) == [100, 2000] and "step" in ds.coords
        assert list(ds["component"].values) == ["0:1", "1:7"]
        assert list(ds["seed"].values) == [0, 1]
        cell = ds.sel(
            checkpoint=k.checkpoint, component=k.component, dataset=k.dataset, seed=k.seed
        )
        for name in (
            "loss",
            "batch_init_loss",
            "distance",
            "grad_norm",
            "mala_acceptance",
            "diverged",
        ):
            np.testing.assert_array_equal(cell[name].values, getattr(res, name))
        for name in ("init_loss", "nbeta", "seconds", "num_weights", "n_samples"):
            assert cell[name].item() == getattr(res, name)
        assert bool(cell["done"]) and str(cell["error"].values) == ""
        other = ds.isel(checkpoint=0, component=0, dataset=0, seed=0)
        assert np.isnan(other["loss"].values).all() and not bool(other["done"])
        assert ds.attrs["sgld_config"] == CONFIG.model_dump(mode="json")
        assert ds.attrs["spec"] == SPEC
        assert set(ds.attrs["versions"]) >= {"rllc", "torch", "zarr", "numpy"}
        assert ds.attrs["rllc"]["grid"]["steps"] == [100, 2000]

    def test_done_mask_and_progress(self, sweep):
        written = {key(i) for i in (0, 3, 7)}
        for k in written:
            sweep.write_cell("demo", k, fake_result(k))
        assert sweep.done_cells("demo") == written
        assert sweep.sweep_progress("demo") == {
            "cells_total": 16,
            "cells_done": 3,
            "cells_failed": 0,
        }

    def test_failure_text_and_retry(self, sweep):
        k = key(2)
        text = "RuntimeError: chain blew up\n  at step 17 — ε too large ü"
        sweep.write_failure("demo", k, text)
        assert sweep.failed_cells("demo") == {k: text}
        assert sweep.done_cells("demo") == set()
        sweep.write_cell("demo", k, fake_result(k))  # a retry that succeeds
        assert sweep.failed_cells("demo") == {}
        assert sweep.done_cells("demo") == {k}

    def test_create_is_idempotent(self, sweep):
        sweep.write_cell("demo", key(0), fake_result(key(0)))
        assert sweep.create_sweep("demo", GRID, CONFIG, SPEC) is False
        again = open_store(sweep.uri)  # a fresh handle, no cache
        assert again.create_sweep("demo", GRID, CONFIG) is False
        assert again.done_cells("demo") == {key(0)}
        assert again.list_sweeps() == ["demo"]

    def test_incomplete_group_is_recreated(self, sweep):
        # A creator that crashed before the last step leaves a group without its "rllc"
        # attribute; the next create_sweep replaces it instead of trusting it.
        zarr.open_group(sweep.zstore, path="sweeps/demo", mode="r+").attrs.put({})
        fresh = open_store(sweep.uri)
        with pytest.raises(UnknownGroupError):
            fresh.done_cells("demo")
        assert fresh.create_sweep("demo", GRID, CONFIG) is True
        fresh.write_cell("demo", key(0), fake_result(key(0)))
        assert fresh.done_cells("demo") == {key(0)}

    def test_generic_group_primitives(self, store):
        # The primitives under the sweep layout: any kind of group, e.g. tuning trials.
        path = store.group_path("tuning", "t1")
        assert not store.exists(path) and store.list("tuning") == []
        layout = GroupLayout(
            sizes={"trial": 3, "draw": 4},
            arrays={
                "trial": ArraySpec(("trial",), "int64", -1, np.arange(3)),
                "objective": ArraySpec(("trial", "draw"), "float64", np.nan),
                "note": ArraySpec(("trial",), "str", ""),
            },
            attrs={"space": {"step_size": [1e-4, 1e-2]}},
            unit_dims=("trial",),
        )
        store.create(path, layout)
        store.write(
            path,
            {"objective": np.arange(4.0), "note": np.asarray("ok", dtype=object)},
            {"trial": 1},
        )
        assert store.exists(path) and store.list("tuning") == ["t1"]
        ds = store.read(path)
        assert ds["objective"].dims == ("trial", "draw")
        np.testing.assert_array_equal(ds["objective"].sel(trial=1).values, np.arange(4.0))
        assert np.isnan(ds["objective"].sel(trial=0).values).all()
        assert [str(x) for x in ds["note"].values] == ["", "ok", ""]
        assert ds.attrs["space"] == {"step_size": [1e-4, 1e-2]}
        with pytest.raises(ValueError, match="kind"):
            store.group_path("other", "t1")
        with pytest.raises(ReadOnlyStoreError):
            store.with_read_only().write(path, {"objective": np.zeros(4)}, {"trial": 0})

    def test_grid_or_config_mismatch_is_an_error(self, sweep):
        bigger = GRID.model_copy(update={"seeds": (0, 1, 2)})
        with pytest.raises(LayoutMismatchError, match="seeds"):
            sweep.create_sweep("demo", bigger, CONFIG)
        with pytest.raises(LayoutMismatchError, match="step_size"):
            sweep.create_sweep("demo", GRID, CONFIG.model_copy(update={"step_size": 0.1}))

    def test_bad_inputs(self, sweep):
        with pytest.raises(ValueError, match="sweep id"):
            sweep.create_sweep("no/slashes", GRID, CONFIG)
        with pytest.raises(KeyError, match="dataset 'code'"):
            sweep.write_cell(
                "demo", CellKey(GRID.checkpoints[0], "0:1", "code", 0), fake_result(key(0))
            )
        short = fake_result(key(0), SGLDConfig(chains=2, draws=12, nbeta=25.0))
        with pytest.raises(ValueError, match="shape"):
            sweep.write_cell("demo", key(0), short)

    def test_read_only_refuses_writes(self, sweep, uri):
        sweep.write_cell("demo", key(0), fake_result(key(0)))
        for ro in (sweep.with_read_only(), open_store(uri, read_only=True)):
            with pytest.raises(ReadOnlyStoreError, match="read-only"):
                ro.write_cell("demo", key(1), fake_result(key(1)))
            with pytest.raises(ReadOnlyStoreError):
                ro.write_failure("demo", key(1), "x")
            with pytest.raises(ReadOnlyStoreError):
                ro.create_sweep("other", GRID, CONFIG)
            assert ro.done_cells("demo") == {key(0)}  # reading still works
        assert sweep.done_cells("demo") == {key(0)}

    def test_unknown_sweep_and_store(self, sweep, uri):
        with pytest.raises(UnknownGroupError, match=r"no sweep 'nope'.*it has: demo"):
            sweep.open_sweep("nope")
        assert sweep.open_sweep().sizes["seed"] == 2  # the only sweep
        sweep.create_sweep("second", GRID, CONFIG)
        with pytest.raises(UnknownGroupError, match="demo, second"):
            sweep.open_sweep()
        with pytest.raises(StoreNotFoundError, match="no rllc store"):
            open_store(uri.rstrip("/") + "-missing", read_only=True)

    def test_concurrent_writers(self, sweep, uri):
        # fork: the workers inherit the test's environment (S3 endpoint) and imports.
        ctx = multiprocessing.get_context("fork")
        shares = [list(range(w, 16, 3)) for w in range(3)]
        workers = [ctx.Process(target=_write_cells, args=(uri, s)) for s in shares]
        for w in workers:
            w.start()
        for w in workers:
            w.join(timeout=60)
        assert [w.exitcode for w in workers] == [0] * len(workers)
        assert sweep.done_cells("demo") == set(GRID.cells())
        ds = open_sweep(uri, "demo")
        for i, k in enumerate(GRID.cells()):
            region = GRID.region(k)
            np.testing.assert_array_equal(
                ds["loss"].isel(region).values, fake_result(k).loss, err_msg=f"cell {i}"
            )

    def test_query_recomputes_with_burnin(self, sweep, uri):
        cells = [key(i) for i in range(4)]  # ckpt-100, 0:1, {train, dyck} × seeds {0, 1}
        results = {k: fake_result(k, diverged=0 if k.seed == 1 else None) for k in cells}
        for k, r in results.items():
            sweep.write_cell("demo", k, r)
        ds = open_sweep(uri)
        for burnin in (None, 5):
            b = CONFIG.burnin if burnin is None else burnin
            rows = llc_table(ds, burnin=burnin)
            assert [(r["dataset"], r["seeds"]) for r in rows] == [("train", 2), ("dyck", 2)]
            for row in rows:
                kept = [
                    r.loss[c]
                    for k, r in results.items()
                    if k.dataset == row["dataset"]
                    for c in range(CONFIG.chains)
                    if not r.diverged[c]
                ]
                init = {
                    k.seed: r.init_loss for k, r in results.items() if k.dataset == row["dataset"]
                }
                inits = [init[0]] * 3 + [init[1]] * 2  # seed 1 lost its chain 0
                draws = np.stack([25.0 * (x[b:] - i) for x, i in zip(kept, inits, strict=True)])
                per_chain = draws.mean(axis=1)
                assert row["chains"] == 5 and row["draws"] == CONFIG.draws - b
                assert row["checkpoint"] == GRID.checkpoints[0] and row["step"] == 100
                assert row["llc_mean"] == pytest.approx(per_chain.mean(), rel=1e-12)
                assert row["llc_std"] == pytest.approx(per_chain.std(ddof=1), rel=1e-12)
                # the ESS diagnostic: the MCSE of the kept draws' mean (seed 1's chain 0 and
                # the burn-in left out, both seeds pooled), by this file's own ESS
                assert row["llc_stderr_ess"] == pytest.approx(mcse_of_mean(draws), rel=1e-9)
                # the SE: batch means of each seed's chain mean (its chains share batches)
                seed_means = [draws[:3].mean(axis=0), draws[3:].mean(axis=0)]
                blocked = batch_means_stderr(np.stack(seed_means), independent=True)
                assert row["llc_stderr"] == pytest.approx(blocked.stderr, rel=1e-9)

    def test_query_stderr_of_autocorrelated_draws_is_the_exact_one(self, store, uri):
        """Cells whose λ̂ draws are AR(1) chains (φ = 0.8, 2 seeds × 4 chains × 5000
        draws): the variance of their mean is analytic (``ar1_stderr``), 3× the i.i.d.
        value σ/√(CN). The query's standard error is within 15% of it: the ESS estimate's
        own spread here is ≈ 3% (over 200 simulated sets of chains, ArviZ's and this
        file's estimate alike)."""
        phi, nbeta = 0.8, 25.0
        # independent chains (as these AR(1) chains are): their blocks are pooled
        config = SGLDConfig(chains=4, draws=5000, nbeta=nbeta, estimator="plain",
                            independent_batches=True)
        grid = SweepGrid(checkpoints=("runs/a/ckpt-1",), steps=(1,), components=("0:1",),
                         datasets=("train",), seeds=(0, 1))
        store.create_sweep("ar1", grid, config, {"name": "ar1"})
        chains = []
        for seed, k in enumerate(grid.cells()):
            x = 2.0 + ar1_chains(phi, (config.chains, config.draws), seed)  # λ̂ draws
            base = fake_result(k, config)
            # loss = L(w*) + draw/nβ, so that the plain estimator's draws are x again
            loss = base.init_loss + x / nbeta
            store.write_cell("ar1", k, dataclasses.replace(base, loss=loss))
            chains.append(x)
        (row,) = llc_table(open_sweep(uri, "ar1"), burnin=0)
        exact = ar1_stderr(phi, 2 * config.chains, config.draws)
        assert (row["chains"], row["seeds"], row["draws"]) == (8, 2, 5000)
        assert row["llc_mean"] == pytest.approx(2.0, abs=4 * exact)
        assert row["llc_stderr"] == pytest.approx(exact, rel=0.15)
        iid = np.concatenate(chains).std(ddof=1) / np.sqrt(8 * config.draws)
        assert row["llc_stderr"] > 2.5 * iid  # autocorrelation is not ignored

    def test_query_paired_and_filters(self, sweep, uri):
        for i in range(16):
            sweep.write_cell("demo", key(i), fake_result(key(i)))
        ds = open_sweep(uri, "demo")
        assert len(llc_table(ds)) == 8
        rows = llc_table(
            ds, component="1:*", dataset="dyck", checkpoint="2000", estimator="paired", burnin=0
        )
        assert len(rows) == 1
        k0, k1 = (CellKey(GRID.checkpoints[1], "1:7", "dyck", s) for s in (0, 1))
        draws = np.concatenate(
            [25.0 * (fake_result(k).loss - fake_result(k).batch_init_loss) for k in (k0, k1)]
        )
        assert rows[0]["llc_mean"] == pytest.approx(draws.mean(axis=1).mean(), rel=1e-12)
        with pytest.raises(ValueError, match="no component matches '9:9'"):
            llc_table(ds, component="9:9")
        with pytest.raises(ValueError, match="burnin"):
            llc_table(ds, burnin=12)

    def test_cli(self, sweep, uri):
        from rllc.cli.main import app

        sweep.write_cell("demo", key(0), fake_result(key(0)))
        runner = CliRunner()
        res = runner.invoke(app, ["query", uri, "--json", "--burnin", "3"])
        assert res.exit_code == 0, res.output
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert out["rows"] == json.loads(
            json.dumps(llc_table(open_sweep(uri), burnin=3), default=float).replace("NaN", "null")
        )
        assert set(out["rows"][0]) >= {
            "checkpoint",
            "step",
            "component",
            "dataset",
            "llc_mean",
            "llc_std",
            "llc_stderr",
            "chains",
            "seeds",
        }
        res = runner.invoke(app, ["query", uri, "--sweep", "demo", "--format", "csv"])
        assert res.exit_code == 0 and res.stdout.startswith("checkpoint,step,component")
        res = runner.invoke(app, ["query", uri, "--sweep", "nope"])
        assert res.exit_code == 2
        assert res.stderr.strip() == f"error: no sweep 'nope' in store {uri} (it has: demo)"
        res = runner.invoke(app, ["query", uri + "-missing"])
        assert res.exit_code == 2 and "no rllc store" in res.stderr


class TestLocalStore(StoreTests):
    @pytest.fixture
    def uri(self, tmp_path) -> str:
        return str(tmp_path / "rllc-store")


class TestS3Store(StoreTests):
    @pytest.fixture
    def uri(self, s3_bucket, monkeypatch, tmp_path) -> str:
        """A prefix in a fresh bucket on the loopback S3 server (``tests/conftest.py`` sets
        the AWS variables); no shared AWS files of this machine are read."""
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        return f"{s3_bucket}/{uuid.uuid4().hex[:12]}"

    def test_s3_query_equals_local(self, sweep, uri, tmp_path):
        local = open_store(tmp_path / "local")
        local.create_sweep("demo", GRID, CONFIG, SPEC)
        for i in (0, 1, 2, 5, 9, 15):
            res = fake_result(key(i), diverged=i % 3 if i % 2 else None)
            sweep.write_cell("demo", key(i), res)
            local.write_cell("demo", key(i), res)
        remote, here = open_sweep(uri).load(), open_sweep(str(tmp_path / "local")).load()
        for burnin in (None, 0, 7):
            remote_rows, local_rows = (
                llc_table(remote, burnin=burnin),
                llc_table(here, burnin=burnin),
            )
            assert json.dumps(remote_rows) == json.dumps(local_rows)  # exact, NaN included
