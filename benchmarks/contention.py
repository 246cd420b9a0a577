"""``rllc estimate dln`` alone and beside one busy core, with rllc's default thread policy
(``rllc.kernels.threads``), in one run; prints both times and their ratio.

    python benchmarks/contention.py [--widths 5,4,5] [--true-rank 2] [--baseline]
                                    [--crossover] [--wait [--busy] [--draws 8]]
                                    [--repeats 3] [--json]

Each estimate runs as ``rllc estimate dln --widths … --true-rank … --json`` in a
subprocess whose environment has no thread or wait-policy overrides (``OMP_*``,
``GOMP_*``, ``KMP_*``, ``MKL_NUM_THREADS``, ``RLLC_THREADS`` removed), first alone, then
while a child Python process spins on one core. Wall and CPU seconds (user + system, from
``wait4``) and the load average before each run are printed, since the machine may be
shared. ``--baseline`` also runs the contended case the way it ran before the policy: the
cores' thread count (``--threads``) and libgomp's default spin-wait of 300,000 iterations
(``GOMP_SPINCOUNT=300000``, which overrides the passive policy in libgomp).

``--wait`` times the head fast path's steps (paper-shaped model, one layer's 8 heads × 4
chains as 32 rows) under libgomp's default spin-wait, a purely passive wait and rllc's
default, one process per run, alternating (``--busy``: beside one busy core): how the
spin count of ``rllc.kernels.threads.DEFAULT_WAIT`` was chosen.

``--crossover`` instead times the general (vmapped) sampler in this process on problems
of growing size at one thread and at every core (medians of alternating repeats): how
``SMALL_STEP_FLOPS`` was chosen. It also prints the thread count the policy gives the head
fast path on the paper-shaped model (``step_flops`` of one layer-0 ``HeadLayerStep`` of 32
rows, batch 16 × 256 tokens), which must be every core.

With ``--json`` the last line is one JSON object (``alone_seconds``,
``contended_seconds``, ``ratio``, ``threads``, load averages, …).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

# torch-free; torch loads later (--crossover only), after the wait policy is in place
from rllc.kernels.threads import set_wait_policy

set_wait_policy()

_OVERRIDES = ("OMP_", "GOMP_", "KMP_", "MKL_NUM_THREADS", "RLLC_THREADS")


def clean_env() -> dict[str, str]:
    """This environment without thread-count or OpenMP wait overrides."""
    return {k: v for k, v in os.environ.items() if not k.startswith(_OVERRIDES)}


def rllc_command() -> list[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "rllc")
    if os.path.exists(exe):
        return [exe]
    found = shutil.which("rllc")
    return [found] if found else [sys.executable, "-m", "rllc.cli.main"]


def timed_child(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run ``cmd`` to completion: (wall seconds, CPU seconds of the child, its stdout)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} … failed ({proc.returncode}): "
                         f"{err.strip().splitlines()[-1:]}")
    return wall, usage.ru_utime + usage.ru_stime, out


def estimate(args: list[str], env: dict[str, str]) -> dict:
    load = os.getloadavg()
    wall, cpu, out = timed_child([*rllc_command(), "estimate", "dln", *args, "--json"], env)
    result = json.loads(out.strip().splitlines()[-1])
    return {"seconds": wall, "cpu_seconds": cpu, "threads": result.get("threads"),
            "llc_mean": result["llc_mean"], "loadavg_before": [round(x, 2) for x in load]}


def busy_core() -> subprocess.Popen:
    """A child that keeps one core busy until killed."""
    return subprocess.Popen([sys.executable, "-c", "while True: pass"], env=clean_env())


def contention(args: argparse.Namespace) -> dict:
    dln = ["--widths", args.widths, "--true-rank", str(args.true_rank)]
    env = clean_env()
    print(f"rllc estimate dln {' '.join(dln)} (defaults), environment without thread "
          "overrides", file=sys.stderr)
    alone = estimate(dln, env)
    print(f"  alone:       {alone['seconds']:6.1f} s wall, {alone['cpu_seconds']:6.1f} s CPU, "
          f"{alone['threads']} threads, load before {alone['loadavg_before']}", file=sys.stderr)
    runs = {"alone": alone}
    cases = [("contended", dln, env)]
    if args.baseline:
        cores = len(os.sched_getaffinity(0))
        cases.append(("baseline_contended", [*dln, "--threads", str(cores)],
                      {**env, "GOMP_SPINCOUNT": "300000"}))
    for name, flags, case_env in cases:
        spinner = busy_core()
        try:
            time.sleep(1.0)  # let it take its core
            runs[name] = r = estimate(flags, case_env)
        finally:
            spinner.kill()
            spinner.wait()
        print(f"  {name + ':':13s}{r['seconds']:6.1f} s wall, {r['cpu_seconds']:6.1f} s CPU, "
              f"{r['threads']} threads, load before {r['loadavg_before']} (one core busy)",
              file=sys.stderr)
    out = {
        "command": f"rllc estimate dln {' '.join(dln)}",
        "alone_seconds": alone["seconds"],
        "contended_seconds": runs["contended"]["seconds"],
        "ratio": runs["contended"]["seconds"] / alone["seconds"],
        "threads": alone["threads"],
        "contended_threads": runs["contended"]["threads"],
        "alone_cpu_seconds": alone["cpu_seconds"],
        "contended_cpu_seconds": runs["contended"]["cpu_seconds"],
        "alone_loadavg_before": alone["loadavg_before"],
        "contended_loadavg_before": runs["contended"]["loadavg_before"],
        "cores": len(os.sched_getaffinity(0)),
    }
    if "baseline_contended" in runs:
        b = runs["baseline_contended"]
        out |= {"baseline_contended_seconds": b["seconds"],
                "baseline_contended_cpu_seconds": b["cpu_seconds"],
                "baseline_threads": b["threads"],
                "baseline_loadavg_before": b["loadavg_before"]}
    print(f"ratio contended / alone: {out['ratio']:.2f} (target ≤ 2.5 on 2 cores)")
    return out


def crossover(args: argparse.Namespace) -> dict:
    """Per-step time of the general sampler at 1 thread and at every core, by problem size."""
    import torch
    from torch import nn

    from rllc.estimators import SGLDConfig, sample, supervised_objective
    from rllc.kernels.threads import SMALL_STEP_FLOPS, choose_threads, dense_step_flops
    from rllc.models import TransformerConfig
    from rllc.models.head_step import step_flops

    cores = len(os.sched_getaffinity(0))

    def mlp(width: int, batch: int):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(16, width), nn.Tanh(), nn.Linear(width, width),
                              nn.Tanh(), nn.Linear(width, 4))
        x = torch.randn(4 * batch, 16)
        with torch.no_grad():
            y = model(x) + 0.1 * torch.randn(4 * batch, 4)
        return model, (x, y)

    def per_step(model, data, cfg) -> float:
        stamps: list[float] = []
        sample(model, supervised_objective(model), data, config=cfg,
               progress=lambda step, total: stamps.append(time.perf_counter()))
        return (stamps[-1] - stamps[1]) / (len(stamps) - 2)  # the first steps warm up

    rows = []
    chains = 16
    for width, batch in ((4, 4), (16, 16), (32, 64), (64, 64), (128, 128), (128, 256),
                         (192, 256), (256, 256), (512, 256)):
        model, data = mlp(width, batch)
        weights = sum(p.numel() for p in model.parameters())
        flops = dense_step_flops(weights, batch, chains)
        steps = int(min(400, max(12, 2e9 / flops)))
        cfg = SGLDConfig(step_size=1e-5, localization=100.0, nbeta=10.0, chains=chains,
                         draws=steps, burnin=0, batch_size=batch)
        times: dict[int, list[float]] = {1: [], cores: []}
        for _ in range(args.repeats):
            for n in times:
                torch.set_num_threads(n)
                times[n].append(per_step(model, data, cfg))
        one, many = statistics.median(times[1]), statistics.median(times[cores])
        rows.append({"width": width, "batch": batch, "step_flops": flops,
                     "one_thread_ms": 1e3 * one, f"{cores}_threads_ms": 1e3 * many,
                     "speedup": one / many, "policy_threads": choose_threads(flops)})
        r = rows[-1]
        print(f"  width {width:4d}, batch {batch:3d}: {flops:8.1e} FLOPs/step, 1 thread "
              f"{r['one_thread_ms']:8.3f} ms, {cores} threads {1e3 * many:8.3f} ms, "
              f"speedup {r['speedup']:.2f}, policy {r['policy_threads']}", file=sys.stderr)
    paper = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, n_ctx=256,
                              d_vocab=5000, positional="residual")
    head_flops = sum(step_flops(paper, 0, 32, 8, 16, 256).values())
    out = {"cores": cores, "small_step_flops": SMALL_STEP_FLOPS, "rows": rows,
           "loadavg": list(os.getloadavg()),
           "paper_head_step_flops": head_flops,
           "paper_head_threads": choose_threads(head_flops)}
    print(f"head fast path, paper-shaped model, layer 0, 32 rows: {head_flops:.2e} "
          f"FLOPs/step → {out['paper_head_threads']} of {cores} threads")
    return out


FAST_PATH_CHILD = r"""
import json, statistics, sys, time
import torch
from rllc.estimators import SGLDConfig
from rllc.models import AttentionOnlyTransformer, TransformerConfig
from rllc.models.fastpath import sample_heads

