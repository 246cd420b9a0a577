"""Seconds of every baseline for all heads of one checkpoint.

The issue's budget: all baselines (Hessian trace, both Fisher traces, Hessian rank,
ablations) of the 16 heads of one checkpoint of the default model in ≤ 5 minutes on the
2-core CPU, on a stated data subset and probe count. The heads go in one call per layer,
as a sweep's work unit does (the layer's frozen prefix and clean run shared), with the
options of ``BaselineOptions`` (the defaults unless flags say otherwise).

    python benchmarks/baselines_speed.py CHECKPOINT [--dataset train] [--threads 2]
                                         [--sequences N] [--probes N] [--json]

CHECKPOINT is a checkpoint or run directory of the default model (``rllc train --out
runs/demo``, about 5 minutes on one core). Prints seconds per metric and head and the
total; ``--json`` adds ``total_seconds``, ``per_metric``, ``heads``, ``options``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from rllc.jobs.metrics import BASELINES, BaselineOptions
from rllc.jobs.session import CheckpointSession
from rllc.jobs.spec import DataOptions
from rllc.jobs.sweep_plan import expand_checkpoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--dataset", default="train")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int)
    parser.add_argument("--probes", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    given = {"sequences": args.sequences, "probes": args.probes}
    options = BaselineOptions(**{k: v for k, v in given.items() if v is not None})
    target = expand_checkpoints([args.checkpoint])[-1]
    session = CheckpointSession(target, DataOptions(n_sequences=max(options.sequences, 8)),
                                device="cpu")
    cfg = session.model.cfg
    start = time.perf_counter()
    results = {}
    for layer in range(cfg.n_layers):
        heads = [f"{layer}:{h}" for h in range(cfg.n_heads)]
        t0 = time.perf_counter()
        results |= session.baselines(heads, args.dataset, BASELINES, options)
        print(f"layer {layer}: {len(heads)} heads in {time.perf_counter() - t0:.1f} s",
              flush=True)
    total = time.perf_counter() - start
    per_metric = {m.value: sum(r["seconds"].get(m.value, 0.0) for r in results.values())
                  for m in BASELINES}
    print(f"{target}: {len(results)} heads, {options.sequences} sequences, "
          f"{options.probes} Hutchinson probes, rank {options.rank_probes} × "
          f"{options.lanczos_steps} Lanczos, {args.threads} threads: {total:.1f} s")
    for name, secs in per_metric.items():
        print(f"  {name:15s} {secs:7.1f} s  ({secs / len(results):.2f} s per head)")
    ranks = [r["hessian_rank"] for r in results.values()]
    print(f"  median Hessian rank {statistics.median(ranks):.0f} of "
          f"{next(iter(results.values()))['num_weights']} weights")
    if args.json:
        heads = {h: {k: v for k, v in r.items() if k != "seconds"}
                 for h, r in results.items()}
        print(json.dumps({"total_seconds": total, "per_metric": per_metric, "heads": heads,
                          "options": options.model_dump(), "checkpoint": target}))


if __name__ == "__main__":
    main()
