"""Synthetic generators: deterministic, well-formed, no fixed period."""

from __future__ import annotations

import numpy as np
import pytest

from rllc.data.synthetic import (
    dyck_sequences,
    induction_sequences,
    matching_brackets,
    ngram_sequences,
)

PAIRS = [(10, 11), (12, 13), (14, 15)]


def test_induction_copies_a_span_at_varying_offsets():
    x, spans = induction_sequences(200, 64, 100, seed=3, min_span=4, return_spans=True)
    assert x.shape == (200, 64) and x.min() >= 1 and x.max() < 100
    for row, (length, s, d) in zip(x, spans, strict=True):
        assert 4 <= length <= 32 and s + length <= d and d + length <= 64
        assert (row[d : d + length] == row[s : s + length]).all()
    assert len({int(d - s) for _, s, d in spans}) > 20  # no fixed period
    assert len({int(length) for length, _, _ in spans}) > 20
    again = induction_sequences(200, 64, 100, seed=3, min_span=4)
    assert np.array_equal(x, again)
    assert not np.array_equal(x, induction_sequences(200, 64, 100, seed=4, min_span=4))


def test_induction_rejects_impossible_spans():
    with pytest.raises(ValueError, match="min_span"):
        induction_sequences(2, 8, 50, seed=0, min_span=5)


def test_dyck_is_a_prefix_of_a_well_matched_word():
    x = dyck_sequences(50, 40, PAIRS, seed=1, max_depth=4)
    match = matching_brackets(x, PAIRS)
    closes = np.isin(x, [c for _, c in PAIRS])
    assert closes.any() and (match[closes] >= 0).all()  # every closer has its opener
    for row, m in zip(x, match, strict=True):
        depth = np.cumsum(np.where(np.isin(row, [o for o, _ in PAIRS]), 1, -1))
        assert depth.min() >= 0 and depth.max() <= 4
        for t in np.nonzero(m >= 0)[0]:
            assert PAIRS[[o for o, _ in PAIRS].index(row[m[t]])][1] == row[t]
    assert np.array_equal(x, dyck_sequences(50, 40, PAIRS, seed=1, max_depth=4))


def test_ngram_is_sparse_and_deterministic():
    x = ngram_sequences(100, 50, 200, seed=2, order=3, branching=4)
    assert x.shape == (100, 50) and x.min() >= 1 and x.max() < 200
    assert np.array_equal(x, ngram_sequences(100, 50, 200, seed=2, order=3, branching=4))
    succ: dict[tuple[int, int], set[int]] = {}
    for row in x:
        for a, b, c in zip(row, row[1:], row[2:], strict=False):
            succ.setdefault((int(a), int(b)), set()).add(int(c))
    assert max(len(v) for v in succ.values()) <= 2 * 4  # ≤ (order−1)·branching successors
