"""The estimator against exact learning coefficients of deep linear networks.

Each configuration is held to its own measured offset: with the default sampler
(``DLN_SAMPLER``: 16 chains × 800 kept draws, n = 10⁶, nβ = 1000, seed 0) λ̂ sits a
reproducible distance from the exact λ (``CASES``: λ̂ ± s.e. as measured, and the bias
λ̂ − λ), from −5.6% to +2.9%. A run must land within 4 of its own standard errors of
λ + bias. That bound is 2–6% of λ for all but (9, 2, 4), r = 0 (8.6%: the smallest λ with
the fewest effective draws), so a regression of a few percent fails, where a flat 10% bound
let −5.6% + 5% through. Every documented bias stays within the 10% acceptance bar
(``test_documented_biases_stay_within_the_acceptance_bar``).

What is explained of the biases: (m − 1)/log nβ ≈ 0.14, the leading finite-nβ correction
for multiplicity m = 2, is a part of the −0.35…−0.67 of the three m = 2 configurations;
the case-1 configurations of multiplicity 1 sit low too (down to −0.45), cases 2–4 lie
within −0.05…+0.25 and the deeper network at −0.28; none of that it explains. The table
is a measurement, not theory.

The runs are seeded, so the same code reproduces the table to float noise. A change that
only reshuffles the random numbers moves λ̂ by about √2 s.e.: 4 s.e. then fails one
configuration with probability ≈ 0.5% (≈ 7% that one of the 16 does). If that happens
after a change meant to be neutral, re-measure (``rllc estimate dln --widths … --true-rank
… --json``, the default sampler) and update ``CASES``, the README table and
tests/cli/test_estimate_cli.py's row for (4, 3, 8), r = 1.
"""

import pytest
import torch

from rllc.estimators.dln import DLN_SAMPLER, DLNProblem, estimate_dln, fit_student, make_data

