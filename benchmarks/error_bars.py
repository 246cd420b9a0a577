"""Are rllc's error bars honest? Replicate runs against the reported uncertainty.

Four checks (issue 17), each on independent replicate runs with fixed seeds:

- ``calibration``: R runs of one problem that differ only in the sampler seed. The median
  reported Monte-Carlo SE (``llc_stderr``) is compared with the standard deviation of λ̂
  over the runs. With R replicates the sample sd s satisfies (R − 1)·s²/σ² ~ χ²_{R−1}, so
  if the SE is exact, median SE / s lies in [√((R−1)/χ²_{R−1, 0.975}),
  √((R−1)/χ²_{R−1, 0.025})] 95% of the time: 0.74–1.55 for R = 16 (the SE's own noise
  widens this a little, hence the documented 0.6–1.6). Done for the default linear network
  (``rllc estimate dln``'s defaults) and for two heads of a small trained transformer,
  with shared and with independent minibatches, plain and paired estimators; the ESS-based
  SE (``llc_stderr_ess``) is shown beside.
- ``coverage``: R linear networks (problem and sampler seed s = 0 … R−1) against their
  exact λ: how many satisfy |λ̂ − λ| ≤ 2·√(SE² + systematic²), the median total
  uncertainty relative to λ̂, and what Richardson extrapolation (2·λ̂(ε/2) − λ̂(ε)) does to
  the error.
- ``doubling``: for some of those networks, λ̂ at twice the draws, in SEs of the difference.
- ``minibatch``: a linear network with a per-sample loss and minibatches, long runs: plain
  and paired λ̂ agree in expectation, and coincide exactly over whole epochs.

    python benchmarks/error_bars.py [--part calibration|heads,coverage,doubling,minibatch]
                                    [--replicates 16] [--json]

Figures and the commands that produced them: benchmarks/README.md, "Error bars".
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import torch
from scipy import stats

from rllc.estimators import SGLDConfig, sample, supervised_objective
from rllc.estimators.dln import (
    DLN_SAMPLER,
    DLNProblem,
    estimate_dln,
    fit_student,
    make_data,
    sample_dln,
    sufficient_statistics,
)
from rllc.estimators.systematic import halved_step

DLN_WIDTHS, DLN_RANK = (5, 4, 5), 2  # the default problem of `make demo`


def chi2_window(replicates: int, level: float = 0.95) -> tuple[float, float]:
    """Where median SE / sd over ``replicates`` runs lies with probability ``level`` if the
    SE is exact: (R−1)·s²/σ² ~ χ²_{R−1} (module docstring)."""
    dof = replicates - 1
    lo, hi = stats.chi2.ppf([(1 - level) / 2, (1 + level) / 2], dof)
    return float(np.sqrt(dof / hi)), float(np.sqrt(dof / lo))


def calibration_row(name: str, means: list[float], ses: list[float],
                    ses_ess: list[float] | None = None) -> dict[str, Any]:
    sd = float(np.std(means, ddof=1))
    row = {"case": name, "replicates": len(means), "llc_mean": float(np.mean(means)),
           "sd_over_replicates": sd, "median_se": float(np.median(ses)),
           "ratio": float(np.median(ses)) / sd if sd > 0 else float("nan")}
    if ses_ess is not None:
        row["median_se_ess"] = float(np.median(ses_ess))
        row["ratio_ess"] = row["median_se_ess"] / sd if sd > 0 else float("nan")
    return row


def dln_calibration(replicates: int) -> list[dict[str, Any]]:
    """R runs of the default network (problem seed 0) with sampler seeds 0 … R−1."""
    problem = DLNProblem(widths=DLN_WIDTHS, true_rank=DLN_RANK, seed=0)
    _, x, y = make_data(problem)
    student, stats_ = fit_student(problem, x, y), sufficient_statistics(x, y)
    ests = []
    for s in range(replicates):
        cfg = halved_step(DLN_SAMPLER).model_copy(update={"seed": s})  # the reported run
        ests.append(sample_dln(student, stats_, cfg, num_samples=problem.samples).llc())
        _log(f"dln calibration {s}: {ests[-1].llc_mean:.3f} ± {ests[-1].llc_stderr:.3f}")
    return [calibration_row("dln 5,4,5 r2 (reported ε/2 run)", [e.llc_mean for e in ests],
                            [e.llc_stderr for e in ests], [e.llc_stderr_ess for e in ests])]


def head_calibration(replicates: int, draws: int) -> list[dict[str, Any]]:
    """R runs of two heads of a small trained transformer, per batching mode and estimator."""
    from rllc.jobs.train import QUICK, train
    from rllc.models.fastpath import sample_heads

    with tempfile.TemporaryDirectory() as run:
        config = QUICK.model_copy(update={"steps": 200, "log_checkpoints": 1})
        train(config, run, progress=False)
        model, tokens = _model_and_tokens(run)
    rows = []
    heads = ["0:0", "1:1"]
    for independent in (True, False):
        runs: dict[str, list] = {h: [] for h in heads}
        for s in range(replicates):
            cfg = SGLDConfig(draws=draws, seed=s, independent_batches=independent)
            out = sample_heads(model, tokens, heads, cfg)
            for h in heads:
                runs[h].append(out[h])
        mode = "independent" if independent else "shared"
        for h in heads:
            for estimator in ("plain", "paired"):
                ests = [r.llc(estimator=estimator) for r in runs[h]]
                rows.append(calibration_row(
                    f"head {h}, {mode} batches, {estimator}", [e.llc_mean for e in ests],
                    [e.llc_stderr for e in ests], [e.llc_stderr_ess for e in ests]))
                _log(json.dumps(rows[-1]))
    return rows


def _model_and_tokens(run: str) -> tuple[torch.nn.Module, torch.Tensor]:
    from rllc.jobs.session import CheckpointSession
    from rllc.jobs.spec import DataOptions
    from rllc.jobs.sweep_plan import expand_checkpoints

    target = expand_checkpoints([run])[-1]
    session = CheckpointSession(target, DataOptions(n_sequences=256), "cpu")
    return session.model, session.dataset("train")


def dln_coverage(replicates: int) -> dict[str, Any]:
    """R networks (seed s for problem and sampler) with the CLI's defaults, against λ."""
    runs = []
    for s in range(replicates):
        out = estimate_dln(DLNProblem(widths=DLN_WIDTHS, true_rank=DLN_RANK, seed=s),
                           DLN_SAMPLER.model_copy(update={"seed": s}))
        out["covered"] = abs(out["llc_mean"] - out["true_llc"]) <= 2 * out["llc_total"]
        out["richardson_covered"] = (abs(out["llc_richardson"] - out["true_llc"])
                                     <= 2 * out["llc_richardson_stderr"])
        runs.append({k: out[k] for k in (
            "llc_mean", "llc_stderr", "llc_systematic", "llc_total", "llc_coarse",
            "llc_richardson", "llc_richardson_stderr", "true_llc", "burnin", "covered",
            "richardson_covered", "seconds")})
        _log(f"coverage {s}: {json.dumps(runs[-1])}")
    lam = runs[0]["true_llc"]
    return {
        "problem": f"{','.join(map(str, DLN_WIDTHS))} r{DLN_RANK}, λ = {lam}",
        "runs": runs,
        "covered": sum(r["covered"] for r in runs),
        "replicates": replicates,
        "median_total_relative": statistics.median(r["llc_total"] / r["llc_mean"] for r in runs),
        "mean_error": float(np.mean([r["llc_mean"] - lam for r in runs])),
        "mean_error_coarse": float(np.mean([r["llc_coarse"] - lam for r in runs])),
        "mean_error_richardson": float(np.mean([r["llc_richardson"] - lam for r in runs])),
        "rms_error": float(np.sqrt(np.mean([(r["llc_mean"] - lam) ** 2 for r in runs]))),
        "rms_error_richardson": float(np.sqrt(np.mean(
            [(r["llc_richardson"] - lam) ** 2 for r in runs]))),
        "richardson_covered": sum(r["richardson_covered"] for r in runs),
        "median_seconds": statistics.median(r["seconds"] for r in runs),
    }


