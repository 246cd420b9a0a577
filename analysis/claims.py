"""The paper's claims about attention heads, each measured as one number and judged by
one rule (``verdict``).

Every claim function takes plain arrays (``curves[head, checkpoint]``, ``classes[head]``
from the head scores) and returns a ``Claim``: what the paper says, what was measured,
the value and the two thresholds. The thresholds are module constants; each comment says
why it sits where it does. A claim that cannot be measured (no induction head, an empty
group) has value NaN, the verdict "does not hold" and a ``note`` with the reason.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr

from .clusters import ClusterMethod, adjusted_rand, cluster_curves, default_k
from .curves import fill_missing, normalise
from .stages import Boundary, align

HOLDS, PARTLY, FAILS = "holds", "partly", "does not hold"

# 1. clusters vs classes (ARI): 1 is the same partition, 0 chance. ≥ 0.5 means most head
#    pairs are put together or apart as their classes are; ≥ 0.2 is clearly above chance
#    for 4–16 heads but with several heads misplaced.
CLUSTER_ARI_HOLDS, CLUSTER_ARI_PARTLY = 0.5, 0.2
# 2. Spearman ρ of wrLLC vs induction score over checkpoints: ≥ 0.5 a clear monotone
#    co-movement; ≥ 0.2 a weak one (over ~10+ checkpoints, above noise).
INDUCTION_RHO_HOLDS, INDUCTION_RHO_PARTLY = 0.5, 0.2
# 3. between/within distance ratio of normalised curves: 1 means previous-token heads are
#    no farther from the others than heads are from their own group; 1.5 is a visible gap.
PREV_TOKEN_RATIO_HOLDS, PREV_TOKEN_RATIO_PARTLY = 1.5, 1.1
# 4. induction heads' drLLC ratio on induction data over other heads': 1 is no
#    specialisation; 20 % above the other heads is a visible preference.
SPECIALISE_HOLDS, SPECIALISE_PARTLY = 1.2, 1.0
# 5. share of full-model-LLC boundaries within STAGE_TOLERANCE_DECADES of a loss boundary:
#    half or more align; a quarter is more than a coincidence for a few boundaries.
STAGES_SHARE_HOLDS, STAGES_SHARE_PARTLY = 0.5, 0.25
#: A quarter of a decade of step (a factor 1.8): checkpoints of a log schedule are about
#: that far apart, so closer agreement could not be resolved.
STAGE_TOLERANCE_DECADES = 0.25
# 6. ARI margin of wrLLC over the best baseline: "best" needs a strict lead (a tie at ARI 1
#    on a small model separates nothing better), so 0.01; within 0.1 ARI is on a par.
MARGIN_HOLDS, MARGIN_PARTLY = 0.01, -0.1


def verdict(value: float, holds_at: float, partly_at: float,
            higher_is_better: bool = True) -> str:
    """``"holds"`` if value reaches ``holds_at`` (≥, or ≤ when lower is better),
    ``"partly"`` if it reaches ``partly_at``, else ``"does not hold"``; NaN does not hold."""
    if value is None or not math.isfinite(value):
        return FAILS
    sign = 1.0 if higher_is_better else -1.0
    if sign * value >= sign * holds_at:
        return HOLDS
    if sign * value >= sign * partly_at:
        return PARTLY
    return FAILS


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, measured: ``verdict`` follows from ``value`` and the
    thresholds by ``verdict()``; ``note`` says why a value is NaN."""

    key: str
    text: str
    measure: str
    value: float
    holds_at: float
    partly_at: float
    higher_is_better: bool = True
    note: str = field(default="")

    @property
    def verdict(self) -> str:
        return verdict(self.value, self.holds_at, self.partly_at, self.higher_is_better)

    @property
    def thresholds(self) -> str:
        """The rule in words, e.g. ``"holds ≥ 0.5; partly ≥ 0.2"``."""
        op = "≥" if self.higher_is_better else "≤"
        return f"holds {op} {self.holds_at:g}; partly {op} {self.partly_at:g}"

    def as_dict(self) -> dict[str, object]:
        return {"key": self.key, "text": self.text, "measure": self.measure,
                "value": self.value, "holds_at": self.holds_at, "partly_at": self.partly_at,
                "higher_is_better": self.higher_is_better, "verdict": self.verdict,
                "note": self.note}


