"""rllc.analysis: pure numpy / scikit-learn / scipy analysis of rLLC curves (no store, no
torch), so every function is testable on synthetic arrays.

- ``curves``: ``normalise(curves[head, checkpoint])``, log-step helpers;
- ``clusters``: ``cluster_curves`` (K-means or DTW K-means), ``adjusted_rand``;
- ``stages``: stage boundaries from the critical points and plateaus of a curve over
  log(step), and ``align`` of two boundary lists;
- ``claims``: the paper's claims as ``Claim`` values with one ``verdict`` rule.
"""

from .claims import (
    Claim,
    clusters_match_classes,
    induction_rises_with_score,
    induction_specialises,
    llc_stages_match_loss,
    prev_token_stand_apart,
    verdict,
    wrllc_separates_best,
)
from .clusters import ClusterMethod, adjusted_rand, cluster_curves, default_k
from .curves import log_steps, normalise
from .stages import Alignment, Boundary, align, stage_boundaries

__all__ = [
    "Alignment",
    "Boundary",
    "Claim",
    "ClusterMethod",
    "adjusted_rand",
    "align",
    "cluster_curves",
    "clusters_match_classes",
    "default_k",
    "induction_rises_with_score",
    "induction_specialises",
    "llc_stages_match_loss",
    "log_steps",
    "normalise",
    "prev_token_stand_apart",
    "stage_boundaries",
    "verdict",
    "wrllc_separates_best",
]
