"""Seconds to a target standard error of λ̂: rllc's head fast path against devinterp 2.0.1.

A per-step speedup is only half of the comparison: what a user waits for is an estimate
with a given error bar, and that takes (draws for that standard error) × (seconds per
draw). For heads of the paper-shaped model (``vs_devinterp.py``'s model, data and
samplers), each side runs ``--replicates`` R independent runs (seeds) of ``--draws`` D
draws × 4 chains at the paper's setting (ε = 1e-3, γ = 200, nβ = 30, batch 32), every
chain on its own minibatch stream on both sides (rllc ``independent_batches=True``,
devinterp ``match_sampling_input_ids_across_chains=False``), so that the chains and the
runs are replicates. The two sides alternate, each in its own process, as in
``vs_devinterp.py``.

Each run's standard error is the honest one of ``rllc.estimators``: batch means over whole
epochs with the automatic burn-in (``summarize``; ``rllc.estimators.mcse``). rllc's is
``SamplingResult.llc()`` with the config's default estimator; devinterp records no
L_B(w*), so its traces go through the same ``summarize`` with the plain estimator
nβ·(L_B(w_t) − L_n(w*)), ``independent=True`` and the same epoch rule
(``mcse.epoch_draws``). The ESS-based SE (``llc_stderr_ess``) is shown beside it.

The check, the same for both sides: the sd of λ̂ over the R runs against the median
reported SE (their ratio should be ≈ 1; with R runs it lies in the printed 95% χ² window
when the SE is right), and the same with the chains as replicates (the spread of the
per-chain λ̂ within a run, over √chains, R·(chains − 1) degrees of freedom).

Time to the target: D·(SE/target)² draws per chain (SE the median over the R runs), times
4 chains times the side's steady-state seconds per (head, chain) step measured in the
same runs, plus its fixed seconds per head (devinterp: L(w*) per chain, model copies,
stores; rllc: L(w*) and the run's set-up, shared by the heads of the run). The ratio
devinterp / rllc is printed per head with the per-step ratio beside it: time-to-SE ratio
= per-step ratio × (SE_devinterp / SE_rllc)² (fixed costs aside).

By default a head of each layer (``--heads 0:1,1:6``), R = 4 runs of D = 32 draws on 128
sequences (an epoch is 4 draws at batch 32, so a short run holds whole epochs and the SE's
blocks align to them), L(w*) over the whole dataset once on both sides. Nearly all the time
is devinterp's: ≈ 4 × 2 heads × 128 chain-steps of 1–2 s (Zen 4 with AVX-512 bf16,
batch 32; ≈ 30 min in all), several hours where bf16/int8 matmuls are slow and rllc runs
in float32 (``benchmarks/README.md``). rllc samples the same heads only, so its steps are
not batched over a layer's 8 heads as in a full point (``vs_devinterp.py``): its per-step
time here is that of one head's 4 chains. ``--full`` runs all 16 heads.

    python benchmarks/time_to_se.py [--full] [--heads 0:1,1:6|all] [--replicates 4]
                                    [--draws 32] [--samples 128] [--target-se 0.05]
                                    [--batch 32] [--init-batches N]
                                    [--precision int8|bfloat16|float32] [--json]

``benchmarks/README.md`` ("time_to_se.py: seconds to a target standard error") has the
measured figures.
Needs the optional extra ``bench`` (``make bench``); without it the script exits 2.
"""

from __future__ import annotations

import os

# Set before torch loads OpenMP (see vs_devinterp.py); both sides run with it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time

import numpy as np
import torch
from scipy.stats import chi2
from vs_devinterp import (
    CHAINS,
    EPS,
    GAMMA,
    NBETA,
    PAPER,
    DevinterpProcess,
    Run,
    default_precision,
    log,
    require_bench_extra,
    rllc_run,
    synthetic_tokens,
    trained_model,
)

from rllc.estimators import LLCEstimate, SGLDConfig, summarize
from rllc.estimators.mcse import epoch_draws
from rllc.kernels.cputune import tune_cpu
from rllc.kernels.precision import HELP as PRECISION_HELP
from rllc.kernels.precision import Precision

SIDES = ("devinterp", "rllc")
DEVINTERP_SEED = 100  # devinterp's default init_seed; run r uses 100 + 1000·r


