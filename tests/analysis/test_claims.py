"""The claims (``rllc.analysis.claims``): each on synthetic data where the answer is known,
and the one verdict rule, boundary values included."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rllc.analysis import (
    Boundary,
    Claim,
    clusters_match_classes,
    induction_rises_with_score,
    induction_specialises,
    llc_stages_match_loss,
    log_steps,
    prev_token_stand_apart,
    verdict,
    wrllc_separates_best,
)
from rllc.analysis import claims as C

STEPS = np.unique(np.geomspace(1, 50_000, 30).astype(int))
X = log_steps(STEPS)


def rise(centre_decade: float, n: int, rng, noise: float = 0.01) -> np.ndarray:
    """``n`` curves rising at 10**centre_decade steps, sizes 1–10, a little noise."""
    base = 1 / (1 + np.exp(-(X - centre_decade) * 6))
    return rng.uniform(1, 10, (n, 1)) * base + rng.normal(0, noise, (n, X.size))


@pytest.mark.parametrize("higher", [True, False])
def test_verdict_at_and_around_each_threshold(higher):
    holds_at, partly_at = (0.5, 0.2) if higher else (0.2, 0.5)
    eps = 1e-9 if higher else -1e-9
    assert verdict(holds_at, holds_at, partly_at, higher) == "holds"
    assert verdict(holds_at - eps, holds_at, partly_at, higher) == "partly"
    assert verdict(partly_at, holds_at, partly_at, higher) == "partly"
    assert verdict(partly_at - eps, holds_at, partly_at, higher) == "does not hold"
    assert verdict(math.nan, holds_at, partly_at, higher) == "does not hold"
    assert verdict(math.inf if higher else -math.inf, holds_at, partly_at,
                   higher) == "does not hold"


def every_claim() -> list[Claim]:
    """Each claim function once, on data where it should hold."""
    rng = np.random.default_rng(0)
    curves = np.vstack([rise(1.5, 3, rng), rise(3.5, 3, rng)])
    classes = ["previous-token"] * 3 + ["induction"] * 3
    score = np.vstack([rng.uniform(0, 0.1, (3, X.size)), rise(3.5, 3, rng, 0) / 10])
    ratio = np.array([[1.0, 1.0], [1.1, 0.9], [0.9, 1.0], [1.0, 2.0], [0.8, 2.5], [1.0, 1.8]])
    baselines = {"hessian_trace": rng.normal(size=(6, X.size))}
    return [
        clusters_match_classes(curves, classes),
        induction_rises_with_score(curves, score, classes),
        prev_token_stand_apart(curves, classes),
        induction_specialises(ratio, ["code", "induction"], classes),
        llc_stages_match_loss([Boundary(99, "maximum")], [Boundary(120, "plateau_end")]),
        wrllc_separates_best(curves, baselines, classes),
    ]


@pytest.mark.parametrize("claim", every_claim(), ids=lambda c: c.key)
def test_each_claim_holds_where_it_should_and_its_verdict_follows_the_rule(claim):
    assert claim.verdict == verdict(claim.value, claim.holds_at, claim.partly_at,
                                    claim.higher_is_better)
    assert claim.verdict == "holds", claim
    assert claim.text and claim.measure and claim.thresholds.startswith("holds ")
    d = claim.as_dict()
    assert d["verdict"] == claim.verdict and d["key"] == claim.key
    # the same claim at each threshold gets the verdict the rule gives
    for value, expected in ((claim.holds_at, "holds"), (claim.partly_at, "partly"),
                            (math.nan, "does not hold")):
        moved = Claim(claim.key, claim.text, claim.measure, value, claim.holds_at,
                      claim.partly_at, claim.higher_is_better)
        assert moved.verdict == expected


def test_clusters_that_ignore_classes_do_not_hold():
    rng = np.random.default_rng(1)
    curves = np.vstack([rise(1.5, 4, rng), rise(3.5, 4, rng)])
    mixed = ["a", "b"] * 4  # classes unrelated to the two families
    claim = clusters_match_classes(curves, mixed)
    assert claim.value < C.CLUSTER_ARI_PARTLY and claim.verdict == "does not hold"


def test_induction_claims_without_an_induction_head_are_nan_with_a_reason():
    rng = np.random.default_rng(2)
    curves = rise(2, 4, rng)
    classes = ["multigram"] * 4
    for claim in (induction_rises_with_score(curves, curves, classes),
                  induction_specialises(np.ones((4, 1)), ["induction"], classes)):
        assert math.isnan(claim.value) and claim.verdict == "does not hold"
        assert "no head is classed induction" in claim.note
    assert "NaN" in induction_rises_with_score(curves, curves, classes).measure


def test_anticorrelated_induction_score_does_not_hold():
    rng = np.random.default_rng(3)
    curves = rise(2.5, 2, rng)
    claim = induction_rises_with_score(curves, -curves, ["induction", "induction"])
    assert claim.value == pytest.approx(-1.0) and claim.verdict == "does not hold"


def test_prev_token_groups_empty_or_alike():
    rng = np.random.default_rng(4)
    same = rise(2, 4, rng)
    assert math.isnan(prev_token_stand_apart(same, ["multigram"] * 4).value)
    assert math.isnan(prev_token_stand_apart(same[:2], ["previous-token", "x"]).value)
    alike = prev_token_stand_apart(same, ["previous-token", "x", "previous-token", "x"])
    assert alike.value < C.PREV_TOKEN_RATIO_PARTLY + 0.5 and alike.verdict != "holds"


def test_stage_claim_share_and_empty_lists():
    llc = [Boundary(99, "maximum"), Boundary(9_999, "minimum")]
    loss = [Boundary(110, "plateau_start")]
    assert llc_stages_match_loss(llc, loss).value == 0.5
    assert llc_stages_match_loss(llc, loss).verdict == "holds"
    assert math.isnan(llc_stages_match_loss([], loss).value)
    assert llc_stages_match_loss(llc, []).note == "the loss curve shows no boundary"


def test_a_baseline_as_good_as_the_wrllc_is_partly_at_best():
    rng = np.random.default_rng(5)
    curves = np.vstack([rise(1.5, 3, rng), rise(3.5, 3, rng)])
    classes = ["a"] * 3 + ["b"] * 3
    claim = wrllc_separates_best(curves, {"copy": curves * 2, "nan": np.full((6, X.size),
                                                                             np.nan)}, classes)
    assert claim.value == 0.0 and claim.verdict == "partly"
    assert "copy" in claim.measure
    assert math.isnan(wrllc_separates_best(curves, {}, classes).value)
