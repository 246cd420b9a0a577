import itertools

import pytest

from rllc.estimators.oracles import dln_lc, regular_lc, rrr_lc


@pytest.mark.parametrize(
    ("mhn", "r", "llc", "mult", "case"),
    [
        ((5, 4, 5), 2, 10.5, 1, "case 1, even"),
        ((5, 4, 5), 1, 9.5, 2, "case 1, odd"),
        ((4, 3, 8), 1, 8.5, 1, "case 2"),
        ((8, 3, 4), 2, 11.0, 1, "case 3"),
        ((3, 8, 4), 0, 6.0, 1, "case 4"),
        ((3, 3, 3), 3, 4.5, 1, "case 1, even"),  # full rank square: M·H + H·N − H² over 2
    ],
)
def test_rrr_known_values(mhn, r, llc, mult, case):
    exact = rrr_lc(*mhn, r)
    assert exact.llc == pytest.approx(llc)
    assert exact.multiplicity == mult
    assert exact.case.startswith(case)


def test_deep_formula_reduces_to_rrr_for_two_layers():
    for m, h, n in itertools.product(range(1, 7), repeat=3):
        for r in range(min(m, h, n) + 1):
            assert dln_lc([m, h, n], r).llc == pytest.approx(rrr_lc(m, h, n, r).llc)


def test_rrr_never_exceeds_regular_count():
    # λ ≤ d/2 with d = MH + HN parameters
    for m, h, n in itertools.product(range(1, 6), repeat=3):
        for r in range(min(m, h, n) + 1):
            assert rrr_lc(m, h, n, r).llc <= (m * h + h * n) / 2 + 1e-12


def test_regular_and_bad_input():
    assert regular_lc(18).llc == 9
    with pytest.raises(ValueError, match="true rank"):
        rrr_lc(3, 2, 3, 3)
    with pytest.raises(ValueError):
        regular_lc(0)