def clusters_match_classes(curves: np.ndarray, classes: Sequence[str], seed: int = 0,
                           method: ClusterMethod | str = ClusterMethod.KMEANS) -> Claim:
    """ARI between K-means clusters (k = distinct classes) of the normalised wrLLC
    ``curves[head, checkpoint]`` and the heads' ``classes[head]``."""
    curves = np.asarray(curves, dtype=float)
    note = ""
    if len(classes) < 2:
        value, note = math.nan, "fewer than 2 heads"
    else:
        labels = cluster_curves(curves, default_k(classes), method, seed=seed)
        value = adjusted_rand(labels, classes)
    return Claim("clusters_match_classes",
                 "K-means on the wrLLC curves recovers the head types.",
                 f"adjusted Rand index of K-means clusters (k = {default_k(classes)}) of "
                 "normalised wrLLC curves vs attention-score classes",
                 value, CLUSTER_ARI_HOLDS, CLUSTER_ARI_PARTLY, note=note)


def induction_rises_with_score(wrllc: np.ndarray, induction_score: np.ndarray,
                               classes: Sequence[str]) -> Claim:
    """Mean over induction-class heads of Spearman ρ, over checkpoints, between
    ``wrllc[head, ckpt]`` and ``induction_score[head, ckpt]``."""
    wrllc, score = np.asarray(wrllc, dtype=float), np.asarray(induction_score, dtype=float)
    heads = [i for i, c in enumerate(classes) if c == "induction"]
    rhos = []
    for i in heads:
        ok = np.isfinite(wrllc[i]) & np.isfinite(score[i])
        if ok.sum() >= 3 and np.ptp(wrllc[i][ok]) > 0 and np.ptp(score[i][ok]) > 0:
            rhos.append(float(spearmanr(wrllc[i][ok], score[i][ok]).statistic))
    measure = "mean over induction heads of Spearman ρ (over checkpoints) of wrLLC vs " \
              "induction score"
    note = ""
    if not heads:
        note = "no head is classed induction"
    elif not rhos:
        note = "no induction head has 3+ checkpoints with varying wrLLC and score"
    value = float(np.mean(rhos)) if rhos else math.nan
    return Claim("induction_rises_with_score",
                 "Induction heads' wrLLC develops with their induction behaviour.",
                 measure + (f" ({len(rhos)} heads)" if rhos else f" (NaN: {note})"),
                 value, INDUCTION_RHO_HOLDS, INDUCTION_RHO_PARTLY, note=note)


def prev_token_stand_apart(curves_layer0: np.ndarray, classes_layer0: Sequence[str]) -> Claim:
    """Between/within distance ratio of the normalised wrLLC curves of layer 0:
    ``mean d(prev-token head, other head) / mean d(same-group pairs)`` (Euclidean over
    checkpoints); NaN if either group is empty or no group has two heads."""
    x = fill_missing(normalise(np.asarray(curves_layer0, dtype=float)))
    prev = np.array([c == "previous-token" for c in classes_layer0], dtype=bool)
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))  # [head, head]
    same = prev[:, None] == prev[None, :]
    upper = np.triu(np.ones_like(same), k=1)
    within = dist[same & upper]
    between = dist[~same & upper]
    note = ""
    if not prev.any() or prev.all():
        note = "no previous-token head in layer 0" if not prev.any() else \
            "every layer-0 head is previous-token"
    elif within.size == 0:
        note = "each group has a single head: no within-group distance"
    if note:
        value = math.nan
    else:
        w = float(within.mean())
        value = float(between.mean() / w) if w > 0 else math.inf
    return Claim("prev_token_stand_apart",
                 "Previous-token heads develop differently from the other layer-0 heads.",
                 "mean distance of previous-token heads' normalised wrLLC curves to the "
                 "other layer-0 heads' ÷ mean distance within the groups",
                 value, PREV_TOKEN_RATIO_HOLDS, PREV_TOKEN_RATIO_PARTLY, note=note)