#: Aoyagi's four cases and true ranks r ∈ {0, 1, 2}, three of multiplicity 2, with λ ≥ 3
#: (the offsets are absolute: a small λ would turn them into large relative errors).
#: (widths, r, exact λ, case, measured λ̂, its s.e.) with ``DLN_SAMPLER``; bias = λ̂ − λ.
#:
#: | widths  | r | case          | λ    | λ̂ ± s.e.     | bias   | bias  | 4 s.e. |
#: |---------|---|---------------|------|--------------|--------|-------|--------|
#: | 5,4,5   | 2 | 1 even        | 10.5 | 10.459±0.079 | −0.041 | −0.4% | 3.0%   |
#: | 5,4,5   | 0 | 1 even        | 8.0  | 7.554±0.089  | −0.446 | −5.6% | 4.4%   |
#: | 4,4,4   | 2 | 1 even        | 7.5  | 7.392±0.061  | −0.108 | −1.4% | 3.3%   |
#: | 5,4,5   | 1 | 1 odd (m = 2) | 9.5  | 9.153±0.086  | −0.347 | −3.7% | 3.6%   |
#: | 4,4,4   | 1 | 1 odd (m = 2) | 7.0  | 6.650±0.061  | −0.350 | −5.0% | 3.5%   |
#: | 6,5,6   | 0 | 1 odd (m = 2) | 12.0 | 11.335±0.106 | −0.665 | −5.5% | 3.5%   |
#: | 4,3,8   | 1 | 2             | 8.5  | 8.746±0.067  | +0.246 | +2.9% | 3.1%   |
#: | 3,2,8   | 0 | 2             | 3.0  | 3.022±0.044  | +0.022 | +0.7% | 5.9%   |
#: | 4,3,9   | 2 | 2             | 12.0 | 12.093±0.061 | +0.093 | +0.8% | 2.0%   |
#: | 9,2,4   | 0 | 3             | 4.0  | 4.056±0.086  | +0.056 | +1.4% | 8.6%   |
#: | 8,3,4   | 2 | 3             | 11.0 | 11.131±0.072 | +0.131 | +1.2% | 2.6%   |
#: | 8,3,4   | 1 | 3             | 8.5  | 8.606±0.067  | +0.106 | +1.3% | 3.2%   |
#: | 3,8,4   | 2 | 4             | 6.0  | 6.114±0.031  | +0.114 | +1.9% | 2.1%   |
#: | 3,8,4   | 0 | 4             | 6.0  | 5.954±0.050  | −0.046 | −0.8% | 3.3%   |
#: | 2,6,3   | 1 | 4             | 3.0  | 3.008±0.025  | +0.008 | +0.3% | 3.4%   |
#: | 4,3,3,4 | 1 | Aoyagi (deep) | 5.5  | 5.222±0.068  | −0.278 | −5.1% | 5.0%   |
CASES = [
    ((5, 4, 5), 2, 10.5, "case 1, even", 10.459, 0.079),
    ((5, 4, 5), 0, 8.0, "case 1, even", 7.554, 0.089),
    ((4, 4, 4), 2, 7.5, "case 1, even", 7.392, 0.061),
    ((5, 4, 5), 1, 9.5, "case 1, odd", 9.153, 0.086),  # multiplicity 2
    ((4, 4, 4), 1, 7.0, "case 1, odd", 6.650, 0.061),  # multiplicity 2
    ((6, 5, 6), 0, 12.0, "case 1, odd", 11.335, 0.106),  # multiplicity 2
    ((4, 3, 8), 1, 8.5, "case 2", 8.746, 0.067),
    ((3, 2, 8), 0, 3.0, "case 2", 3.022, 0.044),
    ((4, 3, 9), 2, 12.0, "case 2", 12.093, 0.061),
    ((9, 2, 4), 0, 4.0, "case 3", 4.056, 0.086),
    ((8, 3, 4), 2, 11.0, "case 3", 11.131, 0.072),
    ((8, 3, 4), 1, 8.5, "case 3", 8.606, 0.067),
    ((3, 8, 4), 2, 6.0, "case 4", 6.114, 0.031),
    ((3, 8, 4), 0, 6.0, "case 4", 5.954, 0.050),
    ((2, 6, 3), 1, 3.0, "case 4", 3.008, 0.025),
    ((4, 3, 3, 4), 1, 5.5, "Aoyagi", 5.222, 0.068),  # a deeper network
]
IDS = [f"{','.join(map(str, w))}-r{r}" for w, r, *_ in CASES]


def test_student_sits_at_a_minimum():
    problem = DLNProblem(widths=(4, 3, 8), true_rank=1, samples=20_000)
    _, x, y = make_data(problem)
    student = fit_student(problem, x, y)
    loss = 0.5 * (student(x) - y).square().sum(-1).mean()
    grads = torch.autograd.grad(loss, list(student.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-8


def test_cases_table_matches_the_oracle():
    for widths, r, llc, case, *_ in CASES:
        exact = DLNProblem(widths=widths, true_rank=r).exact
        assert exact.llc == pytest.approx(llc, rel=1e-12)
        assert exact.case.startswith(case)
        assert (exact.multiplicity == 2) == (case == "case 1, odd")


def test_documented_biases_stay_within_the_acceptance_bar():
    """A re-measured table must not absorb a regression: every bias stays under 10% of λ
    (today's worst is −5.6%), and 4 s.e. under 9% of λ (today's widest is 8.6%)."""
    for widths, r, llc, _, measured, se in CASES:
        assert abs(measured - llc) < 0.10 * llc, (widths, r)
        assert 4 * se < 0.09 * llc, (widths, r)


@pytest.mark.slow
@pytest.mark.parametrize(("widths", "r", "llc", "case", "measured", "se"), CASES, ids=IDS)
def test_llc_within_four_standard_errors_of_its_measured_bias(widths, r, llc, case,
                                                             measured, se):
    out = estimate_dln(DLNProblem(widths=widths, true_rank=r), DLN_SAMPLER)
    assert out["true_llc"] == pytest.approx(llc, rel=1e-12)
    assert out["diverged_chains"] == 0
    bias = measured - llc
    assert abs(out["llc_mean"] - (llc + bias)) <= 4 * out["llc_stderr"], (out, bias)