def dln_doubling(seeds: int) -> list[dict[str, Any]]:
    """λ̂ of the default sampler and of twice its draws, per seed, in SEs of the change."""
    rows = []
    for s in range(seeds):
        problem = DLNProblem(widths=DLN_WIDTHS, true_rank=DLN_RANK, seed=s)
        _, x, y = make_data(problem)
        student, stats_ = fit_student(problem, x, y), sufficient_statistics(x, y)
        base = halved_step(DLN_SAMPLER).model_copy(update={"seed": s})  # the reported run
        first = sample_dln(student, stats_, base, num_samples=problem.samples)
        one = first.llc()
        two = sample_dln(student, stats_, base.model_copy(update={"draws": 2 * base.draws}),
                         num_samples=problem.samples).llc()
        rows.append({"seed": s, "llc": one.llc_mean, "se": one.llc_stderr,
                     "llc_doubled": two.llc_mean, "se_doubled": two.llc_stderr,
                     "shift_in_se": (two.llc_mean - one.llc_mean) / one.llc_stderr,
                     "halves_in_se": halves_in_se(first.llc_draws(), one)})
        _log(f"doubling {s}: {json.dumps(rows[-1])}")
    return rows


def halves_in_se(draws: np.ndarray, est) -> float:
    """(mean of the second half of the kept draws − mean of the first half) / the run's SE."""
    kept = draws[:, est.burnin:]
    half = kept.shape[1] // 2
    return float((kept[:, half:].mean() - kept[:, :half].mean()) / est.llc_stderr)


