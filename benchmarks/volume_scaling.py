"""The volume-scaling λ̂ against the SGLD λ̂ and the exact λ on reduced-rank regression.

For each configuration M,H,N with true rank r, ``estimate_dln(DLNProblem(...))`` with its
defaults (``DLN_SAMPLER``: warm-up, 16 chains × 2,000 draws at ε and at ε/2, the ε/2 run
reported, n = 10⁶, nβ = 1000, γ = 1) gives the SGLD λ̂ = nβ·(E[L_n] − L_n(w*)) and, from
the same draws, the volume-scaling λ̂_vol: the slope of log V̂(ε) against log ε, V̂ the
prior volume {ΔL ≤ ε} estimated by reweighting each draw by exp(nβ·ΔL)
(``rllc.estimators.volume``, which documents the fitting range and the jackknife SE).

    python benchmarks/volume_scaling.py [--configs 5,4,5:2 9,2,4:0 …] [--json]

Prints a table (config, Aoyagi case, multiplicity, exact λ, SGLD λ̂ ± SE, λ̂_vol ± SE,
draws in the fitted range, relative errors) and with ``--json`` one JSON object on its
last line. About 25–75 s per configuration on a quiet core. Figures: benchmarks/README.md,
"volume_scaling.py".
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

#: Aoyagi's four cases, multiplicities 1 and 2, true ranks 0 to 3.
CONFIGS = ["5,4,5:0", "5,4,5:1", "5,4,5:2", "4,3,8:1", "9,2,4:0", "3,8,4:2", "8,6,8:3"]


def parse(text: str) -> tuple[tuple[int, ...], int]:
    widths, rank = text.split(":")
    return tuple(int(w) for w in widths.split(",")), int(rank)


def run(text: str, seed: int) -> dict[str, Any]:
    from rllc.estimators.dln import DLNProblem, estimate_dln

    widths, rank = parse(text)
    problem = DLNProblem(widths=widths, true_rank=rank, seed=seed)
    start = time.perf_counter()
    out = estimate_dln(problem)
    exact = out["true_llc"]
    vol = out["llc_volume"]
    return {
        "config": text, "case": out["case"], "multiplicity": out["multiplicity"],
        "true_llc": exact,
        "llc_mean": out["llc_mean"], "llc_stderr": out["llc_stderr"],
        "llc_systematic": out["llc_systematic"],
        "relative_error": out["relative_error"],
        "llc_volume": vol, "llc_volume_stderr": out["llc_volume_stderr"],
        "llc_volume_draws": out["llc_volume_draws"],
        "volume_relative_error": None if vol is None or not exact else (vol - exact) / exact,
        "draws_used": out["chains"] * out["draws"],
        "burnin": out["burnin"], "seconds": time.perf_counter() - start,
    }


def _pm(mean: float | None, se: float | None) -> str:
    return "—" if mean is None else f"{mean:.3f} ± {se:.3f}"


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:+.1f}%"


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| config | case | m | λ | SGLD λ̂ ± SE | error | λ̂_vol ± SE | error | "
            "draws in range / used | seconds |")
    lines = [head, "|---" * 10 + "|"]
    for r in rows:
        widths, rank = r["config"].split(":")
        lines.append(
            f"| {widths} r = {rank} | {r['case'].split(' (')[0]} | {r['multiplicity']} | "
            f"{r['true_llc']:g} | {_pm(r['llc_mean'], r['llc_stderr'])} | "
            f"{_pct(r['relative_error'])} | "
            f"{_pm(r['llc_volume'], r['llc_volume_stderr'])} | "
            f"{_pct(r['volume_relative_error'])} | "
            f"{r['llc_volume_draws'] or 0:,} / {r['draws_used']:,} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=CONFIGS,
                        help="M,H,N:r, e.g. 5,4,5:2 (default: seven spanning Aoyagi's cases)")
    parser.add_argument("--seed", type=int, default=0, help="problem seed")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = []
    for text in args.configs:
        rows.append(run(text, args.seed))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    print(table(rows))
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
