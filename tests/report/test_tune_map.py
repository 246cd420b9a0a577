"""The map of a tune: a PNG over (ε, γ), or over ε alone when γ was pinned."""

from pathlib import Path

import numpy as np
from PIL import Image

from rllc.report.tune_map import plot_trials


def rows(gammas):
    rng = np.random.default_rng(0)
    out = []
    for i, (eps, gamma) in enumerate(zip(np.geomspace(1e-5, 1e-1, len(gammas)), gammas,
                                         strict=True)):
        diverged = eps > 1e-2
        out.append({"trial": i, "step_size": float(eps), "localization": float(gamma),
                    "llc_mean": None if diverged else float(10 + rng.normal()),
                    "llc_stderr": None if diverged else 0.1,
                    "objective": 100.0 if diverged else float(i % 3 - 0.5),
                    "passed": (not diverged) and i % 3 == 0})
    return out


def test_a_pinned_localization_plots_against_the_step_size(tmp_path):
    trials = rows([200.0] * 6)
    png = plot_trials(trials, trials[1], "model", tmp_path / "pinned.png")
    assert Image.open(png).size[0] > 1000


def test_a_searched_localization_plots_the_two_dimensional_map(tmp_path):
    trials = rows([1.0, 10.0, 100.0, 3.0, 30.0, 300.0])
    png = plot_trials(trials, trials[0], "dln", tmp_path / "map.png")
    assert Image.open(png).size[0] > 1000
    # the same trials give the same bytes (no date or software stamp)
    again = plot_trials(trials, trials[0], "dln", tmp_path / "again.png")
    assert Path(png).read_bytes() == Path(again).read_bytes()