def minibatch_agreement(seeds: int) -> dict[str, Any]:
    """Plain against paired on a minibatched 4,3,8 r1 network (n = 2048, B = 64, one draw
    per step, 2 × 1,024 draws): their mean difference over seeds in SEs, and the exact
    coincidence when the kept draws are whole epochs."""
    problem = DLNProblem(widths=(4, 3, 8), true_rank=1, samples=2048, seed=0)
    _, x, y = make_data(problem)
    student = fit_student(problem, x, y)
    objective = supervised_objective(student)
    diffs, ses, whole = [], [], []
    for s in range(seeds):
        cfg = SGLDConfig(step_size=2e-4, localization=10.0, nbeta=200.0, chains=4, draws=2048,
                         batch_size=64, seed=s, independent_batches=True)
        res = sample(student, objective, (x, y), config=cfg)
        plain, paired = res.llc(estimator="plain"), res.llc(estimator="paired")
        diffs.append(plain.llc_mean - paired.llc_mean)
        ses.append(plain.llc_stderr)
        at_epochs = res.llc(burnin=plain.burnin // 32 * 32, estimator="plain").llc_mean
        whole.append(abs(at_epochs - res.llc(burnin=plain.burnin // 32 * 32,
                                             estimator="paired").llc_mean))
        _log(f"minibatch {s}: plain {plain.llc_mean:.3f} ± {plain.llc_stderr:.3f}, paired "
             f"{paired.llc_mean:.3f} ± {paired.llc_stderr:.3f}")
    mean_diff = float(np.mean(diffs))
    se_diff = float(np.std(diffs, ddof=1) / np.sqrt(seeds))
    return {"seeds": seeds, "mean_plain_minus_paired": mean_diff, "se_of_mean": se_diff,
            "median_plain_se": float(np.median(ses)),
            "max_whole_epoch_difference": float(max(whole))}


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", default="calibration,coverage,doubling,minibatch")
    parser.add_argument("--replicates", type=int, default=16)
    parser.add_argument("--head-draws", type=int, default=200)
    parser.add_argument("--doubling-seeds", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    parts = args.part.split(",")
    start = time.perf_counter()
    out: dict[str, Any] = {"window": chi2_window(args.replicates), "calibration": None,
                           "coverage": None, "doubling": None, "minibatch": None,
                           "seconds": None}
    if "calibration" in parts or "heads" in parts:  # "heads": the heads' rows alone
        out["calibration"] = ([] if "heads" in parts else dln_calibration(args.replicates)) + (
            head_calibration(args.replicates, args.head_draws))
    if "coverage" in parts:
        out["coverage"] = dln_coverage(args.replicates)
    if "doubling" in parts:
        out["doubling"] = dln_doubling(args.doubling_seeds)
    if "minibatch" in parts:
        out["minibatch"] = minibatch_agreement(8)
    out["seconds"] = time.perf_counter() - start
    if args.json:
        print(json.dumps(out))
        return
    lo, hi = out["window"]
    print(f"χ² window for median SE / sd at R = {args.replicates}: {lo:.2f}–{hi:.2f}")
    for row in out["calibration"] or []:
        print(f"{row['case']:<40} sd {row['sd_over_replicates']:.4f}  median SE "
              f"{row['median_se']:.4f} (ratio {row['ratio']:.2f})  ESS SE "
              f"{row.get('median_se_ess', float('nan')):.4f} (ratio "
              f"{row.get('ratio_ess', float('nan')):.2f})")
    if out["coverage"]:
        c = out["coverage"]
        print(f"coverage {c['problem']}: {c['covered']}/{c['replicates']} within 2·total; "
              f"median total {100 * c['median_total_relative']:.2f}% of λ̂; mean error "
              f"{c['mean_error']:+.3f} (ε run {c['mean_error_coarse']:+.3f}, Richardson "
              f"{c['mean_error_richardson']:+.3f}); rms {c['rms_error']:.3f} vs Richardson "
              f"{c['rms_error_richardson']:.3f}; {c['median_seconds']:.1f} s per run")
    for row in out["doubling"] or []:
        print(f"doubling seed {row['seed']}: {row['llc']:.3f} ± {row['se']:.3f} → "
              f"{row['llc_doubled']:.3f} ({row['shift_in_se']:+.2f} SE); halves differ by "
              f"{row['halves_in_se']:+.2f} SE")
    if out["minibatch"]:
        m = out["minibatch"]
        print(f"minibatch: plain − paired = {m['mean_plain_minus_paired']:+.4f} ± "
              f"{m['se_of_mean']:.4f} over {m['seeds']} seeds; whole epochs: max "
              f"|difference| {m['max_whole_epoch_difference']:.2e}")
    print(f"{out['seconds']:.0f} s")


if __name__ == "__main__":
    main()