paper = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, n_ctx=256,
                          d_vocab=5000, positional="residual")
torch.manual_seed(0)
model = AttentionOnlyTransformer(paper).eval()
tokens = torch.randint(0, paper.d_vocab, (128, paper.n_ctx))
cfg = SGLDConfig(step_size=1e-3, localization=200.0, nbeta=30.0, chains=4,
                 draws=int(sys.argv[1]), burnin=0, batch_size=16)
out = {"threads": torch.get_num_threads()}
for layer in (1, 0):
    stamps = []
    sample_heads(model, tokens, [f"{layer}:{h}" for h in range(8)], cfg, init_loss=5.0,
                 precision="int8", progress=lambda s, t: stamps.append(time.perf_counter()))
    out[f"layer{layer}"] = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))
print(json.dumps(out))
"""

#: OpenMP wait settings compared by ``--wait`` (each run starts from ``clean_env``).
WAITS = {"spin 300,000 (libgomp default)": {"GOMP_SPINCOUNT": "300000"},
         "passive (spin 0)": {"OMP_WAIT_POLICY": "PASSIVE"},
         "rllc default": {}}


def wait_policies(args: argparse.Namespace) -> dict:
    """Per-step seconds of the head fast path (paper-shaped model, random weights, 8 heads
    × 4 chains of one layer as 32 rows, int8, every core) under each wait setting, one
    process per run (OpenMP reads the policy when torch loads), alternating; with
    ``--busy`` beside a process spinning on one core. rllc's default comes from
    ``rllc.kernels.threads.set_wait_policy`` in the child."""
    child = "from rllc.kernels.threads import set_wait_policy; set_wait_policy()\n"
    runs: dict[str, list[dict]] = {name: [] for name in WAITS}
    for _ in range(args.repeats):
        for name, extra in WAITS.items():
            spinner = busy_core() if args.busy else None
            try:
                load = [round(x, 2) for x in os.getloadavg()]
                _, _, out = timed_child(
                    [sys.executable, "-c", child + FAST_PATH_CHILD, str(args.draws)],
                    {**clean_env(), **extra})
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            r = json.loads(out.strip().splitlines()[-1]) | {"loadavg_before": load}
            runs[name].append(r)
            print(f"  {name:31s} layer 1 {r['layer1']:.3f} s, layer 0 {r['layer0']:.3f} s "
                  f"per step, {r['threads']} threads, load before {load}", file=sys.stderr)
    medians = {name: {f"layer{i}": statistics.median(r[f"layer{i}"] for r in rs)
                      for i in (1, 0)} for name, rs in runs.items()}
    for name, m in medians.items():
        print(f"{name:31s} median step: layer 1 {m['layer1']:.3f} s, layer 0 "
              f"{m['layer0']:.3f} s{' (one core busy)' if args.busy else ''}")
    return {"busy": args.busy, "medians": medians, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--widths", default="5,4,5")
    parser.add_argument("--true-rank", type=int, default=2)
    parser.add_argument("--baseline", action="store_true",
                        help="also run the contended case with the old threading")
    parser.add_argument("--crossover", action="store_true",
                        help="time the sampler by problem size at 1 thread and every core")
    parser.add_argument("--wait", action="store_true",
                        help="time the head fast path under each OpenMP wait setting")
    parser.add_argument("--busy", action="store_true", help="--wait beside one busy core")
    parser.add_argument("--draws", type=int, default=8, help="--wait: steps per layer")
    parser.add_argument("--repeats", type=int, default=3, help="--crossover, --wait repeats")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.crossover:
        out = crossover(args)
    elif args.wait:
        out = wait_policies(args)
    else:
        out = contention(args)
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
