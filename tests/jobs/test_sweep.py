"""Sweeps on Ray (``rllc.jobs.sweep``, ``rllc.jobs.actors``) on real parts: the tiny
trained checkpoint set (``tiny_run``), real SGLD, a local runtime and a two-node
``ray.cluster_utils.Cluster``, Zarr stores on disk and on S3 (moto's server on loopback,
``s3_endpoint``), the CLI in a subprocess for a killed driver.

Order matters for Ray (tests run in file order): the local-runtime tests share one runtime
(``TestLocalRay``, which starts after ``s3_endpoint`` so its workers see the AWS
variables), shut down before the cluster test starts its own; the killed-driver test runs
Ray in CLI child processes. A test elsewhere that starts Ray in this process must shut it
down when done (tests/cli/test_contract.py does; tests/cli/test_sweep_cli.py never reaches
Ray).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
import ray
import torch
import yaml
from typer.testing import CliRunner

from rllc.cli.main import app
from rllc.data import load_dataset
from rllc.estimators import sample
from rllc.jobs.metrics import BaselineOptions, Metric
from rllc.jobs.session import CheckpointSession
from rllc.jobs.spec import DataOptions, SpecError, parse_spec
from rllc.jobs.sweep import run_sweep
from rllc.models import component_selection, lm_objective, parse_component
from rllc.models.checkpoint import load_checkpoint
from rllc.models.fastpath import sample_heads
from rllc.store import CellKey, LayoutMismatchError, llc_table, open_store, open_sweep


def assert_matches_direct_sample(store_uri: str, sweep: str, keys: list[CellKey],
                                 n_sequences: int) -> None:
    """Each stored cell equals a seeded rerun of that cell alone: ``sample_heads`` for a
    head (the sweep batched it with its layer's other heads), ``sample()`` otherwise."""
    ds = open_sweep(store_uri, sweep)
    config = open_store(store_uri).sweep_config(sweep)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the actors ran: same kernels, same reduction order
    try:
        for key in keys:
            model, tokenizer, meta = load_checkpoint(key.checkpoint)
            tokens = load_dataset(key.dataset, tokenizer, model.cfg.n_ctx, "eval",
                                  n_sequences, 0, mix=meta["data"])
            cfg = config.model_copy(update={"seed": key.seed})
            if parse_component(key.component).kind == "head":
                direct = sample_heads(model, tokens, [key.component], cfg)[key.component]
            else:
                direct = sample(model, lm_objective(model), tokens,
                                component_selection(model, key.component), cfg)
            cell = ds.sel(checkpoint=key.checkpoint, component=key.component,
                          dataset=key.dataset, seed=key.seed)
            np.testing.assert_allclose(cell["loss"].values, direct.loss, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(
                cell["init_loss"].values, direct.init_loss, rtol=1e-6, atol=1e-7)
    finally:
        torch.set_num_threads(threads)


# ---- 1. a local Ray runtime: complete, resume, failures, S3 ------------------------------


@pytest.fixture(scope="class")
def local_ray(s3_endpoint):
    """A local Ray runtime with 2 CPUs for one test class, shut down after it. It starts
    after ``s3_endpoint`` set the AWS variables, so its workers inherit them."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
class TestLocalRay:
    def test_sweep_completes_and_resume_skips_it(self, make_spec, tmp_path):
        store = str(tmp_path / "store")
        spec = parse_spec(make_spec(store, components=["0:*", "1:1"]))
        report = run_sweep(spec, progress=False)
        assert report.as_dict() | {"seconds": 0} == {
            "store": store, "sweep": "tiny", "cells_total": 18, "cells_done": 18,
            "cells_failed": 0, "seconds": 0, "cells_run": 18, "cells_skipped": 0,
        }
        assert len({s["cell"] for s in report.summaries}) == 18
        rows = llc_table(open_sweep(store, "tiny"))
        assert len(rows) == 3 * 3  # checkpoints × components, one dataset
        assert all(r["seeds"] == 2 and r["chains"] == 4 for r in rows)
        assert all(np.isfinite(r["llc_mean"]) for r in rows)

        again = run_sweep(spec, resume=True, progress=False)
        assert (again.cells_run, again.cells_skipped, again.cells_done) == (0, 18, 18)
        with pytest.raises(SpecError, match="name: sweep 'tiny' already exists"):
            run_sweep(spec, progress=False)
        changed = parse_spec(make_spec(store, components=["0:*", "1:1"],
                                       sampler=make_spec.SAMPLER | {"draws": 11}))
        with pytest.raises(LayoutMismatchError, match="different sampler config"):
            run_sweep(changed, resume=True, progress=False)
        # The precision is fixed at creation too: a resume runs as the sweep started.
        other = parse_spec(make_spec(store, components=["0:*", "1:1"],
                                     compute={"precision": "bfloat16"}))
        with pytest.raises(LayoutMismatchError, match=r"different compute settings "
                           r"\(precision: 'float32' → 'bfloat16'\)"):
            run_sweep(other, resume=True, progress=False)

    def test_should_stop_ends_the_run_and_keeps_done_cells(self, make_spec, tmp_path):
        # the cancel hook of the HTTP service (rllc.service.runner): polled between units
        store = str(tmp_path / "store")
        spec = parse_spec(make_spec(store, resources={"max_workers": 1},
                                    compute={"batch_heads": False}))
        ts = open_store(store)

        def one_done() -> bool:
            return "tiny" in ts.list_sweeps() and ts.sweep_progress("tiny")["cells_done"] >= 1

        report = run_sweep(spec, progress=False, should_stop=one_done)
        assert report.stopped and 1 <= report.cells_done < 12 and report.cells_failed == 0
        again = run_sweep(spec, resume=True, progress=False)
        assert not again.stopped and (again.cells_done, again.cells_failed) == (12, 0)
        # every cell stored once: those done before the stop, then the rest
        assert again.cells_skipped + again.cells_run == 12

    def test_failing_cells_are_recorded_and_the_rest_complete(self, make_spec, tiny_run,
                                                              tmp_path):
        bad = tmp_path / "bad.npy"
        np.save(bad, np.full((4, 32), 10**6, dtype=np.int64))  # ids outside the vocabulary
        store = str(tmp_path / "store")
        spec = parse_spec(make_spec(
            store, checkpoints=[tiny_run + "/ckpt-0000004"], components=["1:0"],
            datasets=["dyck", str(bad)], resources={"max_retries": 1},
        ))
        report = run_sweep(spec, progress=False)
        assert (report.cells_total, report.cells_done, report.cells_failed) == (4, 2, 2)
        failed = open_store(store).failed_cells("tiny")
        assert {k.dataset for k in failed} == {str(bad)}
        assert all("outside the vocabulary" in text for text in failed.values())
        # The CLI (on this runtime) retries them on resume, still prints its JSON, and
        # exits 1.
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(spec.model_dump(mode="json")))
        res = CliRunner().invoke(app, ["sweep", "resume", str(path), "--json"])
        assert res.exit_code == 1
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert (out["cells_done"], out["cells_failed"], out["cells_skipped"]) == (2, 2, 2)

    def test_s3_store_reads_back_the_local_numbers(self, make_spec, tiny_run, s3_endpoint,
                                                   s3_bucket, tmp_path):
        """The same sweep twice: checkpoints and store on S3, then both on local disk."""
        s3 = boto3.client("s3", endpoint_url=s3_endpoint)
        bucket = s3_bucket.removeprefix("s3://")
        for path in Path(tiny_run).rglob("ckpt-*/*"):
            s3.put_object(Bucket=bucket, Key=f"run/{path.relative_to(tiny_run)}",
                          Body=path.read_bytes())
        remote, local = f"{s3_bucket}/store", str(tmp_path / "local")
        for store, run in ((remote, f"{s3_bucket}/run"), (local, tiny_run)):
            spec = make_spec(store, checkpoints=f"{run}/ckpt-*")
            report = run_sweep(parse_spec(spec), progress=False)
            assert report.cells_done == 12 and report.store == store
        assert s3.list_objects_v2(Bucket=bucket, Prefix="store/")["KeyCount"] > 0
        there, here = llc_table(open_sweep(remote, "tiny")), llc_table(open_sweep(local, "tiny"))
        assert [r["checkpoint"] for r in there[::2]] == [
            f"{s3_bucket}/run/ckpt-{s:07d}" for s in (0, 1, 4)]
        # Same checkpoints and seeds → the very same numbers, wherever they were stored.
        assert len(there) == 6
        assert [r | {"checkpoint": ""} for r in there] == [r | {"checkpoint": ""} for r in here]

    def test_baselines_are_stored_with_their_cells_and_queried(self, make_spec, tiny_run,
                                                               tmp_path):
        """A sweep with metrics: each cell's baselines land in its columns before its done
        flag, equal a direct computation, and come back as query columns; a resume with
        other metrics is refused; a sweep of baselines alone has no λ̂."""
        store = str(tmp_path / "store")
        last = tiny_run + "/ckpt-0000004"
        fields = {"checkpoints": [last], "seeds": [0],
                  "metrics": ["llc", "hessian_trace", "ablation"],
                  "baselines": {"sequences": 3, "probes": 4}}
        report = run_sweep(parse_spec(make_spec(store, **fields)), progress=False)
        assert (report.cells_done, report.cells_failed) == (2, 0)
        rows = llc_table(open_sweep(store, "tiny"), metrics=["hessian_trace", "ablation"])
        assert len(rows) == 2
        for row in rows:
            assert np.isfinite(row["llc_mean"])
            for col in ("hessian_trace", "hessian_trace_stderr", "ablation_zero",
                        "ablation_mean_stderr", "ablation_resample"):
                assert np.isfinite(row[col]), (col, row)
        session = CheckpointSession(last, DataOptions(n_sequences=32), device="cpu")
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # as the actors ran
        try:
            direct = session.baselines(["0:0", "0:1"], "dyck", [Metric.HESSIAN_TRACE,
                                                                Metric.ABLATION],
                                       BaselineOptions(sequences=3, probes=4), seed=0)
        finally:
            torch.set_num_threads(threads)
        for row in rows:
            want = direct[row["component"]]
            assert row["hessian_trace"] == pytest.approx(want["hessian_trace"], rel=1e-5)
            assert row["ablation_zero"] == pytest.approx(want["ablation"]["zero"], rel=1e-5,
                                                         abs=1e-9)
        with pytest.raises(LayoutMismatchError, match="baselines"):
            run_sweep(parse_spec(make_spec(store, **fields | {"metrics": ["llc"]})),
                      resume=True, progress=False)
        only = parse_spec(make_spec(str(tmp_path / "only"), **fields | {"metrics": ["ablation"]}))
        run_sweep(only, progress=False)
        rows = llc_table(open_sweep(str(tmp_path / "only"), "tiny"), metrics=["ablation"])
        assert all(np.isnan(r["llc_mean"]) and np.isfinite(r["ablation_zero"]) for r in rows)

    def test_component_samplers_and_generated_data(self, make_spec, tiny_run, tmp_path):
        """Per-component sampler settings: layer 1's cells are sampled and stored with
        their own nβ, which the query's λ̂ uses; the ``generated`` dataset (sampled from
        the checkpoint) is cached in the store once; a resume with other overrides is
        refused."""
        store = str(tmp_path / "store")
        fields = {"checkpoints": [tiny_run + "/ckpt-0000004"], "components": ["0:*", "1:*"],
                  "datasets": ["dyck", "generated"], "seeds": [0],
                  "component_samplers": {"1:*": {"nbeta": 25}}}
        spec = parse_spec(make_spec(store, **fields))
        report = run_sweep(spec, progress=False)
        assert (report.cells_done, report.cells_failed) == (8, 0)
        ds = open_sweep(store, "tiny")
        nbeta = ds["nbeta"].sel(checkpoint=tiny_run + "/ckpt-0000004", seed=0)
        assert (nbeta.sel(component=["1:0", "1:1"]).values == 25).all()
        assert (nbeta.sel(component=["0:0", "0:1"]).values == make_spec.SAMPLER["nbeta"]).all()
        cached = list(Path(store, "cache", "datasets").glob("generated-*.npy"))
        assert len(cached) == 1 and np.load(cached[0]).shape == (32, 32)
        rows = {(r["component"], r["dataset"]): r for r in llc_table(ds)}
        assert len(rows) == 8 and all(np.isfinite(r["llc_mean"]) for r in rows.values())
        # λ̂ = nβ·(…) with each cell's own nβ: with layer 1's set back to the base nβ, its
        # estimates scale by 10/25 and layer 0's stay
        base = {(r["component"], r["dataset"]): r for r in llc_table(ds.assign(
            nbeta=ds["nbeta"] * 0 + make_spec.SAMPLER["nbeta"]))}
        for key, row in rows.items():
            scale = 25 / make_spec.SAMPLER["nbeta"] if key[0].startswith("1:") else 1.0
            assert row["llc_mean"] == pytest.approx(scale * base[key]["llc_mean"], rel=1e-9)
        again = run_sweep(spec, resume=True, progress=False)
        assert (again.cells_run, again.cells_skipped) == (0, 8)
        other = parse_spec(make_spec(store, **fields | {
            "component_samplers": {"1:*": {"nbeta": 20}}}))
        with pytest.raises(LayoutMismatchError, match=r"different compute settings "
                           r"\(component_samplers: "):
            run_sweep(other, resume=True, progress=False)


# ---- 2. a node dies mid-sweep --------------------------------------------------------------


@pytest.mark.slow
def test_sweep_survives_losing_the_worker_node(make_spec, tmp_path):
    """Actors live on a worker node (custom resource "sweeper"); the node is killed after
    a few cells and a fresh one joins. Every cell ends done exactly once, with the traces
    its seed gives when sampled directly."""
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized(), "TestLocalRay's runtime is still up"
    # Fast failure detection, so the dead node's actors restart within seconds.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": health})
    node = cluster.add_node(num_cpus=2, resources={"sweeper": 2})
    store = str(tmp_path / "store")
    spec = parse_spec(make_spec(
        store, components=["0:*", "1:0"], sampler=make_spec.SAMPLER | {"draws": 30},
        resources={"custom": {"sweeper": 1}, "max_workers": 2},
    ))
    try:
        ray.init(address=cluster.address, logging_level=logging.WARNING)
        out: dict = {}
        # The driver runs in a thread: adding a node must happen on the main thread.
        driver = threading.Thread(target=lambda: out.update(report=run_sweep(spec,
                                                                         progress=False)))
        driver.start()
        done_at_kill = _wait_for_done(store, "tiny", at_least=2)
        cluster.remove_node(node, allow_graceful=False)
        cluster.add_node(num_cpus=2, resources={"sweeper": 2})
        driver.join(timeout=240)
        assert not driver.is_alive(), "the sweep did not finish after the node was replaced"
    finally:
        ray.shutdown()
        cluster.shutdown()
    report = out["report"]
    assert done_at_kill < 18, "the node died after the sweep had finished"
    assert (report.cells_total, report.cells_done, report.cells_failed) == (18, 18, 0)
    cells = [s["cell"] for s in report.summaries]
    assert len(cells) == len(set(cells)) == 18  # none lost, none counted twice
    assert_matches_direct_sample(store, "tiny", [CellKey(*c) for c in sorted(cells)],
                                 make_spec.DATA["n_sequences"])


def _wait_for_done(store_uri: str, sweep: str, at_least: int, timeout: float = 120) -> int:
    """Poll the store until ``at_least`` cells are done; return how many were."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done = len(open_store(store_uri).done_cells(sweep))
        except (KeyError, FileNotFoundError):  # the sweep is not created yet
            done = 0
        if done >= at_least:
            return done
        time.sleep(0.05)
    raise TimeoutError(f"fewer than {at_least} cells done after {timeout} s")


# ---- 3. the driver is killed mid-sweep; resume finishes it ---------------------------------


@pytest.mark.slow
def test_killed_driver_then_resume_redoes_nothing(make_spec, tmp_path):
    store = str(tmp_path / "store")
    spec_path = tmp_path / "spec.yaml"
    # One worker and slower cells, so the kill lands mid-sweep.
    spec_path.write_text(yaml.safe_dump(make_spec(
        store, components=["0:*", "1:*"], sampler=make_spec.SAMPLER | {"draws": 60},
        resources={"max_workers": 1, "cells_in_flight": 1},
    )))
    cli = [sys.executable, "-m", "rllc.cli.main", "sweep"]
    child = subprocess.Popen(
        [*cli, "run", str(spec_path), "--num-cpus", "2"], start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_done(store, "tiny", at_least=2)
    finally:
        _kill_tree(child)
    sweep = open_store(store)
    before = sweep.done_cells("tiny")
    assert 2 <= len(before) < 24
    seconds = {k: _cell_value(store, k, "seconds") for k in before}

    res = subprocess.run([*cli, "resume", str(spec_path), "--num-cpus", "2", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["cells_total"], out["cells_done"], out["cells_failed"]) == (24, 24, 0)
    assert (out["cells_skipped"], out["cells_run"]) == (len(before), 24 - len(before))
    # Cells done before the kill kept their traces: none was run again.
    assert {k: _cell_value(store, k, "seconds") for k in before} == seconds


def _kill_tree(child: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (Ray's raylet, workers, …; some
    leave its process group), and wait until all are gone, as after a crash."""
    import psutil

    tree = [psutil.Process(child.pid), *psutil.Process(child.pid).children(recursive=True)]
    os.killpg(child.pid, signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    child.wait()
    psutil.wait_procs(tree, timeout=30)


def _cell_value(store_uri: str, key: CellKey, name: str) -> float:
    ds = open_sweep(store_uri, "tiny")
    return float(ds[name].sel(checkpoint=key.checkpoint, component=key.component,
                              dataset=key.dataset, seed=key.seed))
