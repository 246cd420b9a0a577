"""Sweeps on real parts: a tiny trained checkpoint set, real SGLD, Ray (local runtime and a
two-node ``ray.cluster_utils.Cluster``), Zarr stores on disk and on S3 (moto's server on
loopback), the CLI in a subprocess.

Order matters for Ray: the local-runtime tests share one runtime (``TestLocalRay``), which
is shut down before the cluster test starts its own; the CLI tests run Ray in children.
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
import uuid
from pathlib import Path

import numpy as np
import pytest
import ray
import torch
import yaml
from typer.testing import CliRunner

from rllc.cli.main import app
from rllc.data import load_dataset
from rllc.estimators import sample
from rllc.jobs.spec import SpecError, parse_spec
from rllc.jobs.sweep import run_sweep
from rllc.jobs.sweep_plan import plan, resolve
from rllc.jobs.train import QUICK, train
from rllc.models import component_selection, lm_objective, parse_component
from rllc.models import uri as U
from rllc.models.checkpoint import load_checkpoint
from rllc.models.fastpath import sample_heads
from rllc.store import CellKey, llc_table, open_store, open_sweep

# Steps 0, 1 and 4 of a 2-layer × 2-head model: three checkpoints in a few seconds.
TINY_TRAIN = QUICK.model_copy(update={"steps": 4, "log_checkpoints": 2, "eval_sequences": 8})
SAMPLER = {
    "chains": 2, "draws": 10, "batch_size": 8, "nbeta": 10.0, "step_size": 1e-4,
    "localization": 100.0,
}
DATA = {"n_sequences": 32}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> str:
    """A run directory with three checkpoints of a tiny trained model."""
    out = str(tmp_path_factory.mktemp("run"))
    train(TINY_TRAIN, out, progress=False)
    return out


def make_spec(run_dir: str, store: str, **fields) -> dict:
    """A tiny sweep spec: 3 checkpoints × heads 0:0, 0:1 × dyck × seeds 0, 1 = 12 cells."""
    spec = {
        "name": "tiny",
        "checkpoints": os.path.join(run_dir, "ckpt-*"),
        "components": ["0:*"],
        "datasets": ["dyck"],
        "seeds": [0, 1],
        "sampler": SAMPLER,
        "store": store,
        "data": DATA,
        "resources": {"max_workers": 2},
    }
    return spec | fields


def assert_matches_direct_sample(store_uri: str, sweep: str, keys: list[CellKey]) -> None:
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
                                  DATA["n_sequences"], 0, mix=meta["data"])
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


# ---- 1. spec validation and plan (no Ray) -----------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"sampler": SAMPLER | {"step_size": -1}}, "sampler.step_size: step_size (ε) must be"),
        ({"sampler": SAMPLER | {"burnin": 10}}, "sampler: burnin (10) must be smaller"),
        ({"sampler": "tuned:/no/such.json"}, "sampler: tuned sampler file not found"),
        ({"sampler": "fast"}, "sampler: expected a mapping of SGLD settings"),
        ({"name": "no spaces"}, "name: sweep id must be letters"),
        ({"components": ["1:x"]}, "components: malformed component '1:x'"),
        ({"components": []}, "components: List should have at least 1 item"),
        ({"datasets": ["nope"]}, "datasets: unknown dataset 'nope'"),
        ({"seeds": [0, 0]}, "seeds: duplicate seeds: 0"),
        ({"resources": {"max_workers": 0}}, "resources.max_workers: Input should be greater"),
        ({"data": {"n_sequences": 0}}, "data.n_sequences: Input should be greater"),
        ({"colour": "red"}, "colour: Extra inputs are not permitted"),
    ],
)
def test_spec_errors_name_the_field(run_dir, change, message):
    with pytest.raises(SpecError) as err:
        parse_spec(make_spec(run_dir, "unused", **change))
    assert str(err.value).startswith(message), str(err.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"checkpoints": "/no/such/run/ckpt-*"}, "checkpoints: no checkpoint matches"),
        ({"checkpoints": ["/no/such/run"]}, "checkpoints: no checkpoint at '/no/such/run'"),
        ({"components": ["0:*", "2:0"]}, "components: unknown head '2:0'"),
        ({"components": ["blocks.9.*"]}, "components: "),
        ({"datasets": ["/no/such/tokens.npy"]}, "datasets: no such file"),
        ({"data": DATA | {"n_ctx": 4096}}, "data.n_ctx: 4096 exceeds the context length"),
    ],
)
def test_resolve_errors_name_the_field(run_dir, change, message):
    with pytest.raises(SpecError) as err:
        resolve(parse_spec(make_spec(run_dir, "unused", **change)))
    assert str(err.value).startswith(message), str(err.value)


def test_plan_counts_cells_and_steps(run_dir, tmp_path):
    tuned = tmp_path / "tuned.json"
    tuned.write_text(json.dumps({"best": SAMPLER | {"draws": 7}, "objective": 0.1}))
    spec = parse_spec(make_spec(
        run_dir, str(tmp_path / "store"), components=["0:*", "1:1", "all", "0:0"],
        datasets=["dyck", "train"], sampler=f"tuned:{tuned}",
    ))
    out = plan(spec)
    assert [os.path.basename(c) for c in out["checkpoints"]] == [
        "ckpt-0000000", "ckpt-0000001", "ckpt-0000004"]
    assert out["steps"] == [0, 1, 4]
    assert out["components"] == ["0:0", "0:1", "1:1", "all"]  # 0:* split, 0:0 once
    assert out["cells"] == 3 * 4 * 2 * 2
    assert out["sgld_steps"] == out["cells"] * 2 * 7 * 1  # cells × chains × draws × spd
    assert 0 < out["estimated_seconds"] < 600 and out["seconds_per_step"] > 0
    # A run directory expands to the same checkpoints; expand_layers=False keeps "0:*".
    same = resolve(parse_spec(make_spec(run_dir, "s", checkpoints=[run_dir],
                                        expand_layers=False)))
    assert list(same.grid.checkpoints) == out["checkpoints"]
    assert same.grid.components == ("0:*",)


def test_units_batch_a_layers_heads(run_dir):
    """Heads of one layer sharing checkpoint, dataset and seed form one unit; whole-layer
    or named components stay cells of their own; batch_heads=False makes every cell one."""
    spec = make_spec(run_dir, "s", components=["0:*", "1:1", "all"], seeds=[0],
                     checkpoints=[run_dir + "/ckpt-0000004"], datasets=["dyck", "train"])
    p = resolve(parse_spec(spec))
    units = p.units(p.grid.cells())
    assert sorted(len(u) for u in units) == [1, 1, 1, 1, 2, 2]
    assert sorted(tuple(k.component for k in u) for u in units if len(u) == 2) == [
        ("0:0", "0:1")] * 2
    assert all(len({(k.checkpoint, k.dataset, k.seed) for k in u}) == 1 for u in units)
    assert sorted(k for u in units for k in u) == sorted(p.grid.cells())
    single = resolve(parse_spec(spec | {"compute": {"batch_heads": False}}))
    assert all(len(u) == 1 for u in single.units(single.grid.cells()))
    kept = resolve(parse_spec(spec | {"expand_layers": False}))
    kept_units = kept.units(kept.grid.cells())
    assert len(kept_units) == 6 and all(len(u) == 1 for u in kept_units)


def test_session_samples_a_layer_as_one_batch_in_either_precision(run_dir):
    """``sample_many``: a layer's heads in one fast-path batch, each head's traces as
    when sampled alone (rtol 1e-6: float reassociation only); other components on the
    general path. In bfloat16, L_n(w*) is taken in bfloat16 too and λ̂ stays within a
    few standard errors of float32's."""
    from rllc.jobs.session import CheckpointSession
    from rllc.jobs.spec import ComputeOptions, DataOptions

    ckpt = run_dir + "/ckpt-0000004"
    cfg = parse_spec(make_spec(run_dir, "s")).sampler.model_copy(update={"draws": 20})
    exact = CheckpointSession(ckpt, DataOptions(**DATA), device="cpu")
    many = exact.sample_many(["1:0", "1:1", "embed"], "dyck", cfg)
    assert many["1:0"].extra["batch_heads"] == ["1:0", "1:1"]
    assert many["embed"].extra["path"] == "general"
    alone = exact.sample("1:1", "dyck", cfg)
    np.testing.assert_allclose(many["1:1"].loss, alone.loss, rtol=1e-6)
    bf16 = CheckpointSession(ckpt, DataOptions(**DATA), device="cpu",
                             compute=ComputeOptions(precision="bfloat16"))
    low = bf16.sample("1:1", "dyck", cfg)
    assert low.extra["precision"] == "bfloat16"
    assert low.init_loss != alone.init_loss
    assert abs(low.init_loss - alone.init_loss) < 1e-2 * alone.init_loss
    a, b = alone.llc(), low.llc()
    assert abs(a.llc_mean - b.llc_mean) <= 3 * np.hypot(a.llc_stderr, b.llc_stderr) + 0.05


