"""Error bars of head wrLLCs against replicate runs, on a small trained model.

R = 16 replicate runs per head, differing only in the sampler seed (so also in their
minibatches). If the reported SE is exact, (R−1)·s²/σ² ~ χ²₁₅ for the sd s over the
replicates, so median SE / s lies in [√(15/χ²₁₅,₀.₉₉₅), √(15/χ²₁₅,₀.₀₀₅)] = [0.65, 1.71]
with probability 99%: that window is the bound, not a tuned margin. The paper's setting
(ε 1e-3, γ 200, nβ 30, 4 chains × 200 draws, batch 32) on 128 sequences, so an epoch is 4
draws; the model is ``rllc train --quick`` (2 × 2 heads, 60 steps), and the two heads of
layer 1 run as one batch. benchmarks/error_bars.py runs the same with the ESS SE beside.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rllc.estimators import SGLDConfig
from rllc.jobs.session import CheckpointSession
from rllc.jobs.spec import DataOptions

R = 16
HEADS = ["1:0", "1:1"]
SEQUENCES, EPOCH, DRAWS = 128, 4, 200


def window(replicates: int = R) -> tuple[float, float]:
    dof = replicates - 1
    lo, hi = stats.chi2.ppf([0.005, 0.995], dof)
    return float(np.sqrt(dof / hi)), float(np.sqrt(dof / lo))


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> str:
    from rllc.jobs.train import QUICK, train

    out = str(tmp_path_factory.mktemp("quick"))
    train(QUICK.model_copy(update={"log_checkpoints": 1}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def replicates(quick_run):
    from rllc.jobs.sweep_plan import expand_checkpoints

    session = CheckpointSession(expand_checkpoints([quick_run])[-1],
                                DataOptions(n_sequences=SEQUENCES), device="cpu")
    out = {}
    for independent in (True, False):
        runs = [session.sample_many(HEADS, "train", SGLDConfig(
            seed=s, draws=DRAWS, independent_batches=independent)) for s in range(R)]
        out[independent] = {h: [r[h] for r in runs] for h in HEADS}
    return out


@pytest.mark.slow
@pytest.mark.parametrize("independent", [True, False], ids=["independent", "shared"])
@pytest.mark.parametrize("estimator", ["paired", "plain"])
def test_standard_error_matches_the_spread_over_replicates(replicates, independent,
                                                           estimator):
    lo, hi = window()
    for head, runs in replicates[independent].items():
        ests = [r.llc(estimator=estimator) for r in runs]
        sd = np.std([e.llc_mean for e in ests], ddof=1)
        ratio = np.median([e.llc_stderr for e in ests]) / sd
        assert lo <= ratio <= hi, (head, ratio, sd)


@pytest.mark.slow
def test_plain_and_paired_agree_and_coincide_over_whole_epochs(replicates):
    """Paired and plain estimate the same λ: their difference averages to 0 over the
    replicates (within 3 SE of its mean). Kept draws that are whole epochs (the automatic
    burn-in ends on an epoch boundary, 200 draws are 50 epochs, and with shared batches
    all chains see the same epochs) make them coincide: nβ·(mean L_B(w*) − L_n(w*)) = 0."""
    for head, runs in replicates[True].items():
        diffs = [r.llc(estimator="plain").llc_mean - r.llc(estimator="paired").llc_mean
                 for r in runs]
        assert abs(np.mean(diffs)) <= 3 * np.std(diffs, ddof=1) / np.sqrt(R), head
    for run in replicates[False]["1:1"]:
        burnin = run.llc(estimator="paired").burnin
        assert burnin % EPOCH == 0
        plain = run.llc(burnin=burnin, estimator="plain").llc_mean
        paired = run.llc(burnin=burnin, estimator="paired").llc_mean
        assert plain == pytest.approx(paired, abs=1e-4 * run.nbeta)
