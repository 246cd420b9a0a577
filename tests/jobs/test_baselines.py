"""The baselines as a job (``rllc.jobs.baselines``, ``rllc.jobs.metrics``): the result's
keys and columns on the tiny trained checkpoint, pooling, options and metric names."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from rllc.jobs.baselines import compute_baselines, pool
from rllc.jobs.metrics import (
    BASELINES,
    COLUMNS,
    BaselineOptions,
    Metric,
    flatten,
    metric_columns,
    parse_metrics,
)
from rllc.jobs.session import CheckpointSession
from rllc.jobs.spec import DataOptions

OPTIONS = BaselineOptions(sequences=3, probes=4, rank_probes=2, lanczos_steps=6)


@pytest.fixture(scope="module")
def session(tiny_run):
    return CheckpointSession(f"{tiny_run}/ckpt-0000004", DataOptions(n_sequences=8),
                             device="cpu")


def test_every_baseline_of_a_layer_and_a_non_head(session):
    found = session.baselines(["1:0", "1:1", "embed"], "dyck", BASELINES, OPTIONS)
    for comp in ("1:0", "1:1", "embed"):
        r = found[comp]
        assert r["num_weights"] > 0 and r["sequences"] == 3
        assert set(r["seconds"]) >= {"hessian_trace", "fisher_trace", "hessian_rank"}
        assert r["fisher_trace"] > 0 and r["empirical_fisher_trace"] > 0
        assert r["fisher_tokens"] == 3 * (session.n_ctx - 1)
        assert 0 <= r["hessian_rank"] <= r["num_weights"] + 4 * r["hessian_rank_stderr"]
        assert len(r["top_eigenvalues"]) == OPTIONS.top_k
        cols = flatten(r)
        assert cols["hessian_top_eigenvalue"] == r["top_eigenvalues"][0]
    assert found["embed"]["ablation"] is None  # ablations are of one head's output
    assert math.isnan(flatten(found["embed"])["ablation_zero"])
    assert set(found["1:0"]["ablation"]) == {c.removeprefix("ablation_")
                                              for c in COLUMNS[Metric.ABLATION]}
    assert set(flatten(found["1:0"])) == {c for m in BASELINES for c in COLUMNS[m]}


def test_small_blocks_are_exact_and_the_seed_reproduces(session):
    small = OPTIONS.model_copy(update={"exact_max_dim": 10**6})
    a = compute_baselines(session.model, session.dataset("dyck"), ["0:1"],
                          [Metric.HESSIAN_TRACE], OPTIONS, seed=5)["0:1"]
    b = compute_baselines(session.model, session.dataset("dyck"), ["0:1"],
                          [Metric.HESSIAN_TRACE], OPTIONS, seed=5)["0:1"]
    assert a["hessian_trace"] == b["hessian_trace"] and not a["hessian_trace_exact"]
    if a["num_weights"] <= 1200:  # the exact Hessian of a tiny head
        exact = compute_baselines(session.model, session.dataset("dyck"), ["0:1"],
                                  [Metric.HESSIAN_TRACE], small)["0:1"]
        assert exact["hessian_trace_exact"] and exact["hessian_trace_stderr"] == 0
        assert abs(a["hessian_trace"] - exact["hessian_trace"]) <= 4 * a["hessian_trace_stderr"]


def test_pool_rebuilds_the_mean_and_standard_error_over_all_items():
    rng = np.random.default_rng(0)
    parts = [rng.normal(size=n) + i for i, n in enumerate((5, 9, 2))]
    summary = [(len(p), p.mean(), p.std(ddof=1) / np.sqrt(len(p))) for p in parts]
    every = np.concatenate(parts)
    mean, se = pool(summary)
    assert mean == pytest.approx(every.mean())
    assert se == pytest.approx(every.std(ddof=1) / np.sqrt(every.size))


def test_metric_names_and_options_are_validated():
    assert parse_metrics(["llc", "ablation", "llc"]) == [Metric.LLC, Metric.ABLATION]
    with pytest.raises(ValueError, match="unknown metric 'hessian'; known metrics: llc"):
        parse_metrics(["hessian"])
    with pytest.raises(ValueError, match="metrics is empty"):
        parse_metrics([])
    for bad in (0.0, 1.0, -1e-3):
        with pytest.raises(ValidationError, match="rank_tol must lie in"):
            BaselineOptions(rank_tol=bad)
    with pytest.raises(ValidationError):
        BaselineOptions(sequences=1)
    assert metric_columns([Metric.LLC, Metric.HESSIAN_TRACE]) == {
        "hessian_trace": ["hessian_trace", "hessian_trace_stderr"]}


def test_too_few_sequences_is_an_error(session):
    with pytest.raises(ValueError, match="at least 2 sequences"):
        compute_baselines(session.model, session.dataset("dyck")[:1], ["0:0"],
                          [Metric.ABLATION], OPTIONS)
