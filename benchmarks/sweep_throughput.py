"""Sweep throughput: cells per minute with 1 and 2 Ray workers, and with the heads of a
layer batched into one work unit or not, side by side.

The same tiny sweep (checkpoints of a briefly trained 2-layer × 2-head model, every head,
the dyck dataset, two seeds) runs into a fresh store once per setting (1 worker one cell
at a time, 1 worker with batched heads, 2 workers with batched heads), on one local Ray
runtime with 2 CPUs. Wall-clock time covers the whole ``run_sweep`` (actor start-up,
checkpoint loading, sampling, writing traces), as a user would see it; ``s/cell`` is the
mean sampling time of one cell inside its worker.

    python benchmarks/sweep_throughput.py [--run DIR] [--draws 40] [--repeats 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
from pathlib import Path

import ray

from rllc.jobs.spec import parse_spec
from rllc.jobs.sweep import run_sweep
from rllc.jobs.train import QUICK, train


def tiny_run(out: str) -> str:
    """Train the tiny model for 4 steps (checkpoints at steps 0, 1, 4) into ``out``."""
    cfg = QUICK.model_copy(update={"steps": 4, "log_checkpoints": 2, "eval_sequences": 8})
    train(cfg, out, progress=False)
    return out


def sweep_spec(run: str, store: str, workers: int, draws: int, batch_heads: bool) -> dict:
    return {
        "name": "throughput",
        "checkpoints": [run],
        "components": ["0:*", "1:*"],
        "datasets": ["dyck"],
        "seeds": [0, 1],
        "sampler": {"chains": 2, "draws": draws, "batch_size": 8, "nbeta": 10.0,
                    "step_size": 1e-4, "localization": 100.0},
        "store": store,
        "data": {"n_sequences": 32},
        "compute": {"batch_heads": batch_heads},
        "resources": {"max_workers": workers, "num_cpus": 1},
    }


#: (workers, batch_heads) of each timed setting, in the order run
SETTINGS = ((1, False), (1, True), (2, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", help="Run directory of checkpoints (default: train a tiny one).")
    parser.add_argument("--draws", type=int, default=40, help="Draws per chain per cell.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per worker count (median).")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        run = args.run or tiny_run(str(Path(tmp, "run")))
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
        try:
            rows = []
            for workers, batch in SETTINGS:
                seconds, per_cell, cells = [], [], 0
                for i in range(args.repeats):
                    store = str(Path(tmp, f"store-{workers}-{batch}-{i}"))
                    spec = parse_spec(sweep_spec(run, store, workers, args.draws, batch))
                    report = run_sweep(spec, progress=False)
                    assert report.cells_done == report.cells_total, report.as_dict()
                    seconds.append(report.seconds)
                    per_cell += [c["seconds"] for c in report.summaries]
                    cells = report.cells_total
                wall = statistics.median(seconds)
                rows.append({"workers": workers, "batch_heads": batch, "cells": cells,
                             "seconds": wall,
                             "cells_per_minute": 60 * cells / wall,
                             "cell_seconds": statistics.mean(per_cell)})
        finally:
            ray.shutdown()

    single, batched, two = rows
    speedup = two["cells_per_minute"] / batched["cells_per_minute"]
    batching = batched["cells_per_minute"] / single["cells_per_minute"]
    # s/cell: mean sampling time of one cell inside its worker (a batched unit's time is
    # shared by its cells); if it grows with the worker count, the workers are competing
    # for cores (e.g. other load on the machine).
    print(f"{'workers':>7}  {'heads':>9}  {'cells':>5}  {'seconds':>8}  {'cells/min':>9}  "
          f"{'s/cell':>6}")
    for r in rows:
        heads = "batched" if r["batch_heads"] else "one/cell"
        print(f"{r['workers']:>7}  {heads:>9}  {r['cells']:>5}  {r['seconds']:>8.1f}  "
              f"{r['cells_per_minute']:>9.1f}  {r['cell_seconds']:>6.2f}")
    print(f"speed-up from batching a layer's heads (1 worker): {batching:.2f}×")
    print(f"speed-up with 2 workers: {speedup:.2f}× ({args.draws} draws × 2 chains per cell)")
    if args.json:
        print(json.dumps({
            "cells": rows[0]["cells"],
            "draws": args.draws,
            "cells_per_minute_1": batched["cells_per_minute"],
            "cells_per_minute_2": two["cells_per_minute"],
            "cells_per_minute_1_unbatched": single["cells_per_minute"],
            "seconds_1": batched["seconds"],
            "seconds_2": two["seconds"],
            "cell_seconds_1": batched["cell_seconds"],
            "cell_seconds_2": two["cell_seconds"],
            "speedup": speedup,
            "batching_speedup": batching,
        }))


if __name__ == "__main__":
    main()
