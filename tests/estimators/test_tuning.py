"""The tune objective: checks from the traces alone, and its ranking."""

import math

import numpy as np
import pytest

from rllc.estimators import SGLDConfig
from rllc.estimators.dln import (
    DLNProblem,
    fit_student,
    make_data,
    sample_dln,
    sufficient_statistics,
)
from rllc.estimators.tuning import (
    DIVERGED_PENALTY,
    Check,
    TuneCriteria,
    Verdict,
    judge_agreement,
    judge_run,
)

CONFIG = SGLDConfig(step_size=4e-5, localization=1.0, nbeta=1000.0, chains=8, draws=400,
                    steps_per_draw=10, batch_size=1, burnin="auto")


@pytest.fixture(scope="module")
def dln():
    problem = DLNProblem(widths=(3, 2, 8), true_rank=0)
    _, x, y = make_data(problem)
    student, stats = fit_student(problem, x, y), sufficient_statistics(x, y)
    return lambda cfg: sample_dln(student, stats, cfg, num_samples=problem.samples)


def test_a_good_setting_passes_its_own_checks(dln):
    verdict = Verdict()
    est = judge_run(dln(CONFIG), TuneCriteria(se_rel=0.1), verdict)  # a short run
    assert est is not None and verdict.passed, verdict.as_dict()
    names = {c.name for c in verdict.checks}
    assert names == {"diverged", "acceptance", "stationarity", "positive", "precision"}


def test_a_diverging_setting_gets_the_diverged_penalty(dln):
    verdict = Verdict()
    assert judge_run(dln(CONFIG.model_copy(update={"step_size": 1.0})), TuneCriteria(),
                     verdict) is None
    assert verdict.all_diverged and verdict.failed() == ["diverged"]
    assert verdict.objective(1.0, (1e-6, 1.0)) == DIVERGED_PENALTY


def test_too_large_a_step_fails_the_acceptance_band(dln):
    verdict = Verdict()
    judge_run(dln(CONFIG.model_copy(update={"step_size": 1e-3})), TuneCriteria(), verdict)
    assert "acceptance" in verdict.failed(), verdict.as_dict()


def test_a_noisy_run_cannot_pass_by_being_noisy(dln):
    """Two 20-draw runs agree within 2 SE because their SE is large: precision fails."""
    short = CONFIG.model_copy(update={"draws": 20, "chains": 2})
    verdict = Verdict()
    a = judge_run(dln(short), TuneCriteria(se_rel=0.001, se_abs=0.0), verdict)
    assert "precision" in verdict.failed()
    assert a is not None


def test_agreement_is_an_equivalence_margin():
    crit = TuneCriteria(refine_rel=0.03)
    from rllc.estimators.llc import summarize

    rng = np.random.default_rng(0)
    a = summarize(10 + 0.01 * rng.standard_normal((4, 200)), burnin=0, independent=True)
    b = summarize(10.2 + 0.01 * rng.standard_normal((4, 200)), burnin=0, independent=True)
    c = summarize(10.5 + 0.01 * rng.standard_normal((4, 200)), burnin=0, independent=True)
    v = Verdict()
    judge_agreement("step", a, b, crit, v)  # 0.2 < 3% of 10.2: equivalent though ≫ 2 SE
    judge_agreement("step", a, c, crit, v)  # 0.5 > 3% of 10.5
    assert [x.passed for x in v.checks] == [True, False]


def test_objective_ranks_passing_by_step_size_and_failing_by_penalty():
    ok = Verdict(checks=[Check("a", 0.5, 1.0)])
    one = Verdict(checks=[Check("a", 1.1, 1.0)])
    two = Verdict(checks=[Check("a", 1.1, 1.0), Check("b", 3.0, 1.0)])
    rng = (1e-6, 1e-2)
    assert ok.objective(1e-2, rng) == pytest.approx(-1.0)
    assert ok.objective(1e-6, rng) == pytest.approx(0.0)
    assert ok.objective(1e-3, rng) < ok.objective(1e-4, rng) < 0
    assert 1 <= one.objective(1e-2, rng) < two.objective(1e-2, rng) < DIVERGED_PENALTY
    assert math.isclose(one.penalty, 1.01)


def test_failing_early_never_ranks_above_failing_a_later_stage():
    """A trial stops at its first failed check: a near miss of the first run's stationarity
    (2 stages left) ranks below a wide miss of the second run's step check (1 left)."""
    rng = (1e-6, 1e-2)
    early = Verdict(checks=[Check("stationarity", 1.01, 1.0)])
    late = Verdict(checks=[Check("stationarity", 0.5, 1.0), Check("step", 10.0, 1.0)])
    assert late.objective(1e-3, rng, stages_left=1) < early.objective(1e-3, rng, stages_left=2)
    assert early.objective(1e-3, rng, stages_left=2) == pytest.approx(early.penalty + 2)
    passing = Verdict(checks=[Check("a", 0.5, 1.0)])
    assert passing.objective(1e-3, rng, stages_left=0) < 0


def test_bad_criteria_are_refused():
    with pytest.raises(ValueError, match="acceptance"):
        TuneCriteria(acceptance=(0.99, 0.9))