def chi2_window(df: int, level: float = 0.95) -> tuple[float, float]:
    """Where sd / σ falls with probability ``level`` when sd has ``df`` degrees of freedom
    (normal replicates, σ the true standard deviation): √(χ²_df quantiles / df)."""
    if df < 1:
        return math.nan, math.nan
    lo, hi = chi2.ppf([(1 - level) / 2, (1 + level) / 2], df)
    return math.sqrt(lo / df), math.sqrt(hi / df)


def median(values) -> float:
    """Median ignoring NaN (a run too short for an SE gives NaN); NaN if all are."""
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    return statistics.median(finite) if finite else math.nan


def estimates(side: str, run: Run, heads: list[str], epoch: int | None,
              estimator: str | None = None) -> dict[str, LLCEstimate]:
    """Each head's λ̂ with its batch-means SE: rllc's own ``llc()`` (``estimator``, default
    the config's); devinterp's plain traces through the same ``summarize`` (independent
    chains, the same epoch rule)."""
    if side == "rllc":
        return {h: run.results[h].llc(estimator=estimator) for h in heads}
    return {h: summarize(run.traces[h], independent=True, epoch=epoch) for h in heads}


def head_row(side: str, head: str, runs: list[Run], ests: list[LLCEstimate], draws: int,
             n_heads: int, target: float) -> dict:
    """One (head, side) row: SEs over the R runs, the replicate checks, time to target."""
    layer = int(head.split(":")[0])
    llcs = [e.llc_mean for e in ests]
    se = median(e.llc_stderr for e in ests)
    se_ess = median(e.llc_stderr_ess for e in ests)
    sd = statistics.stdev(llcs) if len(llcs) > 1 else math.nan
    # chains as replicates: the within-run spread of the per-chain λ̂, pooled over runs
    within = [float(np.var(e.llc_per_chain[np.isfinite(e.llc_per_chain)], ddof=1))
              for e in ests]
    chain_sd = math.sqrt(statistics.mean(within) / CHAINS)
    step_s = median(r.step_s[layer] for r in runs)
    # devinterp's fixed cost is per head; rllc's per run, shared by the run's heads
    fixed = median(r.fixed_s / (n_heads if side == "rllc" else 1) for r in runs)
    need = draws * (se / target) ** 2
    return {
        "head": head,
        "side": side,
        "layer": layer,
        "llc": statistics.mean(llcs),
        "llc_runs": llcs,
        "se": se,
        "se_runs": [e.llc_stderr for e in ests],
        "se_ess": se_ess,
        "sd_replicates": sd,
        "check": sd / se,
        "chain_sd": chain_sd,
        "chain_check": chain_sd / se,
        "burnin": median(e.burnin for e in ests),
        "se_block": median(e.se_block for e in ests),
        "se_blocks": median(e.se_blocks for e in ests),
        "draws_needed": need,
        "step_s": step_s,
        "fixed_s": fixed,
        "seconds": need * CHAINS * step_s + fixed,
    }


