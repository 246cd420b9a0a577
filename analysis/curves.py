"""Curves over training: ``curves[head, checkpoint]`` arrays and the log-step axis.

Training stages of a transformer live on a log scale of steps (the first few hundred steps
hold as much change as the last tens of thousands), so every analysis reads curves over
``log10(step + 1)``; the ``+ 1`` keeps step 0 (the initialisation) on the axis.
"""

from __future__ import annotations

import warnings

import numpy as np


def log_steps(steps: np.ndarray | list[int]) -> np.ndarray:
    """``x[checkpoint] = log10(step + 1)``: the axis every curve is read over."""
    return np.log10(np.asarray(steps, dtype=float) + 1.0)


def from_log_steps(x: np.ndarray | float) -> np.ndarray:
    """The inverse of ``log_steps``: ``step = 10**x − 1``."""
    return np.power(10.0, np.asarray(x, dtype=float)) - 1.0


def decades_apart(step_a: float, step_b: float) -> float:
    """``|log10(a + 1) − log10(b + 1)|``: how far two steps are on the log-step axis."""
    return float(abs(log_steps([step_a])[0] - log_steps([step_b])[0]))


def normalise(curves: np.ndarray) -> np.ndarray:
    """Min-max scale each curve to [0, 1] over checkpoints.

    ``out[h, c] = (curves[h, c] − min_c curves[h]) / (max_c curves[h] − min_c curves[h])``,
    with NaN entries ignored in the min and max (and kept NaN); a flat curve (range 0) or
    an all-NaN one becomes zeros, so it sits in one cluster rather than poisoning K-means.
    A 1-D input is one curve.
    """
    arr = np.asarray(curves, dtype=float)
    one = arr.ndim == 1
    arr = np.atleast_2d(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: handled below
        lo = np.nanmin(arr, axis=1, keepdims=True)
        hi = np.nanmax(arr, axis=1, keepdims=True)
    span = hi - lo
    flat = ~np.isfinite(span) | (span <= 0)
    out = np.where(flat, 0.0, (arr - lo) / np.where(flat, 1.0, span))
    # a flat or all-NaN curve is all zeros; elsewhere a missing point stays missing
    out = np.where(np.isnan(arr) & ~flat, np.nan, out)
    return out[0] if one else out


def fill_missing(curves: np.ndarray) -> np.ndarray:
    """Each curve's NaN points filled by linear interpolation over the checkpoint index
    (ends held at the nearest finite value; all-NaN rows become zeros), for methods such as
    K-means that take no missing values."""
    arr = np.atleast_2d(np.asarray(curves, dtype=float)).copy()
    idx = np.arange(arr.shape[1])
    for row in arr:
        ok = np.isfinite(row)
        if not ok.any():
            row[:] = 0.0
        elif not ok.all():
            row[~ok] = np.interp(idx[~ok], idx[ok], row[ok])
    return arr
