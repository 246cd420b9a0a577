"""Clusters of rLLC curves: K-means on the normalised curves (the paper's method), or
K-means under dynamic time warping (tslearn, optional), and agreement with head classes.

Curves are normalised first (``normalise``): clusters should group heads by the *shape* of
their development (when they rise, peak, fall), not by the size of their wrLLC.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from .curves import fill_missing, normalise

#: K-means restarts: enough that a handful of curves lands on the same partition every run.
N_INIT = 20


class ClusterMethod(enum.StrEnum):
    """How curves are clustered: K-means on the normalised curves (Euclidean), or K-means
    under dynamic time warping (tslearn, an optional dependency: ``pip install
    rllc[dtw]``), which lets curves that rise at shifted steps fall together."""

    KMEANS = "kmeans"
    DTW = "dtw"


def default_k(classes: Sequence[str]) -> int:
    """Clusters to look for: the number of distinct head classes, at least 2."""
    return max(2, len(set(classes)))


def cluster_curves(curves: np.ndarray, k: int,
                   method: ClusterMethod | str = ClusterMethod.KMEANS,
                   seed: int = 0) -> np.ndarray:
    """``labels[head]`` of K-means (``method="kmeans"``, Euclidean, ``N_INIT`` restarts) or
    DTW K-means (``method="dtw"``, tslearn's ``TimeSeriesKMeans(metric="dtw")``) on the
    normalised ``curves[head, checkpoint]``; missing points are interpolated. ``k`` is
    capped at the number of heads. Labels are renumbered by first appearance, so equal
    partitions give equal arrays."""
    x = fill_missing(normalise(np.asarray(curves, dtype=float)))
    k = int(min(max(k, 1), x.shape[0]))
    try:
        method = ClusterMethod(method)
    except ValueError:
        raise ValueError(f"method must be 'kmeans' or 'dtw', got {method!r}") from None
    if method == ClusterMethod.KMEANS:
        labels = KMeans(n_clusters=k, n_init=N_INIT, random_state=seed).fit_predict(x)
    else:
        try:
            from tslearn.clustering import TimeSeriesKMeans
        except ImportError as exc:
            raise ImportError("method='dtw' needs tslearn: pip install tslearn "
                              "(or rllc[dtw])") from exc
        labels = TimeSeriesKMeans(n_clusters=k, metric="dtw", n_init=N_INIT // 4 or 1,
                                  random_state=seed).fit_predict(x[:, :, None])
    return _first_appearance(np.asarray(labels))


def adjusted_rand(labels: Sequence[int] | np.ndarray, classes: Sequence[str]) -> float:
    """Adjusted Rand index of two partitions of the heads: 1 identical, ≈ 0 chance."""
    return float(adjusted_rand_score(list(classes), list(np.asarray(labels).tolist())))


def _first_appearance(labels: np.ndarray) -> np.ndarray:
    """Relabel so cluster ids count up in order of first appearance (0, 1, …)."""
    order: dict[int, int] = {}
    for v in labels.tolist():
        order.setdefault(v, len(order))
    return np.array([order[v] for v in labels.tolist()], dtype=int)