def pooled_check(rows: list[dict], key: str) -> float:
    """√(mean of (sd / SE)²) over heads: the ratio with the heads' degrees of freedom pooled."""
    return math.sqrt(statistics.mean(r[key] ** 2 for r in rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="all 16 heads (hours on a CPU)")
    parser.add_argument("--heads", default="0:1,1:6",
                        help="heads both sides sample (default one per layer), or 'all'")
    parser.add_argument("--replicates", type=int, default=4,
                        help="independent runs (seeds) per side (default 4)")
    parser.add_argument("--draws", type=int, default=32,
                        help="draws per chain of each run, burn-in included (default 32)")
    parser.add_argument("--target-se", type=float, default=0.05,
                        help="the standard error of λ̂ to reach (absolute, default 0.05)")
    parser.add_argument("--batch", type=int, default=32, help="minibatch size (default 32)")
    parser.add_argument("--samples", type=int, default=128,
                        help="sequences in the dataset (default 128: an epoch is 4 draws at "
                        "batch 32, so that a short run holds whole epochs)")
    parser.add_argument("--init-batches", type=int,
                        help="batches for L(w*) on both sides (default: one epoch, the "
                        "whole dataset once)")
    parser.add_argument("--train-steps", type=int, default=400,
                        help="AdamW steps before sampling (0: random init)")
    parser.add_argument("--precision", type=Precision, choices=list(Precision),
                        help=f"rllc's matmul precision (default: int8 on a CPU with bf16 "
                        f"dot products, float32 on other CPUs, bfloat16 elsewhere): "
                        f"{PRECISION_HELP}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both sides sample (default: cuda when available)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.precision is None:
        args.precision = default_precision(args.device)
    if args.replicates < 2:
        parser.error("--replicates must be ≥ 2 (the check needs a spread over runs)")

    require_bench_extra()
    heads = (PAPER.head_ids if args.full or args.heads == "all"
             else [h.strip() for h in args.heads.split(",")])
    R, D, B, target = args.replicates, args.draws, args.batch, args.target_se
    estimator = SGLDConfig().estimator
    epoch = epoch_draws(args.samples, B, 1)
    init = args.init_batches or max(1, args.samples // B)
    started, load_before = time.perf_counter(), os.getloadavg()

    model = trained_model(args.train_steps)
    tokens = synthetic_tokens(args.samples, seed=2)
    log("starting the devinterp process")
    devinterp = DevinterpProcess(model, tokens, False, args.device)
    model, tokens = model.to(args.device), tokens.to(args.device)
    tune_cpu()  # what sample_heads does by default; here before any timing
    rllc_run(model, tokens, heads, 1, args.precision, True, batch_size=B,  # compile
             init_batches=init)

    workdir = tempfile.mkdtemp(prefix="rllc-time-to-se-")
    runs: dict[str, list[Run]] = {s: [] for s in SIDES}
    try:
        for r in range(R):
            for side in SIDES if r % 2 == 0 else SIDES[::-1]:
                log(f"run {r + 1}/{R}: {side}, {len(heads)} heads × {CHAINS} chains × "
                    f"{D} draws")
                if side == "devinterp":
                    runs[side].append(devinterp.run(heads, D, workdir, True, batch_size=B,
                                                    seed=DEVINTERP_SEED + 1000 * r,
                                                    init_batches=init))
                else:
                    runs[side].append(rllc_run(model, tokens, heads, D, args.precision, True,
                                               batch_size=B, seed=r, init_batches=init))
    finally:
        devinterp.close()
        shutil.rmtree(workdir, ignore_errors=True)

    rows = []
    for side in SIDES:
        ests = [estimates(side, run, heads, epoch) for run in runs[side]]
        for h in heads:
            rows.append(head_row(side, h, runs[side], [e[h] for e in ests], D, len(heads),
                                 target))
    by = {(row["head"], row["side"]): row for row in rows}
    # rllc's other estimator on the same traces (for comparison; not the reported ratio)
    alt = "paired" if estimator == "plain" else "plain"
    alt_ests = [estimates("rllc", run, heads, epoch, alt) for run in runs["rllc"]]
    alt_rows = {h: head_row("rllc", h, runs["rllc"], [e[h] for e in alt_ests], D, len(heads),
                            target) for h in heads}
    for h, x in alt_rows.items():
        by[h, "rllc"]["alt"] = {"estimator": alt, **{k: x[k] for k in (
            "llc", "se", "se_runs", "sd_replicates", "check", "chain_check", "draws_needed",
            "seconds")}}
    per_head = {h: {"ratio": by[h, "devinterp"]["seconds"] / by[h, "rllc"]["seconds"],
                    "step_ratio": by[h, "devinterp"]["step_s"] / by[h, "rllc"]["step_s"],
                    "se_ratio_sq": (by[h, "devinterp"]["se"] / by[h, "rllc"]["se"]) ** 2,
                    "ratio_alt": by[h, "devinterp"]["seconds"] / alt_rows[h]["seconds"]}
                for h in heads}
    ratio = median(v["ratio"] for v in per_head.values())
    step_ratio = median(v["step_ratio"] for v in per_head.values())
    ratio_alt = median(v["ratio_alt"] for v in per_head.values())
    window = chi2_window(R - 1)
    pooled = {s: {"check": pooled_check([r for r in rows if r["side"] == s], "check"),
                  "window": chi2_window(len(heads) * (R - 1)),
                  "chain_check": pooled_check([r for r in rows if r["side"] == s],
                                              "chain_check"),
                  "chain_window": chi2_window(len(heads) * R * (CHAINS - 1))}
              for s in SIDES}
    elapsed = time.perf_counter() - started

    print(f"time to SE {target:g} on λ̂: rllc vs devinterp 2.0.1, paper-shaped model "
          f"({PAPER.n_layers} × {PAPER.n_heads} heads), batch {B}, ε={EPS}, γ={GAMMA:g}, "
          f"nβ={NBETA:g}, {CHAINS} chains (own minibatches each), {args.samples} sequences "
          f"(epoch {epoch} draws), L(w*) from {init} batches, {R} runs × {D} draws per side, "
          f"{torch.get_num_threads()} threads, device {args.device}, rllc precision "
          f"{args.precision}")
    print(f"SE: batch means over whole epochs, automatic burn-in; rllc estimator "
          f"{estimator} (SGLDConfig default), devinterp plain (no L_B(w*) recorded)")
    print(f"\n{'head':5}{'side':>10}{'λ̂':>8}{'SE':>8}{'SE ess':>8}{'sd(R)':>8}{'sd/SE':>7}"
          f"{'chains':>8}{'burn':>6}{'draws→SE':>10}{'s/step':>8}{'fixed s':>9}{'seconds':>9}")
    for h in heads:
        for side in SIDES:
            x = by[h, side]
            print(f"{h:5}{side:>10}{x['llc']:8.3f}{x['se']:8.4f}{x['se_ess']:8.4f}"
                  f"{x['sd_replicates']:8.4f}{x['check']:7.2f}{x['chain_check']:8.2f}"
                  f"{x['burnin']:6.0f}{x['draws_needed']:10.0f}{x['step_s']:8.3f}"
                  f"{x['fixed_s']:9.1f}{x['seconds']:9.0f}")
    print("  (sd/SE: sd of λ̂ over the runs / median SE; chains: within-run sd of the "
          "per-chain λ̂ / √chains / median SE)")
    print(f"\n{'head':5}{'time-to-SE ratio':>18}{'step ratio':>12}{'(SE_d/SE_r)²':>14}")
    for h, v in per_head.items():
        print(f"{h:5}{v['ratio']:17.1f}×{v['step_ratio']:11.1f}×{v['se_ratio_sq']:14.2f}")
    print(f"median: time to SE {ratio:.1f}×, per step {step_ratio:.1f}×")
    print(f"\nrllc's {alt} estimator on the same traces (not the default):")
    for h, x in alt_rows.items():
        print(f"  {h}: λ̂ {x['llc']:.3f}, SE {x['se']:.4f}, sd/SE {x['check']:.2f}, "
              f"chains {x['chain_check']:.2f}, {x['draws_needed']:.0f} draws, "
              f"{x['seconds']:.0f} s: time-to-SE ratio {per_head[h]['ratio_alt']:.1f}×")
    print(f"\nreplicate check (sd over {R} runs / median SE; 95% window for a right SE "
          f"[{window[0]:.2f}, {window[1]:.2f}] per head):")
    for s in SIDES:
        p = pooled[s]
        print(f"  {s:10} pooled over heads {p['check']:.2f} [{p['window'][0]:.2f}, "
              f"{p['window'][1]:.2f}]; chains as replicates {p['chain_check']:.2f} "
              f"[{p['chain_window'][0]:.2f}, {p['chain_window'][1]:.2f}]")
    load_after = os.getloadavg()
    print(f"wall {elapsed:.0f} s; load average before {load_before[0]:.1f}, after "
          f"{load_after[0]:.1f}")
    if args.json:
        print(json.dumps({
            "rows": rows,
            "per_head": per_head,
            "ratio": ratio,
            "step_ratio": step_ratio,
            "ratio_alt_estimator": ratio_alt,
            "target_se": target,
            "replicates": R,
            "draws": D,
            "chains": CHAINS,
            "batch": B,
            "samples": args.samples,
            "epoch": epoch,
            "init_batches": init,
            "heads": heads,
            "estimator": {"rllc": estimator, "devinterp": "plain", "rllc_alt": alt},
            "check_window": window,
            "pooled_check": pooled,
            "precision": args.precision,
            "device": args.device,
            "threads": torch.get_num_threads(),
            "wall_s": elapsed,
            "load_before": load_before,
            "load_after": load_after,
        }))


if __name__ == "__main__":
    main()
