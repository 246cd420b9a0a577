"""Sweep throughput: cells per minute with 1 and 2 Ray workers, side by side.

The same tiny sweep (checkpoints of a briefly trained 2-layer × 2-head model, every head,
the dyck dataset, two seeds) runs into a fresh store once per worker count, on one local
Ray runtime with 2 CPUs. Wall-clock time covers the whole ``run_sweep`` (actor start-up,
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


def sweep_spec(run: str, store: str, workers: int, draws: int) -> dict:
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
        "resources": {"max_workers": workers, "num_cpus": 1},
    }


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
            for workers in (1, 2):
                seconds, per_cell, cells = [], [], 0
                for i in range(args.repeats):
                    store = str(Path(tmp, f"store-{workers}-{i}"))
                    spec = parse_spec(sweep_spec(run, store, workers, args.draws))
                    report = run_sweep(spec, progress=False)
                    assert report.cells_done == report.cells_total, report.as_dict()
                    seconds.append(report.seconds)
                    per_cell += [c["seconds"] for c in report.summaries]
                    cells = report.cells_total
                wall = statistics.median(seconds)
                rows.append({"workers": workers, "cells": cells, "seconds": wall,
                             "cells_per_minute": 60 * cells / wall,
                             "cell_seconds": statistics.mean(per_cell)})
        finally:
            ray.shutdown()

    speedup = rows[1]["cells_per_minute"] / rows[0]["cells_per_minute"]
    # s/cell: mean sampling time of one cell inside its worker; if it grows with the
    # worker count, the workers are competing for cores (e.g. other load on the machine).
    print(f"{'workers':>7}  {'cells':>5}  {'seconds':>8}  {'cells/min':>9}  {'s/cell':>6}")
    for r in rows:
        print(f"{r['workers']:>7}  {r['cells']:>5}  {r['seconds']:>8.1f}  "
              f"{r['cells_per_minute']:>9.1f}  {r['cell_seconds']:>6.2f}")
    print(f"speed-up with 2 workers: {speedup:.2f}× ({args.draws} draws × 2 chains per cell)")
    if args.json:
        print(json.dumps({
            "cells": rows[0]["cells"],
            "draws": args.draws,
            "cells_per_minute_1": rows[0]["cells_per_minute"],
            "cells_per_minute_2": rows[1]["cells_per_minute"],
            "seconds_1": rows[0]["seconds"],
            "seconds_2": rows[1]["seconds"],
            "cell_seconds_1": rows[0]["cell_seconds"],
            "cell_seconds_2": rows[1]["cell_seconds"],
            "speedup": speedup,
        }))


if __name__ == "__main__":
    main()
