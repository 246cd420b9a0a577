"""Draws per second for 1, 4 and 16 chains: one batched (vmapped) run against a sequential
loop of one-chain runs, timed side by side in one process (medians of alternating repeats).

    python benchmarks/chains.py [--repeats 3] [--draws 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn

from rllc.estimators import SGLDConfig, sample, supervised_objective


def problem(width: int = 64, n: int = 4096) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, 4))
    x = torch.randn(n, 16)
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(n, 4)
    return model, (x, y)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    model, data = problem()
    obj = supervised_objective(model)
    rows = []
    for chains in (1, 4, 16):
        cfg = SGLDConfig(step_size=1e-4, localization=100.0, nbeta=100.0, chains=chains,
                         draws=args.draws, batch_size=256)
        batched, looped = [], []
        for _ in range(args.repeats):  # alternate so drift in machine load hits both sides
            batched.append(timed(lambda cfg=cfg: sample(model, obj, data, config=cfg)))
            looped.append(timed(lambda cfg=cfg, c=chains: [
                sample(model, obj, data, config=cfg, chain_ids=[k]) for k in range(c)
            ]))
        total = chains * args.draws
        b, s = statistics.median(batched), statistics.median(looped)
        rows.append({"chains": chains, "batched_draws_per_s": total / b,
                     "loop_draws_per_s": total / s, "speedup": s / b})

    # The table always prints; --json adds one machine-readable object on the last line.
    print(f"{'chains':>6}  {'batched draws/s':>15}  {'loop draws/s':>12}  {'speedup':>7}")
    for r in rows:
        print(f"{r['chains']:>6}  {r['batched_draws_per_s']:>15.0f}  "
              f"{r['loop_draws_per_s']:>12.0f}  {r['speedup']:>6.2f}×")
    print(f"(median of {args.repeats} alternating repeats, {args.draws} draws, "
          f"{torch.get_num_threads()} threads)")
    if args.json:
        print(json.dumps({"rows": rows}))


if __name__ == "__main__":
    main()
