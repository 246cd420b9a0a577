"""``rllc tune dln`` from its default range on linear networks with a known λ.

For each configuration: the tuned setting (ε, γ), the confirmation's λ̂ ± SE beside the
exact λ, whether it lands within 10% (the tuner never sees λ), the trials, trials per
minute, the share of trials stopped early and the wall time. One local Ray runtime for
all; each tune keeps its trials in a temporary store.

    python benchmarks/tune_dln.py [--configs 5,4,5:2 4,3,3,4:1 …] [--trials 24] [--json]

Figures: benchmarks/README.md, "tune_dln.py".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time

#: Shapes over the four Aoyagi cases and depth, λ from 5.5 to 150 (not the ones the tests
#: were tuned on).
CONFIGS = ["5,4,5:2", "4,3,3,4:1", "9,2,4:0", "3,8,4:2", "10,8,8,10:3", "20,15,20:5"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS,
                        help="widths:rank, e.g. 5,4,5:2 (default: a spread of six)")
    parser.add_argument("--trials", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="problem seed")
    parser.add_argument("--num-cpus", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import ray

    from rllc.estimators.dln import DLNProblem
    from rllc.jobs.tune import tune_dln
    from rllc.jobs.tune_spec import SearchSpace

    tmp = tempfile.mkdtemp(prefix="rllc-tune-bench-")
    os.environ.setdefault("RLLC_TUNE_STATE", os.path.join(tmp, "ray-tune"))
    ray.init(num_cpus=args.num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    rows = []
    try:
        for text in args.configs:
            widths, rank = text.split(":")
            problem = DLNProblem(widths=tuple(int(w) for w in widths.split(",")),
                                 true_rank=int(rank), seed=args.seed)
            start = time.perf_counter()
            out = tune_dln(problem, SearchSpace(trials=args.trials), store=os.path.join(
                tmp, "store"), progress=False, plot=os.path.join(tmp, f"{text}.png"))
            row = {
                "config": text, "weights": sum(a * b for a, b in zip(
                    problem.widths, problem.widths[1:], strict=False)),
                "true_llc": out["true_llc"], "llc_mean": out["llc_mean"],
                "llc_stderr": out["llc_stderr"], "llc_systematic": out["llc_systematic"],
                "llc_half_step": out["confirm"][out["tune"]].get("llc_half_step"),
                "relative_error": out["relative_error"],
                "within_10pct": abs(out["relative_error"]) <= 0.10,
                "step_size": out["best"]["step_size"],
                "localization": out["best"]["localization"], "passed": out["passed"],
                "trials": out["trials"], "trials_per_minute": out["trials_per_minute"],
                "stopped_early": out["stopped_early"],
                "seconds": time.perf_counter() - start,
            }
            rows.append(row)
            print(f"{text:12} d={row['weights']:4} λ={row['true_llc']:7.2f} "
                  f"λ̂={row['llc_mean']:8.3f} ± {row['llc_stderr']:.3f} "
                  f"({100 * row['relative_error']:+.1f}%) ε={row['step_size']:.2e} "
                  f"γ={row['localization']:.3g} passed={row['passed']} "
                  f"{row['trials']} trials, {row['trials_per_minute']:.1f}/min, "
                  f"{100 * row['stopped_early']:.0f}% stopped early, {row['seconds']:.0f} s",
                  flush=True)
    finally:
        ray.shutdown()
    within = sum(r["within_10pct"] for r in rows)
    print(f"within 10% of λ: {within} of {len(rows)}")
    if args.json:
        print(json.dumps({"rows": rows, "within_10pct": within, "configs": len(rows)}))


if __name__ == "__main__":
    main()
