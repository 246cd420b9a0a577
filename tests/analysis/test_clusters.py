"""Curves and clusters (``rllc.analysis.curves``, ``rllc.analysis.clusters``) on synthetic
curves whose partition is known."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from rllc.analysis import adjusted_rand, cluster_curves, default_k, log_steps, normalise
from rllc.analysis.curves import fill_missing, from_log_steps

STEPS = np.unique(np.geomspace(1, 50_000, 40).astype(int))


def sigmoid_family(centre: float, scale: float, n: int, rng) -> np.ndarray:
    """``n`` noisy sigmoids in log-step rising at ``centre`` steps, each of its own size."""
    x = log_steps(STEPS)
    base = 1 / (1 + np.exp(-(x - np.log10(centre)) * 6))
    sizes = rng.uniform(0.5, 20, size=(n, 1))  # sizes differ: normalising must remove them
    return scale * sizes * base + rng.normal(0, 0.01, size=(n, x.size))


def test_normalise_scales_each_curve_and_is_nan_safe():
    curves = np.array([[1.0, 3.0, 2.0], [5.0, 5.0, 5.0], [np.nan, 2.0, 4.0],
                       [np.nan, np.nan, np.nan]])
    out = normalise(curves)
    np.testing.assert_allclose(out[0], [0, 1, 0.5])
    np.testing.assert_array_equal(out[1], [0, 0, 0])  # flat → zeros
    assert np.isnan(out[2, 0]) and out[2, 1] == 0 and out[2, 2] == 1
    np.testing.assert_array_equal(out[3], [0, 0, 0])  # all NaN → zeros
    np.testing.assert_allclose(normalise(np.array([2.0, 4.0])), [0, 1])  # one curve
    np.testing.assert_allclose(fill_missing(out)[2], [0, 0, 1])


def test_log_steps_round_trip():
    np.testing.assert_allclose(log_steps([0, 9, 99]), [0, 1, 2])
    np.testing.assert_allclose(from_log_steps(log_steps(STEPS)), STEPS)


def test_two_families_of_sigmoids_cluster_perfectly():
    rng = np.random.default_rng(0)
    curves = np.vstack([sigmoid_family(100, 1.0, 4, rng), sigmoid_family(10_000, 1.0, 5, rng)])
    classes = ["early"] * 4 + ["late"] * 5
    labels = cluster_curves(curves, default_k(classes))
    assert adjusted_rand(labels, classes) == 1.0
    assert labels.tolist() == [0] * 4 + [1] * 5  # renumbered by first appearance
    # deterministic for a seed, whatever the order of restarts
    np.testing.assert_array_equal(labels, cluster_curves(curves, 2, seed=0))


def test_default_k_and_k_capped_at_heads():
    assert default_k(["a", "a"]) == 2 and default_k(["a", "b", "c", "a"]) == 3
    labels = cluster_curves(np.array([[0.0, 1.0], [1.0, 0.0]]), k=5)
    assert sorted(labels.tolist()) == [0, 1]


def test_unknown_method_and_missing_tslearn():
    curves = np.random.default_rng(1).normal(size=(4, 6))
    with pytest.raises(ValueError, match="method must be"):
        cluster_curves(curves, 2, method="spectral")
    if importlib.util.find_spec("tslearn") is None:
        with pytest.raises(ImportError, match="pip install tslearn"):
            cluster_curves(curves, 2, method="dtw")
    else:
        assert len(cluster_curves(curves, 2, method="dtw")) == 4
