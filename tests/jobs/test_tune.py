"""``rllc tune`` on a real Ray Tune search: small problems, fixed seeds.

A tiny linear network (3,2,8), r = 0 (λ = 3) with short trials; the search must find a
setting that passes every check, keep its trials in the store, resume after being killed,
refuse an all-divergent range, and hand its best config to a real sweep.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import ray

from rllc.estimators.dln import DLN_SAMPLER, DLNProblem
from rllc.jobs.spec import parse_spec, read_tuned
from rllc.jobs.sweep import run_sweep
from rllc.jobs.tune import INCOMPLETE, TuneError, tune_dln, tune_spec
from rllc.jobs.tune_spec import SearchSpace, parse_tune_spec
from rllc.store import open_store
from rllc.store.tuning import trial_rows

PROBLEM = DLNProblem(widths=(3, 2, 8), true_rank=0)
#: Short trials: 8 chains × 300 draws (the default trial is 16 × 500).
BASE = DLN_SAMPLER.model_copy(update={"chains": 8, "draws": 300, "warmup_steps": 3000})
SEARCH = SearchSpace(step_size=(1e-6, 1e-2), localization=(0.3, 30.0), trials=6, seed=0,
                     criteria={"se_rel": 0.05})


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


@pytest.fixture
def tune_state(tmp_path, monkeypatch):
    monkeypatch.setenv("RLLC_TUNE_STATE", str(tmp_path / "ray-tune"))
    return tmp_path / "ray-tune"


@pytest.mark.slow
@pytest.mark.usefixtures("local_ray", "tune_state")
class TestTune:
    def test_search_finds_a_passing_setting_and_keeps_its_trials(self, tmp_path):
        store = str(tmp_path / "store")
        out = tune_dln(PROBLEM, SEARCH, store=store, base=BASE, best_base=BASE,
                       progress=False, plot=str(tmp_path / "map.png"))
        assert out["trials"] == 6 and out["passed"] and out["objective"] < 0
        assert 0 <= out["stopped_early"] <= 1 and out["trials_per_minute"] > 0
        # never the exact λ in the search; the confirmation is a fresh run
        assert abs(out["relative_error"]) < 0.10, out
        assert out["confirm"][out["tune"]]["agrees_within_2se"] is not None
        rows = trial_rows(open_store(store), out["tune"])
        assert len(rows) == 6 and sum(r["passed"] for r in rows) >= 1
        chosen = min(rows, key=lambda r: r["objective"])
        # the largest passing ε wins, and best is its validated ε/2 and γ/2
        assert chosen["step_size"] == max(r["step_size"] for r in rows if r["passed"])
        assert out["best"]["step_size"] == pytest.approx(chosen["step_size"] / 2)
        assert out["best"]["steps_per_draw"] == 2 * BASE.steps_per_draw
        assert out["best"]["localization"] == pytest.approx(chosen["localization"] / 2)
        assert read_tuned(f"{store}#{out['tune']}") == out["best"]
        assert (tmp_path / "map.png").stat().st_size > 10_000

    def test_an_all_divergent_range_is_an_error_naming_the_range(self, tmp_path):
        search = SEARCH.model_copy(update={"step_size": (1.0, 10.0), "trials": 2})
        with pytest.raises(TuneError, match=r"every trial diverged over step_size \[1, 10\]"):
            tune_dln(PROBLEM, search, store=str(tmp_path / "store"), base=BASE,
                     progress=False)

    def test_a_new_store_at_an_old_path_starts_afresh(self, tmp_path):
        """Ray's state of a deleted store's tune is not resumed into a new store at the
        same URI: the second search runs its own trials (and its own range)."""
        store = tmp_path / "store"
        search = SEARCH.model_copy(update={"step_size": (1.0, 10.0), "trials": 2})
        with pytest.raises(TuneError, match=r"step_size \[1, 10\]"):
            tune_dln(PROBLEM, search, store=str(store), base=BASE, progress=True)
        shutil.rmtree(store)
        search = search.model_copy(update={"step_size": (2.0, 20.0)})
        with pytest.raises(TuneError, match=r"every trial diverged over step_size \[2, 20\]"):
            tune_dln(PROBLEM, search, store=str(store), base=BASE, progress=True)

    def test_the_best_config_drives_a_real_sweep(self, make_spec, tmp_path):
        """Tune ε of one head of the tiny model at a pinned γ (a grid of 3 step sizes),
        then sweep with ``sampler: tuned:<store>#<tune id>``."""
        store = str(tmp_path / "store")
        spec = parse_tune_spec(make_spec(
            store, name="tiny-tune", components=["0:0"], seeds=[0],
            search={"trials": 3, "algorithm": "grid", "step_size": [1e-5, 1e-3],
                    "localization": 100}))
        out = tune_spec(spec, progress=False)
        assert out["trials"] == 3
        rows = trial_rows(open_store(store), "tiny-tune")
        assert {r["localization"] for r in rows} == {100.0}
        # a pinned γ makes no γ/2 run: at most the base and ε/2 stages
        assert max(r["stages"] for r in rows) <= 2
        assert out["best"]["localization"] == 100.0
        sweep = parse_spec(make_spec(store, name="tuned-sweep", components=["0:1"],
                                     sampler=f"tuned:{store}#tiny-tune"))
        report = run_sweep(sweep, progress=False)
        assert report.cells_done == report.cells_total == 6
        config = open_store(store).sweep_config("tuned-sweep")
        assert config.step_size == pytest.approx(out["best"]["step_size"])
        assert config.localization == pytest.approx(out["best"]["localization"])


@pytest.mark.slow
def test_an_interrupted_search_resumes_with_the_trials_it_had(tmp_path):
    """Kill `rllc tune dln` once a trial is stored; the rerun restores Ray's state
    (``Tuner.restore``) and finishes, keeping the stored trial as it was. The first run
    shows its progress bar (no ``--json``), which Ray pickles with the tuner's state."""
    store = str(tmp_path / "store")
    env = {**os.environ, "RLLC_TUNE_STATE": str(tmp_path / "ray-tune")}
    cmd = [sys.executable, "-m", "rllc.cli.main", "tune", "dln", "--widths", "3,2,8",
           "--true-rank", "0", "--trials", "4", "--store", store, "--num-cpus", "2",
           "--step-size-range", "1e-6,1e-2", "--chains", "8", "--draws", "300", "--json"]
    log = (tmp_path / "first.log").open("w")
    proc = subprocess.Popen(cmd[:-1], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    tune_id = "dln-3x2x8-r0-s0"
    first = None
    try:
        deadline = time.time() + 600
        while time.time() < deadline and proc.poll() is None:
            try:
                rows = trial_rows(open_store(store, read_only=True), tune_id)
            except Exception:
                rows = []
            finished = [r for r in rows if r["objective"] != INCOMPLETE]
            if finished:
                first = finished[0]
                break
            time.sleep(1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()
    assert first is not None, "no trial was stored before the deadline"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["trials"] == 4
    rows = {r["trial"]: r for r in trial_rows(open_store(store), tune_id)}
    again = rows[first["trial"]]
    assert again["step_size"] == first["step_size"]
    assert np.isclose(again["objective"], first["objective"])
