"""The demo's pure helpers: which checkpoints, which heads to tune, the stage clock."""

from rllc.jobs.demo import (
    QUICK,
    STAGE_SHARES,
    STAGES,
    DemoConfig,
    StageClock,
    log_spaced,
    spread,
    tune_heads,
)


def test_log_spaced_keeps_the_last_step_and_skips_zero():
    steps = [0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000]
    picked = log_spaced(steps, 5)
    assert picked[-1] == 1000 and 0 not in picked and len(picked) == 5
    assert picked == sorted(picked)
    assert log_spaced([0, 3, 7], 5) == [3, 7]


def test_spread_takes_the_last_and_evenly_by_index():
    assert spread(list(range(1, 17)), 3) == [1, 8, 16] or spread(list(range(1, 17)), 3) == [1, 9, 16]
    assert spread([5, 6], 3) == [5, 6]


def test_tune_heads_picks_each_layers_specialist():
    scores = [{"head": "0:0", "prev_token": 0.1, "induction": 0.9},
              {"head": "0:1", "prev_token": 0.8, "induction": 0.0},
              {"head": "1:0", "prev_token": 0.9, "induction": 0.2},
              {"head": "1:1", "prev_token": 0.1, "induction": 0.7}]
    assert tune_heads(scores) == {0: "0:1", 1: "1:1"}


def test_stage_clock_keeps_reused_times_and_prints_an_eta():
    lines = []
    clock = StageClock(60.0, {"train": 12.0}, True, lines.append)
    with clock.stage("train") as state:
        state["reused"] = True
    with clock.stage("heads"):
        pass
    assert clock.timings["train"] == 12.0 and clock.reused == ["train"]
    assert "heads" in clock.timings and clock.total() >= 12.0
    assert any("ETA" in line for line in lines)
    assert set(STAGE_SHARES) == set(STAGES) and abs(sum(STAGE_SHARES.values()) - 1) < 1e-9


def test_quick_is_a_smaller_config():
    assert QUICK.train.model.n_heads < DemoConfig().train.model.n_heads
    assert QUICK.budget_seconds == 300 and DemoConfig().budget_seconds == 2700


def test_presentation_settings_do_not_block_a_resume():
    from rllc.analysis import ClusterMethod
    from rllc.jobs.demo import computed_settings

    changed = QUICK.model_copy(update={"workers": 3, "clustering": ClusterMethod.DTW})
    assert computed_settings(changed) == computed_settings(QUICK)
    assert computed_settings(QUICK.model_copy(update={"checkpoints": 5})) != computed_settings(QUICK)
