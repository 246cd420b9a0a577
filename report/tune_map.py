"""The map of a tune: λ̂ and the objective of every trial over (ε, γ), log axes, with the
chosen setting and the paper's (ε = 10⁻³, γ = 200, nβ = 30) marked.

``rllc tune --plot`` (``rllc.jobs.tune``) and the report
(``rllc.report.figures``) draw it. The PNG carries no date or software stamp, so the same
trials give the same bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: The setting of Wang et al. (2024) for transformer heads, marked on every map.
PAPER_SETTING = {"step_size": 1e-3, "localization": 200.0, "nbeta": 30.0}


def plot_trials(rows: list[dict[str, Any]], best: dict[str, Any], kind: str,
                path: str | Path) -> str:
    """Write the PNG map of ``rows`` (``rllc.store.tuning.trial_rows``) to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    eps = np.array([r["step_size"] for r in rows])
    gamma = np.array([r["localization"] for r in rows])
    llc = np.array([np.nan if r["llc_mean"] is None else r["llc_mean"] for r in rows])
    objective = np.array([r["objective"] for r in rows])
    passed = np.array([r["passed"] for r in rows])

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4), constrained_layout=True)
    panels = [
        # colours over the middle of the λ̂ range: a diverging trial's λ̂ would wash out the rest
        (axes[0], llc, "λ̂ of the trial's base run", "viridis",
         tuple(np.nanpercentile(llc, [10, 90])) if np.isfinite(llc).any() else None),
        (axes[1], np.clip(objective, -1, 3), "objective (< 0: every check passed; lower "
         "is better)", "coolwarm", (-1, 3)),
    ]
    for ax, values, title, cmap, lims in panels:
        finite = np.isfinite(values)
        ax.scatter(eps[~finite], gamma[~finite], marker="x", c="0.6", label="diverged / no λ̂")
        sc = ax.scatter(eps[finite], gamma[finite], c=values[finite], cmap=cmap, s=60,
                        edgecolors=np.where(passed[finite], "k", "none"), linewidths=1.2,
                        vmin=None if lims is None else lims[0],
                        vmax=None if lims is None else lims[1])
        fig.colorbar(sc, ax=ax)
        ax.scatter([best["step_size"]], [best["localization"]], marker="*", s=320,
                   facecolors="none", edgecolors="red", linewidths=2, label="winning trial (best: its ε/2 run)")
        ax.scatter([PAPER_SETTING["step_size"]], [PAPER_SETTING["localization"]], marker="D",
                   s=80, facecolors="none", edgecolors="k", label="paper (ε 1e-3, γ 200)")
        ax.set(xscale="log", yscale="log", xlabel="step size ε", ylabel="localization γ",
               title=title)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"rllc tune ({kind}): {len(rows)} trials, {int(passed.sum())} passed "
                 "(black edge)")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return str(path)
