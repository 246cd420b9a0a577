"""Which stages a trial runs, from what the search varies (no Ray: plain functions)."""

import pytest

from rllc.jobs.spec import SpecError
from rllc.jobs.tune import n_stages, stages_of
from rllc.jobs.tune_spec import SearchSpace, parse_search


def names(searched):
    return [run for run, _ in stages_of(searched)]


def test_each_searched_parameter_adds_its_refinement_stage():
    assert names({"step_size", "localization"}) == ["base", "half_step", "half_localization"]
    assert names({"step_size", "localization", "nbeta"}) == [
        "base", "half_step", "half_localization", "double_nbeta"]
    # a pinned γ is part of the estimand: no γ/2 stage
    assert names({"step_size"}) == ["base", "half_step"]
    assert n_stages({"step_size"}) == 2 and n_stages({"step_size", "localization"}) == 3


def test_one_localization_value_pins_it():
    search = parse_search({"localization": 200})
    assert search.pinned() == {"localization": 200.0}
    assert set(search.ranges("model")) == {"step_size"}
    assert search.n_trials("model") == 24
    ranged = SearchSpace(localization=(1.0, 10.0))
    assert ranged.pinned() == {} and ranged.ranges("model")["localization"] == (1.0, 10.0)
    # a grid over ε alone: trials points on one axis
    grid = parse_search({"localization": 200, "algorithm": "grid", "trials": 6})
    assert grid.grid_points("model") == 6 and grid.n_trials("model") == 6


@pytest.mark.parametrize("value", [0, -1, float("inf")])
def test_a_pinned_localization_must_be_positive_and_finite(value):
    with pytest.raises(SpecError, match=r"search\.localization: localization needs a finite"):
        parse_search({"localization": value})


def test_the_reported_setting_halves_what_the_checks_validated():
    from rllc.estimators.dln import DLN_SAMPLER
    from rllc.jobs.tune import refined_best, trial_config

    best = refined_best(DLN_SAMPLER, {"step_size": 1e-5, "localization": 4.0}, passed=True)
    assert best.step_size == pytest.approx(5e-6) and best.localization == pytest.approx(2.0)
    assert best.steps_per_draw == 2 * DLN_SAMPLER.steps_per_draw
    # the warm-up is that of a trial at γ/2: three time constants 2/(ε_w·γ)
    assert best.warmup_steps == trial_config(DLN_SAMPLER, {"localization": 2.0}).warmup_steps
    assert best.warmup_steps == 6000
    # a pinned γ (not among the searched parameters) stays as it is
    pinned = refined_best(DLN_SAMPLER.model_copy(update={"localization": 200.0}),
                          {"step_size": 1e-5}, passed=True)
    assert pinned.localization == 200.0 and pinned.step_size == pytest.approx(5e-6)
    # a failed winner (none passed) may never have run γ/2: only ε is halved
    failed = refined_best(DLN_SAMPLER, {"step_size": 1e-5, "localization": 4.0}, passed=False)
    assert failed.localization == 4.0 and failed.step_size == pytest.approx(5e-6)
