"""Stage boundaries (``rllc.analysis.stages``) of synthetic curves with known critical
points and plateaus."""

from __future__ import annotations

import numpy as np

from rllc.analysis import Boundary, align, log_steps, stage_boundaries

STEPS = np.unique(np.concatenate([[0], np.geomspace(1, 50_000, 60).astype(int)]))
X = log_steps(STEPS)


def test_a_peak_is_a_maximum_at_its_step():
    llc = np.exp(-((X - np.log10(6_501)) ** 2) / (2 * 0.3**2))  # peak at step 6,500
    found = stage_boundaries(STEPS, llc)
    maxima = [b for b in found if b.kind == "maximum"]
    assert len(maxima) == 1
    assert abs(maxima[0].x - np.log10(6_501)) < 0.05
    assert not [b for b in found if b.kind == "minimum"]


def test_a_dip_is_a_minimum_and_noise_on_a_slope_is_not():
    rng = np.random.default_rng(0)
    curve = X - 1.5 * np.exp(-((X - 3) ** 2) / (2 * 0.2**2)) + rng.normal(0, 0.003, X.size)
    minima = [b for b in stage_boundaries(STEPS, curve) if b.kind == "minimum"]
    assert len(minima) == 1 and abs(minima[0].x - 3) < 0.1


def test_a_loss_plateau_has_start_and_end_boundaries():
    # falls from 10 to 100 steps, flat until 1,000, falls again until 10,000, flat after
    loss = 5 - np.clip(X - 1, 0, 1) - np.clip(X - 3, 0, 1)
    found = stage_boundaries(STEPS, loss)
    kinds = [(b.kind, round(b.x, 1)) for b in found]
    starts = [b.x for b in found if b.kind == "plateau_start"]
    ends = [b.x for b in found if b.kind == "plateau_end"]
    assert any(abs(x - 2) < 0.15 for x in starts), kinds  # smoothing blurs corners
    assert any(abs(x - 3) < 0.15 for x in ends), kinds
    assert any(abs(x - 1) < 0.15 for x in ends), kinds  # the initial flat stretch ends
    assert not any(abs(x - X[0]) < 0.05 for x in starts)  # no boundary at step 0
    assert all(b.kind.startswith("plateau") for b in found)


def test_too_few_points_or_a_flat_curve_give_no_boundaries():
    assert stage_boundaries([0, 1], [1.0, 2.0]) == []
    assert stage_boundaries(STEPS, np.ones(STEPS.size)) == []
    assert stage_boundaries([0, 1, 4], [np.nan, np.nan, 1.0]) == []
    # three points, unsmoothed: a peak at the middle one
    assert [b.kind for b in stage_boundaries([0, 1, 4], [0.0, 2.0, 1.0])
            if b.kind == "maximum"] == ["maximum"]


def test_align_matches_within_tolerance():
    a = [Boundary(99.0, "maximum"), Boundary(9_999.0, "minimum")]
    b = [Boundary(150.0, "plateau_end"), Boundary(100_000.0, "plateau_start")]
    out = align(a, b, tolerance_decades=0.25)
    assert out.share == 0.5 and out.pairs == [(a[0], b[0])] and out.unmatched == [a[1]]
    assert np.isnan(align([], b).share)
    assert align(a, []).share == 0.0
