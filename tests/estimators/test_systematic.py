"""The step-size systematic from runs at ε and ε/2."""

import math

import numpy as np
import pytest

from rllc.estimators import SGLDConfig, summarize
from rllc.estimators.systematic import StepRefinement, halved_step, refine_step


def test_halved_step_keeps_the_langevin_time_per_draw():
    cfg = SGLDConfig(step_size=4e-5, steps_per_draw=10, draws=300)
    fine = halved_step(cfg)
    assert fine.step_size == 2e-5 and fine.steps_per_draw == 20 and fine.draws == 300
    assert fine.step_size * fine.steps_per_draw == cfg.step_size * cfg.steps_per_draw


def test_refinement_reports_the_fine_run_and_the_difference():
    rng = np.random.default_rng(0)
    seen = []

    def estimate(cfg: SGLDConfig):
        seen.append(cfg.step_size)
        bias = 1e4 * cfg.step_size  # λ̂(ε) = 10 + c·ε
        return summarize(10 + bias + 0.01 * rng.normal(size=(4, 400)), burnin=0,
                         independent=True)

    ref = refine_step(estimate, SGLDConfig(step_size=1e-4))
    assert seen == [1e-4, 5e-5]
    assert isinstance(ref, StepRefinement)
    assert ref.llc_mean == ref.fine.llc_mean == pytest.approx(10.5, abs=0.01)
    assert ref.llc_systematic == pytest.approx(0.5, abs=0.01)  # = the bias of λ̂(ε/2)
    assert ref.llc_richardson == pytest.approx(10.0, abs=0.02)  # bias removed to first order
    assert ref.llc_total == pytest.approx(math.hypot(ref.llc_stderr, ref.llc_systematic))
    assert ref.llc_richardson_stderr == pytest.approx(
        math.hypot(2 * ref.fine.llc_stderr, ref.coarse.llc_stderr))
    assert set(ref.as_dict()) >= {"llc_mean", "llc_stderr", "llc_systematic", "llc_total"}