def test_cli_plan(run_dir, tmp_path):
    runner = CliRunner()
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec(run_dir, str(tmp_path / "store"))))
    res = runner.invoke(app, ["sweep", "plan", str(path), "--json", "--no-timing"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert (out["cells"], out["sgld_steps"], out["estimated_seconds"]) == (12, 240, None)
    res = runner.invoke(app, ["sweep", "plan", str(path)])
    assert res.exit_code == 0 and "12 cells" in res.stdout and "estimated" in res.stdout

    path.write_text(yaml.safe_dump(make_spec(run_dir, "s", sampler=SAMPLER | {"chains": 0})))
    res = runner.invoke(app, ["sweep", "run", str(path), "--json"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: sampler.chains: chains must be ≥ 1, got 0"
    path.write_text("name: [unclosed\n")
    assert runner.invoke(app, ["sweep", "plan", str(path)]).exit_code == 2
    res = runner.invoke(app, ["sweep", "resume", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "spec file not found" in res.stderr


def test_cli_estimate_model(run_dir):
    runner = CliRunner()
    args = ["estimate", "model", run_dir, "--component", "1:0", "--dataset", "dyck",
            "--sequences", "16", "--chains", "2", "--draws", "8", "--batch-size", "8",
            "--nbeta", "10", "--step-size", "1e-4", "--threads", "1", "--json"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["checkpoint"].endswith("ckpt-0000004") and out["step"] == 4
    assert {"llc_mean", "llc_std", "llc_stderr", "chains", "draws", "diverged_chains",
            "seconds"} <= set(out)
    assert (out["chains"], out["draws"]) == (2, 8) and np.isfinite(out["llc_mean"])
    res = runner.invoke(app, [*args[:3], "--component", "7:0"])
    assert res.exit_code == 2 and "unknown head '7:0'" in res.stderr
    res = runner.invoke(app, [*args[:5], "--dataset", "nope"])
    assert res.exit_code == 2 and "unknown dataset 'nope'" in res.stderr
    assert (out["path"], out["precision"]) == ("fast", "float32")
    res = runner.invoke(app, [*args, "--precision", "bfloat16"])
    assert res.exit_code == 0, res.output
    low = json.loads(res.stdout.strip().splitlines()[-1])
    assert low["precision"] == "bfloat16" and np.isfinite(low["llc_mean"])
    res = runner.invoke(app, [*args, "--precision", "fp16"])
    assert res.exit_code == 2 and "--precision must be float32, bfloat16 or int8" in res.stderr


# ---- 2 and 4. a local Ray runtime: complete, resume, failures, S3 ------------------------


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on loopback with one bucket. The AWS settings are set before Ray
    starts, so its worker processes inherit them, as on a configured machine."""
    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "test",
                            "AWS_SECRET_ACCESS_KEY": "test",
                            "AWS_DEFAULT_REGION": "us-east-1"}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        U.reset_client()  # rllc.models.uri caches its boto3 client
        boto3.client("s3").create_bucket(Bucket="rllc-sweeps")
        yield endpoint
    U.reset_client()
    server.stop()


@pytest.fixture(scope="class")
def local_ray(s3_endpoint):
    """A local Ray runtime with 2 CPUs for one test class, shut down after it."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray")
class TestLocalRay:
    def test_sweep_completes_and_resume_skips_it(self, run_dir, tmp_path):
        store = str(tmp_path / "store")
        spec = parse_spec(make_spec(run_dir, store, components=["0:*", "1:1"]))
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
        changed = parse_spec(make_spec(run_dir, store, components=["0:*", "1:1"],
                                       sampler=SAMPLER | {"draws": 11}))
        with pytest.raises(ValueError, match="different sampler config"):
            run_sweep(changed, resume=True, progress=False)
        other = parse_spec(make_spec(run_dir, store, components=["0:*", "1:1"],
                                     compute={"precision": "bfloat16"}))
        with pytest.raises(SpecError, match=r"compute\.precision: sweep .tiny. was started"):
            run_sweep(other, resume=True, progress=False)

    def test_failing_cells_are_recorded_and_the_rest_complete(self, run_dir, tmp_path):
        bad = tmp_path / "bad.npy"
        np.save(bad, np.full((4, 32), 10**6, dtype=np.int64))  # ids outside the vocabulary
        store = str(tmp_path / "store")
        spec = parse_spec(make_spec(
            run_dir, store, checkpoints=[run_dir + "/ckpt-0000004"], components=["1:0"],
            datasets=["dyck", str(bad)], resources={"max_retries": 1},
        ))
        report = run_sweep(spec, progress=False)
        assert (report.cells_total, report.cells_done, report.cells_failed) == (4, 2, 2)
        failed = open_store(store).failed_cells("tiny")
        assert {k.dataset for k in failed} == {str(bad)}
        assert all("outside the vocabulary" in text for text in failed.values())
        # The CLI retries them on resume, still prints its JSON, and exits 1.
        path = tmp_path / "spec.json"
        path.write_text(json.dumps(spec.model_dump(mode="json")))
        res = CliRunner().invoke(app, ["sweep", "resume", str(path), "--json"])
        assert res.exit_code == 1
        out = json.loads(res.stdout.strip().splitlines()[-1])
        assert (out["cells_done"], out["cells_failed"], out["cells_skipped"]) == (2, 2, 2)

    def test_s3_store_reads_back_the_local_numbers(self, run_dir, tmp_path):
        """The same sweep twice: checkpoints and store on S3, then both on local disk."""
        prefix = f"s3://rllc-sweeps/{uuid.uuid4().hex[:8]}"
        for path in Path(run_dir).rglob("ckpt-*/*"):
            U.write_bytes(f"{prefix}/run/{path.relative_to(run_dir)}", path.read_bytes())
        remote, local = f"{prefix}/store", str(tmp_path / "local")
        for store, run in ((remote, f"{prefix}/run"), (local, run_dir)):
            spec = make_spec(run_dir, store, checkpoints=f"{run}/ckpt-*")
            report = run_sweep(parse_spec(spec), progress=False)
            assert report.cells_done == 12 and report.store == store
        there, here = llc_table(open_sweep(remote, "tiny")), llc_table(open_sweep(local, "tiny"))
        assert [r["checkpoint"] for r in there[::2]] == [
            f"{prefix}/run/ckpt-{s:07d}" for s in (0, 1, 4)]
        # Same checkpoints and seeds → the very same numbers, wherever they were stored.
        assert len(there) == 6
        assert [r | {"checkpoint": ""} for r in there] == [r | {"checkpoint": ""} for r in here]


# ---- 3. a node dies mid-sweep --------------------------------------------------------------


@pytest.mark.slow
def test_sweep_survives_losing_the_worker_node(run_dir, tmp_path):
    """Actors live on a worker node (custom resource "sweeper"); the node is killed after
    a few cells and a fresh one joins. Every cell ends done exactly once, with the traces
    its seed gives when sampled directly."""
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    # Fast failure detection, so the dead node's actors restart within seconds.
    health = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
              "health_check_failure_threshold": 3}
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "_system_config": health})
    node = cluster.add_node(num_cpus=2, resources={"sweeper": 2})
    store = str(tmp_path / "store")
    spec = parse_spec(make_spec(
        run_dir, store, components=["0:*", "1:0"], sampler=SAMPLER | {"draws": 30},
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
    assert_matches_direct_sample(store, "tiny", [CellKey(*c) for c in sorted(cells)])


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


# ---- 5. the driver is killed mid-sweep; resume finishes it ---------------------------------


@pytest.mark.slow
def test_killed_driver_then_resume_redoes_nothing(run_dir, tmp_path):
    store = str(tmp_path / "store")
    spec_path = tmp_path / "spec.yaml"
    # One worker and slower cells, so the kill lands mid-sweep.
    spec_path.write_text(yaml.safe_dump(make_spec(
        run_dir, store, components=["0:*", "1:*"], sampler=SAMPLER | {"draws": 60},
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