def induction_specialises(drllc_ratio: np.ndarray, datasets: Sequence[str],
                          classes: Sequence[str]) -> Claim:
    """``mean(ratio[induction heads, "induction"]) / mean(ratio[other heads,
    "induction"])``, ``ratio[head, dataset]`` = drLLC on the dataset ÷ drLLC on the
    training mix at the same checkpoint."""
    ratio = np.asarray(drllc_ratio, dtype=float)
    ind = np.array([c == "induction" for c in classes], dtype=bool)
    note = ""
    if "induction" not in datasets:
        note = "no drLLC on the induction dataset"
    elif not ind.any():
        note = "no head is classed induction"
    elif ind.all():
        note = "every head is classed induction: nothing to compare with"
    value = math.nan
    if not note:
        col = ratio[:, list(datasets).index("induction")]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            a, b = np.nanmean(col[ind]), np.nanmean(col[~ind])
        if not (np.isfinite(a) and np.isfinite(b)) or b <= 0:
            note = "drLLC ratios missing or non-positive"
        else:
            value = float(a / b)
    return Claim("induction_specialises",
                 "Induction heads specialise: their drLLC rises most on induction data.",
                 "mean drLLC ratio (induction ÷ training mix) of induction heads ÷ that of "
                 "the other heads",
                 value, SPECIALISE_HOLDS, SPECIALISE_PARTLY, note=note)


def llc_stages_match_loss(llc_boundaries: list[Boundary], loss_boundaries: list[Boundary],
                          tolerance_decades: float = STAGE_TOLERANCE_DECADES) -> Claim:
    """Share of the full-model LLC's boundaries (``stage_boundaries``) within
    ``tolerance_decades`` of a boundary of the loss curve."""
    note = ""
    if not llc_boundaries:
        note = "the full-model LLC curve shows no boundary"
    elif not loss_boundaries:
        note = "the loss curve shows no boundary"
    value = math.nan if note else align(llc_boundaries, loss_boundaries,
                                        tolerance_decades).share
    return Claim("llc_stages_match_loss",
                 "Critical points of the full-model LLC mark the stages seen in the loss.",
                 f"share of full-model LLC boundaries within {tolerance_decades:g} decades "
                 "of step of a loss boundary (extremum or plateau edge)",
                 value, STAGES_SHARE_HOLDS, STAGES_SHARE_PARTLY, note=note)


def wrllc_separates_best(wrllc_curves: np.ndarray, baseline_curves: Mapping[str, np.ndarray],
                         classes: Sequence[str], seed: int = 0,
                         method: ClusterMethod | str = ClusterMethod.KMEANS) -> Claim:
    """``ARI(wrLLC clusters, classes) − max_b ARI(baseline b's clusters, classes)``, every
    ``curves[head, checkpoint]`` on the same checkpoints; baselines that are all NaN are
    left out."""
    k = default_k(classes)
    scores = {name: adjusted_rand(cluster_curves(c, k, method, seed=seed), classes)
              for name, c in baseline_curves.items()
              if np.isfinite(np.asarray(c, dtype=float)).any()}
    note = ""
    if len(classes) < 2:
        note = "fewer than 2 heads"
    elif not scores:
        note = "no baseline curves"
    value = math.nan
    measure = "ARI of wrLLC clusters − best ARI of a baseline's clusters"
    if not note:
        own = adjusted_rand(cluster_curves(wrllc_curves, k, method, seed=seed), classes)
        best = max(scores, key=lambda n: (scores[n], n))
        value = own - scores[best]
        measure += f" (wrLLC {own:.2f}; best baseline {best} {scores[best]:.2f})"
    return Claim("wrllc_separates_best",
                 "wrLLC separates head types better than Hessian trace, Fisher trace, "
                 "Hessian rank and ablations.",
                 measure, value, MARGIN_HOLDS, MARGIN_PARTLY, note=note)
