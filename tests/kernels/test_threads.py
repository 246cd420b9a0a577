"""The CPU thread policy (``rllc.kernels.threads``): its choice by problem size and
affinity mask, overrides, determinism, and the wait policy the CLI sets before torch
loads. No timings here (``benchmarks/contention.py`` measures them)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rllc.kernels import threads as T

DLN_FLOPS = 2e4  # rllc estimate dln --widths 5,4,5, 16 chains
HEAD_FLOPS = 9e11  # one layer-0 HeadLayerStep of 32 rows on the paper-shaped model
_OVERRIDES = ("OMP_", "GOMP_", "KMP_", "MKL_NUM_THREADS", "RLLC_THREADS")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_OVERRIDES)}
    return {**env, **extra}


@pytest.fixture
def four_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)


def test_small_problems_get_one_thread_large_ones_every_core(four_cores):
    assert T.choose_threads(DLN_FLOPS, environ={}) == 1
    assert T.choose_threads(T.SMALL_STEP_FLOPS / 2, environ={}) == 1
    assert T.choose_threads(T.SMALL_STEP_FLOPS, environ={}) == 4
    assert T.choose_threads(HEAD_FLOPS, environ={}) == 4
    assert T.choose_threads(None, environ={}) == 4  # size unknown: the cores


def test_the_dln_and_head_fast_path_sizes_fall_either_side_of_the_threshold():
    from rllc.models import TransformerConfig
    from rllc.models.head_step import step_flops

    assert T.dense_step_flops(5 * 4 + 4 * 5, 5, 16) < T.SMALL_STEP_FLOPS  # as the CLI counts
    paper = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, n_ctx=256,
                              d_vocab=5000, positional="residual")
    for layer, lowrank in ((0, False), (1, True)):
        head = sum(step_flops(paper, layer, 32, 8, 16, 256, lowrank).values())
        assert head > 100 * T.SMALL_STEP_FLOPS


def test_affinity_mask_is_respected(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert T.affinity_cores() == 1
    assert T.choose_threads(HEAD_FLOPS, environ={}) == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1, 5, 7}, raising=False)
    assert T.choose_threads(HEAD_FLOPS, environ={}) == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # not Linux
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    assert T.choose_threads(HEAD_FLOPS, environ={}) == 6


def test_reserved_cpus_of_a_ray_actor(four_cores):
    assert T.choose_threads(cores=2, environ={}) == 2
    assert T.choose_threads(cores=0.5, environ={}) == 1
    assert T.choose_threads(DLN_FLOPS, cores=8, environ={}) == 1


def test_overrides_win_in_order(four_cores):
    assert T.choose_threads(DLN_FLOPS, environ={"RLLC_THREADS": "3"}) == 3
    assert T.choose_threads(HEAD_FLOPS, environ={"OMP_NUM_THREADS": "1"}) == 1
    assert T.choose_threads(DLN_FLOPS, environ={"OMP_NUM_THREADS": "4,2"}) == 4
    both = {"RLLC_THREADS": "2", "OMP_NUM_THREADS": "1"}
    assert T.choose_threads(HEAD_FLOPS, environ=both) == 2
    assert T.choose_threads(DLN_FLOPS, threads=3, environ=both) == 3  # explicit first
    assert T.choose_threads(HEAD_FLOPS, environ={"OMP_NUM_THREADS": "lots"}) == 4  # ignored
    assert T.choose_threads(HEAD_FLOPS, environ={"RLLC_THREADS": ""}) == 4  # unset
    for bad in ("0", "-1", "two"):
        with pytest.raises(ValueError, match="RLLC_THREADS"):
            T.choose_threads(environ={"RLLC_THREADS": bad})
    with pytest.raises(ValueError):
        T.choose_threads(threads=0, environ={})


def test_default_environment_is_read(monkeypatch, four_cores):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("RLLC_THREADS", "3")
    assert T.choose_threads(DLN_FLOPS) == 3
    monkeypatch.delenv("RLLC_THREADS")
    assert T.choose_threads(DLN_FLOPS) == 1


def test_the_choice_is_deterministic_and_ignores_load(monkeypatch, four_cores):
    def no_load():
        raise AssertionError("the thread policy must not read the load")

    monkeypatch.setattr(os, "getloadavg", no_load)
    for flops in (None, DLN_FLOPS, HEAD_FLOPS):
        assert len({T.choose_threads(flops, environ={}) for _ in range(5)}) == 1


def test_wait_policy_defaults_to_passive_and_keeps_the_users():
    default = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}
    assert T.wait_policy_env({}) == default == T.DEFAULT_WAIT
    assert T.wait_policy_env({"KMP_BLOCKTIME": "0"}) == {**default, "KMP_BLOCKTIME": "0"}
    user = {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1000", "OTHER": "x"}
    assert T.wait_policy_env(user) == {"OMP_WAIT_POLICY": "ACTIVE", "GOMP_SPINCOUNT": "1000"}
    # a policy the user chose is not changed by rllc's spin count, and the reverse
    assert T.wait_policy_env({"OMP_WAIT_POLICY": "ACTIVE"}) == {"OMP_WAIT_POLICY": "ACTIVE"}
    assert T.wait_policy_env({"GOMP_SPINCOUNT": "0"}) == {"OMP_WAIT_POLICY": "PASSIVE",
                                                          "GOMP_SPINCOUNT": "0"}
    env = {"OMP_WAIT_POLICY": "", "PATH": "/bin"}  # empty counts as unset
    T.set_wait_policy(env)
    assert env == {**default, "PATH": "/bin"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    T.set_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def test_use_threads_sets_torch():
    import torch

    before = torch.get_num_threads()
    try:
        assert T.use_threads(DLN_FLOPS, threads=1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_ray_actors_get_the_wait_policy(monkeypatch):
    from rllc.jobs.spec import Resources
    from rllc.jobs.sweep import actor_options

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("GOMP_SPINCOUNT", raising=False)
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    options, _ = actor_options(Resources(num_cpus=1), {"CPU": 2.0})
    assert options["runtime_env"] == {"env_vars": T.DEFAULT_WAIT}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    options, _ = actor_options(Resources(num_cpus=1), {"CPU": 2.0})
    assert options["runtime_env"]["env_vars"]["OMP_WAIT_POLICY"] == "ACTIVE"


CHILD = r"""
import json, os, sys
import rllc.cli
early = {"policy": os.environ.get("OMP_WAIT_POLICY"), "torch": "torch" in sys.modules}
import rllc.cli.main  # imports torch
print(json.dumps(early))
"""


def test_cli_sets_passive_wait_before_torch_loads():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, env=clean_env(OMP_DISPLAY_ENV="VERBOSE"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"policy": "PASSIVE",
                                                                 "torch": False}
    if "GOMP_SPINCOUNT" in proc.stderr:  # libgomp printed the values it read at load
        assert "OMP_WAIT_POLICY = 'PASSIVE'" in proc.stderr
        assert "GOMP_SPINCOUNT = '10000'" in proc.stderr


def test_threads_module_imports_without_torch():
    code = "import sys, rllc.kernels.threads; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, env=clean_env(), check=True)
    assert out.stdout.strip() == "False"


def test_users_wait_policy_wins_in_the_cli():
    proc = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                          timeout=120, env=clean_env(OMP_WAIT_POLICY="ACTIVE"))
    assert json.loads(proc.stdout.strip().splitlines()[-1])["policy"] == "ACTIVE"


def run_dln(*extra: str, **env: str) -> dict:
    args = ["estimate", "dln", "--widths", "5,4,5", "--true-rank", "2", "--samples", "2000",
            "--draws", "20", "--burnin", "5", "--chains", "2", "--steps-per-draw", "2",
            "--json", *extra]
    proc = subprocess.run([sys.executable, "-m", "rllc.cli.main", *args], capture_output=True,
                          text=True, timeout=300, env=clean_env(**env))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_estimate_dln_runs_and_reports_one_thread():
    assert run_dln()["threads"] == 1


def test_estimate_dln_threads_overrides():
    if T.affinity_cores() < 2:
        pytest.skip("needs 2 cores to tell an override from the default")
    assert run_dln("--threads", "2")["threads"] == 2
    assert run_dln(RLLC_THREADS="2")["threads"] == 2


def test_estimate_model_reports_its_threads(tiny_run):
    """A tiny checkpoint is a small problem: one thread, recorded in the JSON."""
    import torch
    from typer.testing import CliRunner

    from rllc.cli.main import app

    args = ["estimate", "model", tiny_run, "--component", "1:0", "--dataset", "dyck",
            "--sequences", "16", "--chains", "2", "--draws", "4", "--batch-size", "8",
            "--nbeta", "10", "--step-size", "1e-4", "--json"]
    before = torch.get_num_threads()
    try:
        unset = {"RLLC_THREADS": None, "OMP_NUM_THREADS": None}
        res = CliRunner().invoke(app, args, env=unset)
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout.strip().splitlines()[-1])["threads"] == 1
    finally:
        torch.set_num_threads(before)
