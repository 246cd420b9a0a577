"""Stage boundaries of a curve over training, read on the log-step axis.

The rule (``stage_boundaries``), for ``values[checkpoint]`` at ``steps[checkpoint]``:

1. ``x = log10(step + 1)``; the finite points are interpolated linearly onto a uniform grid
   of ``GRID`` points in x (checkpoints are rarely evenly spaced in log-step);
2. with at least ``MIN_POINTS_TO_SMOOTH`` checkpoints the grid curve is smoothed by a
   Gaussian of ``smooth_decades`` (σ, in decades of step), so single noisy estimates do
   not make boundaries; with fewer there is nothing to spare and it is used as is;
3. **extrema**: the slope ``dy/dx`` changes sign (+ → − a ``maximum``, − → + a
   ``minimum``, e.g. the full-model LLC's peaks), kept only when the extremum's prominence
   (``scipy.signal.find_peaks``) is at least ``prominence`` × the curve's range, so ripples
   on a flat stretch are not stages;
4. **plateaus**: maximal runs of the grid where ``|dy/dx| < plateau_fraction × max|dy/dx|``
   spanning at least ``min_plateau_decades``: a ``plateau_start`` where one begins and a
   ``plateau_end`` where one ends, except at the ends of the curve (a loss that is flat
   from initialisation has a boundary where the flat stretch ends, not at step 0).

Boundaries are returned sorted by step; ``step`` is on the grid, so it may lie between
checkpoints (``10**x − 1``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d
from scipy.signal import find_peaks

from .curves import from_log_steps, log_steps

#: Points of the uniform log-step grid the curve is read on.
GRID = 256
#: Fewer checkpoints than this are not smoothed (3 points cannot spare any detail).
MIN_POINTS_TO_SMOOTH = 7
KINDS = ("maximum", "minimum", "plateau_start", "plateau_end")


@dataclass(frozen=True)
class Boundary:
    """One stage boundary: at training ``step`` (``x = log10(step + 1)``), of ``kind``
    ``"maximum"``, ``"minimum"``, ``"plateau_start"`` or ``"plateau_end"``."""

    step: float
    kind: str

    @property
    def x(self) -> float:
        return float(log_steps([self.step])[0])


@dataclass(frozen=True)
class Alignment:
    """``pairs[i] = (a, b)``: each boundary of the first list with its nearest boundary of
    the second within the tolerance; ``share`` = matched / len(first) (NaN if empty)."""

    pairs: list[tuple[Boundary, Boundary]]
    unmatched: list[Boundary]
    share: float
    tolerance_decades: float


def stage_boundaries(steps: np.ndarray | list[int], values: np.ndarray | list[float],
                     smooth_decades: float = 0.1, plateau_fraction: float = 0.1,
                     min_plateau_decades: float = 0.2,
                     prominence: float = 0.05) -> list[Boundary]:
    """Stage boundaries of ``values[checkpoint]`` over ``steps[checkpoint]`` by the rule
    of the module docstring; ``[]`` with fewer than 3 finite points."""
    x_all = log_steps(steps)
    y_all = np.asarray(values, dtype=float)
    ok = np.isfinite(y_all) & np.isfinite(x_all)
    order = np.argsort(x_all[ok], kind="stable")
    x, y = x_all[ok][order], y_all[ok][order]
    x, first = np.unique(x, return_index=True)  # a repeated step keeps its first value
    y = y[first]
    if x.size < 3 or x[-1] <= x[0]:
        return []
    grid = np.linspace(x[0], x[-1], GRID)
    dx = grid[1] - grid[0]
    curve = np.interp(grid, x, y)
    if x.size >= MIN_POINTS_TO_SMOOTH and smooth_decades > 0:
        curve = gaussian_filter1d(curve, smooth_decades / dx, mode="nearest")
    span = float(np.ptp(curve))
    if span <= 0:
        return []
    out: list[Boundary] = []
    for sign, kind in ((1.0, "maximum"), (-1.0, "minimum")):
        peaks, _ = find_peaks(sign * curve, prominence=prominence * span)
        out += [Boundary(float(from_log_steps(grid[i])), kind) for i in peaks]

    slope = np.abs(np.gradient(curve, dx))
    flat = slope < plateau_fraction * slope.max()
    for start, stop in _runs(flat):
        if (stop - start) * dx < min_plateau_decades:
            continue
        if start > 0:
            out.append(Boundary(float(from_log_steps(grid[start])), "plateau_start"))
        if stop < GRID:
            out.append(Boundary(float(from_log_steps(grid[stop - 1])), "plateau_end"))
    return sorted(out, key=lambda b: (b.step, KINDS.index(b.kind)))


def align(boundaries_a: list[Boundary], boundaries_b: list[Boundary],
          tolerance_decades: float = 0.25) -> Alignment:
    """Match each boundary of ``a`` to its nearest of ``b`` (|Δ log10 step| ≤ tolerance);
    several of ``a`` may share one of ``b``: the question is whether each boundary of
    ``a`` has a counterpart, not a one-to-one pairing."""
    pairs, unmatched = [], []
    for a in boundaries_a:
        near = min(boundaries_b, key=lambda b: abs(b.x - a.x), default=None)
        if near is not None and abs(near.x - a.x) <= tolerance_decades:
            pairs.append((a, near))
        else:
            unmatched.append(a)
    share = len(pairs) / len(boundaries_a) if boundaries_a else float("nan")
    return Alignment(pairs, unmatched, share, tolerance_decades)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` index ranges of the True runs of ``mask``."""
    padded = np.concatenate([[False], mask, [False]]).astype(int)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))
