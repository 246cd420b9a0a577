"""A tune's trials in a store: one chunk per trial, done last, best in the attributes."""

import json

import numpy as np
import pytest

from rllc.store import UnknownGroupError, open_store
from rllc.store.tuning import (
    RUNS,
    create_tuning,
    set_best,
    trial_rows,
    tuning_attrs,
    write_trial,
)


def trial_values(step: float, llc: float, passed: bool) -> dict:
    shape = (1, len(RUNS), 2, 5)  # target, run, chain, draw
    loss = np.full(shape, np.nan)
    loss[0, 0] = 1.0
    llc_mean = np.full(shape[:2], np.nan)
    llc_mean[0, 0] = llc
    return {
        "loss": loss, "llc_mean": llc_mean, "step_size": step, "localization": 10.0,
        "nbeta": 30.0, "objective": -0.5 if passed else 1.2, "seconds": 1.0, "stages": 3,
        "passed": passed,
        "verdict": np.asarray(json.dumps({"failed": [] if passed else ["t/precision"]}),
                              dtype=object),
    }


def test_trials_round_trip_and_best_is_kept(tmp_path):
    store = open_store(str(tmp_path / "s"))
    assert create_tuning(store, "t1", 3, ["t"], chains=2, draws=5, attrs={"kind": "dln"})
    assert not create_tuning(store, "t1", 3, ["t"], chains=2, draws=5, attrs={})  # resume
    write_trial(store, "t1", 2, trial_values(1e-3, 4.0, True))
    write_trial(store, "t1", 0, trial_values(1e-2, 5.0, False))
    rows = trial_rows(store, "t1")
    assert [r["trial"] for r in rows] == [0, 2]  # trial 1 never finished
    assert rows[1] | {"seconds": 0} == {
        "trial": 2, "step_size": 1e-3, "localization": 10.0, "nbeta": 30.0,
        "objective": -0.5, "passed": True, "llc_mean": 4.0, "llc_stderr": None,
        "failed": "", "seconds": 0, "stages": 3}
    assert rows[0]["failed"] == "t/precision"
    set_best(store, "t1", {"step_size": 1e-3}, {"trials": 2})
    attrs = tuning_attrs(store, "t1")
    assert attrs["best"] == {"step_size": 1e-3} and attrs["kind"] == "dln"
    ds = store.read("tuning/t1")
    assert ds["loss"].dims == ("trial", "target", "run", "chain", "draw")
    assert list(ds["run"].values) == list(RUNS)


def test_an_unknown_tune_names_the_known_ones(tmp_path):
    store = open_store(str(tmp_path / "s"))
    create_tuning(store, "known", 1, ["t"], chains=1, draws=2, attrs={})
    with pytest.raises(UnknownGroupError, match="has no tune 'other'; it has: known"):
        tuning_attrs(store, "other")
