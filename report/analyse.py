"""The analysis a report shows, run on its ``ReportData``: head classes at the last
checkpoint, K-means clusters of the wrLLC curves, stage boundaries of the full-model LLC and
the eval loss, the six claims, and whether each head's wrLLC curve stands above its noise.

Significance of a curve (``significance``): with ``SE[c]`` the Monte-Carlo standard error
of λ̂ at checkpoint c, a head's curve is *significant* when
``median_c SE[c] ≤ (max_c λ̂ − min_c λ̂) / SIGNIFICANCE_RATIO``: the curve moves by several
error bars, so its shape (what clustering reads) is not noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rllc.analysis import (
    Boundary,
    Claim,
    adjusted_rand,
    cluster_curves,
    clusters_match_classes,
    default_k,
    induction_rises_with_score,
    induction_specialises,
    llc_stages_match_loss,
    prev_token_stand_apart,
    stage_boundaries,
    wrllc_separates_best,
)

from .data import ReportData

#: A curve must move by at least this many median standard errors to count as significant.
SIGNIFICANCE_RATIO = 5.0


@dataclass
class HeadSignificance:
    """One head's curve against its noise: ``significant`` iff median SE ≤ range / ratio
    (NaN in either → not significant)."""

    head: str
    median_se: float
    range: float
    significant: bool


@dataclass
class ReportAnalysis:
    """What ``analyse`` found (module docstring)."""

    classes: list[str]
    k: int
    clusters: np.ndarray  # labels[head]
    cluster_ari: float
    llc_boundaries: list[Boundary]
    loss_boundaries: list[Boundary]
    claims: list[Claim]
    significance: list[HeadSignificance]
    drllc_step: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def failing_heads(self) -> list[str]:
        """Heads whose wrLLC curve is not significant."""
        return [s.head for s in self.significance if not s.significant]


def analyse(data: ReportData) -> ReportAnalysis:
    """Run every analysis of the report on ``data``."""
    classes = data.final_classes
    method = data.record.get("clustering", "kmeans")  # the demo's --clustering
    k = default_k(classes)
    have_curves = np.isfinite(data.wrllc).any() and len(data.heads) >= 2
    clusters = (cluster_curves(data.wrllc, k, method) if have_curves
                else np.zeros(len(data.heads), dtype=int))
    ari = adjusted_rand(clusters, classes) if have_curves else float("nan")
    llc_b = stage_boundaries(data.steps, data.llc)
    loss_b = stage_boundaries(data.steps, data.eval_loss)
    drllc_step = data.drllc_steps[-1] if data.drllc_steps else None
    layer0 = [i for i, h in enumerate(data.heads) if data.layer(h) == 0]
    ratio = (data.drllc_ratio[drllc_step] if drllc_step is not None
             else np.full((len(data.heads), 0), np.nan))
    claims = [
        clusters_match_classes(data.wrllc, classes, method=method),
        induction_rises_with_score(data.wrllc, data.scores["induction"], classes),
        prev_token_stand_apart(data.wrllc[layer0], [classes[i] for i in layer0]),
        induction_specialises(ratio, data.drllc_datasets, classes),
        llc_stages_match_loss(llc_b, loss_b),
        wrllc_separates_best(data.wrllc_at(data.baseline_steps), data.baselines, classes,
                             method=method),
    ]
    notes = []
    if len(data.baseline_steps) and len(data.baseline_steps) < 6:
        notes.append(f"baselines at only {len(data.baseline_steps)} steps: their curves "
                     "are short for clustering")
    return ReportAnalysis(classes=classes, k=k, clusters=clusters, cluster_ari=ari,
                          llc_boundaries=llc_b, loss_boundaries=loss_b, claims=claims,
                          significance=significance(data.heads, data.wrllc, data.wrllc_se),
                          drllc_step=drllc_step, notes=notes)


def significance(heads: list[str], curves: np.ndarray, stderr: np.ndarray,
                 ratio: float = SIGNIFICANCE_RATIO) -> list[HeadSignificance]:
    """Per head: median over checkpoints of ``stderr[head, ckpt]`` against the range of
    ``curves[head, ckpt]`` (NaN points left out)."""
    out = []
    for h, curve, se in zip(heads, curves, stderr, strict=True):
        ok, ok_se = np.isfinite(curve), np.isfinite(se)
        span = float(np.ptp(curve[ok])) if ok.sum() >= 2 else float("nan")
        med = float(np.median(se[ok_se])) if ok_se.any() else float("nan")
        sig = bool(np.isfinite(span) and np.isfinite(med) and med <= span / ratio)
        out.append(HeadSignificance(h, med, span, sig))
    return out


def claim_rows(result: ReportAnalysis) -> list[dict[str, Any]]:
    """The claims table: one dict per claim (``Claim.as_dict`` plus ``thresholds``)."""
    return [c.as_dict() | {"thresholds": c.thresholds} for c in result.claims]
