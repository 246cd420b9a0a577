"""Store layout versions and the compute settings fixed at a sweep's creation."""

from __future__ import annotations

import numpy as np
import pytest

from rllc.estimators import SamplingResult, SGLDConfig
from rllc.store import (
    CellKey,
    LayoutMismatchError,
    LayoutVersionError,
    SweepGrid,
    llc_table,
    open_store,
    open_sweep,
)
from rllc.store import sweep as layout

CONFIG = SGLDConfig(chains=2, draws=6, nbeta=10.0)
GRID = SweepGrid(checkpoints=("runs/a/ckpt-1",), steps=(1,), components=("0:0", "0:1"),
                 datasets=("train",), seeds=(0,))
COMPUTE = {"precision": "float32", "batch_heads": True}


def result(threads: int | None = 1) -> SamplingResult:
    rng = np.random.default_rng(0)
    shape = (CONFIG.chains, CONFIG.draws)
    return SamplingResult(
        config=CONFIG, nbeta=10.0, n_samples=64, num_weights=12, chain_ids=[0, 1],
        init_loss=1.0, loss=1.0 + rng.uniform(0, 0.1, shape),
        batch_init_loss=np.ones(shape), distance=np.ones(shape), grad_norm=np.ones(shape),
        mala_acceptance=np.ones(shape), diverged=np.zeros(2, dtype=bool), seconds=1.0,
        extra={} if threads is None else {"threads": threads},
    )


def cell(i: int) -> CellKey:
    return list(GRID.cells())[i]


def test_compute_settings_are_fixed_at_creation(tmp_path):
    store = open_store(str(tmp_path / "s"))
    assert store.create_sweep("demo", GRID, CONFIG, compute=COMPUTE)
    assert store.sweep_compute("demo") == COMPUTE
    assert not store.create_sweep("demo", GRID, CONFIG, compute=dict(COMPUTE))  # a resume
    with pytest.raises(LayoutMismatchError,
                       match=r"different compute settings \(precision: 'float32' → 'int8'\)"):
        store.create_sweep("demo", GRID, CONFIG, compute=COMPUTE | {"precision": "int8"})


def test_threads_are_recorded_per_cell(tmp_path):
    store = open_store(str(tmp_path / "s"))
    store.create_sweep("demo", GRID, CONFIG, compute=COMPUTE)
    store.write_cell("demo", cell(0), result(threads=2))
    store.write_cell("demo", cell(1), result(threads=None))
    threads = open_sweep(store.uri, "demo")["threads"].values.reshape(-1)
    assert threads.tolist() == [2, -1]


def test_burnin_is_chosen_per_cell_when_written_and_used_by_queries(tmp_path):
    store = open_store(str(tmp_path / "s"))
    config = CONFIG.model_copy(update={"draws": 64})  # burnin "auto", the default
    store.create_sweep("demo", GRID, config, compute=COMPUTE)
    rng = np.random.default_rng(1)
    climb = np.minimum(np.arange(64) / 16, 1.0)  # the chains rise for 16 draws, then level
    res = result()
    res = SamplingResult(**{**res.__dict__, "config": config,
                            **{k: np.ones((2, 64)) for k in ("batch_init_loss", "distance",
                                                             "grad_norm", "mala_acceptance")},
                            "loss": 1.0 + 0.1 * climb + 0.002 * rng.normal(size=(2, 64))})
    chosen = res.burnin()
    assert 12 <= chosen <= 32  # the climb is left out, at most half the draws
    store.write_cell("demo", cell(0), res)
    assert open_sweep(store.uri, "demo")["burnin"].values.reshape(-1).tolist() == [chosen, -1]
    (row,) = llc_table(open_sweep(store.uri, "demo"))
    assert row["burnin"] == chosen and row["draws"] == 64 - chosen
    assert row["llc_mean"] == pytest.approx(res.llc().llc_mean)
    (row,) = llc_table(open_sweep(store.uri, "demo"), burnin=0)  # the query can override it
    assert row["burnin"] == 0 and row["llc_mean"] < res.llc().llc_mean


def test_an_older_layout_is_read_as_it_is_and_refused_for_writing(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "s"))
    with monkeypatch.context() as m:  # a store written by rllc before layout version 2
        m.setattr(layout, "LAYOUT_VERSION", 1)
        store.create_sweep("old", GRID, CONFIG)
    assert open_store(store.uri).sweep_progress("old")["cells_total"] == 2
    assert len(llc_table(open_sweep(store.uri, "old"))) == 0  # queries work, nothing done yet
    fresh = open_store(store.uri)
    for write in (lambda: fresh.write_cell("old", cell(0), result()),
                  lambda: fresh.write_failure("old", cell(0), "boom"),
                  lambda: fresh.create_sweep("old", GRID, CONFIG)):
        with pytest.raises(LayoutVersionError,
                           match=rf"layout version 1; this rllc writes version "
                                 rf"{layout.LAYOUT_VERSION}.*new sweep name"):
            write()


def test_a_newer_layout_is_refused_with_what_to_do(tmp_path, monkeypatch):
    store = open_store(str(tmp_path / "s"))
    with monkeypatch.context() as m:
        m.setattr(layout, "LAYOUT_VERSION", layout.LAYOUT_VERSION + 1)
        store.create_sweep("new", GRID, CONFIG)
    with pytest.raises(LayoutVersionError, match=r"newer than this rllc's .*upgrade rllc"):
        open_sweep(store.uri, "new")
