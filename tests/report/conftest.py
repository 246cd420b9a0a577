"""A real small store for the report tests, built without the demo: real sweeps (wrLLC,
drLLC, baselines) on the tiny trained run (``tiny_run``), real head scores, a tune's trials
written through ``rllc.store.tuning`` and the record the demo writes
(``rllc.store.records.write_record``).

Kept to the fewest cells: 2 layers × 2 heads, checkpoints at steps 0, 1, 4, 2 chains × 10
draws, one seed; the drLLC sweep only at the last step, on two datasets.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time

import numpy as np
import pytest
import ray

from rllc.jobs.spec import parse_spec
from rllc.jobs.sweep import run_sweep
from rllc.models.checkpoint import load_checkpoint
from rllc.models.heads import head_scores
from rllc.store import open_store
from rllc.store.records import write_record
from rllc.store.tuning import RUNS, create_tuning, set_best, write_trial

SAMPLER = {"chains": 2, "draws": 10, "batch_size": 8, "nbeta": 10.0, "step_size": 1e-4,
           "localization": 100.0}
DATASETS = ["induction", "dyck"]
OPTIONS = {"sequences": 3, "probes": 4, "rank_probes": 2, "lanczos_steps": 6}
REPORT_ID = "tiny-demo"


def _spec(store: str, name: str, checkpoints: list[str], components: list[str],
          datasets: list[str], **extra) -> dict:
    return {"name": name, "checkpoints": checkpoints, "components": components,
            "datasets": datasets, "seeds": [0], "sampler": SAMPLER, "store": store,
            "data": {"n_sequences": 16}, "resources": {"max_workers": 1}} | extra


def _write_tune(store_uri: str, tune_id: str) -> dict:
    """Three finished trials of a tune over (ε, γ) and its ``best`` (the winner's ε/2)."""
    store = open_store(store_uri)
    create_tuning(store, tune_id, trials=3, targets=["ckpt:0:*:train"], chains=2, draws=4,
                  attrs={"search": {"trials": 3}})
    settings = [(1e-5, 10.0, 0.4, False), (1e-4, 100.0, -0.5, True), (1e-3, 1000.0, 2.0, False)]
    for i, (eps, gamma, objective, passed) in enumerate(settings):
        llc = np.full((1, len(RUNS)), np.nan)
        llc[0, 0] = 3.0 + i
        write_trial(store, tune_id, i, {
            "step_size": eps, "localization": gamma, "nbeta": 10.0, "objective": objective,
            "passed": passed, "seconds": 1.5, "stages": 3.0,
            "verdict": json.dumps({"failed": [] if passed else ["se_rel"]}),
            "llc_mean": llc, "llc_stderr": llc / 10})
    best = SAMPLER | {"step_size": 5e-5, "localization": 100.0}
    set_best(store, tune_id, best, {"trials": 3})
    return best


@pytest.fixture(scope="session")
def report_store(tiny_run, tmp_path_factory) -> str:
    """The store URI, with sweeps ``wrllc``, ``drllc``, ``baselines``, tune ``tune-0`` and
    the record ``reports/tiny-demo``."""
    store = str(tmp_path_factory.mktemp("report") / "store")
    ckpts = sorted(glob.glob(os.path.join(tiny_run, "ckpt-*")))
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    timings = {}
    try:
        for name, spec in (
            ("wrllc", _spec(store, "wrllc", ckpts, ["0:*", "1:*", "all"], ["train"])),
            ("drllc", _spec(store, "drllc", ckpts[-1:], ["0:*", "1:*"], DATASETS)),
            ("baselines", _spec(store, "baselines", ckpts, ["0:*", "1:*"], ["train"],
                                metrics=["hessian_trace", "fisher_trace", "hessian_rank",
                                         "ablation"], baselines=OPTIONS)),
        ):
            start = time.perf_counter()
            report = run_sweep(parse_spec(spec), progress=False)
            assert report.cells_failed == 0
            timings[name] = round(time.perf_counter() - start, 1)
    finally:
        if started:
            ray.shutdown()

    checkpoints, heads = [], {}
    for ckpt in ckpts:
        model, tokenizer, meta = load_checkpoint(ckpt)
        step = int(meta["step"])
        checkpoints.append({"checkpoint": ckpt, "step": step,
                            "eval_loss": float(meta["eval_loss"])})
        entries = [s.as_dict() for s in head_scores(model, tokenizer, n_sequences=4)]
        # The tiny model forms no circuits; name one induction and one previous-token head
        # so that every claim is measured rather than NaN.
        forced = {"0:0": "previous-token", "1:1": "induction"}
        heads[str(step)] = [e | {"class": forced.get(e["head"], e["class"])} for e in entries]
    best = _write_tune(store, "tune-0")
    cfg = model.cfg
    write_record(open_store(store), "reports", REPORT_ID, {
        "kind": "demo", "version": 1, "quick": True, "title": "rllc demo (tiny test run)",
        "run": tiny_run,
        "model": {"n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model},
        "checkpoints": checkpoints, "heads": heads,
        "sweeps": {"wrllc": "wrllc", "drllc": "drllc", "baselines": "baselines"},
        "drllc_datasets": DATASETS,
        "tune": {"ids": {"0": "tune-0"}, "samplers": {"0:*": best, "1:*": SAMPLER}},
        "timings": {"train": 1.0, "tune": 2.0, **timings, "heads": 0.5, "total": 60.0},
        "budget_seconds": 600.0,
    })
    return store
