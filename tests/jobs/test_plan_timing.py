"""The time estimate of ``rllc sweep plan`` (``rllc.jobs.plan_timing``): a few SGLD steps
of each work unit timed on the tiny run."""

from __future__ import annotations

import pytest

from rllc.jobs.plan_timing import Timing, local_workers, plan, time_plan
from rllc.jobs.spec import parse_spec
from rllc.jobs.sweep_plan import resolve


def test_plan_adds_a_time_estimate_to_the_summary(make_spec, tmp_path):
    spec = parse_spec(make_spec(str(tmp_path / "store"), components=["0:*", "1:1"]))
    pure = resolve(spec).summary()
    out = plan(spec)
    assert {k: v for k, v in out.items() if k in pure and k != "estimated_seconds"} == {
        k: v for k, v in pure.items() if k != "estimated_seconds"}
    assert 0 < out["estimated_seconds"] < 600 and out["seconds_per_step"] > 0
    assert 1 <= out["workers"] <= 2  # resources.max_workers: 2
    assert plan(spec, timing=False) == pure


def test_time_plan_times_each_unit_of_the_first_group(make_spec):
    """heads 0:0, 0:1 batched (one unit) and 1:1 alone: two units per (checkpoint,
    dataset, seed); the estimate is load + groups × total steps × their sum, ÷ workers."""
    p = resolve(parse_spec(make_spec("s", components=["0:*", "1:1"])))
    t = time_plan(p, steps=2)
    assert len(t.unit_step_seconds) == 2 and all(s > 0 for s in t.unit_step_seconds)
    assert t.step_seconds == pytest.approx(sum(t.unit_step_seconds)) and t.load_seconds > 0
    assert Timing((1.0, 2.0), 0.5).step_seconds == 3.0
    assert local_workers(p) <= min(len(p.grid.checkpoints), 2)
