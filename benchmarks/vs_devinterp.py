"""rllc against devinterp on one 16-head wrLLC point of the paper-shaped model.

Both libraries sample the same function (rllc's weights loaded into a TransformerLens
``HookedTransformer`` by ``rllc.models.transformer_lens``, logits checked to agree to
1e-4), on the same data, batch size and SGLD hyperparameters (ε = 1e-3, γ = 200, nβ = 30,
4 chains, L(w*) from 32 batches), each restricting weights its own way (devinterp:
``create_param_masks(model, "l0h1")``; rllc: ``sample_heads``). The two sides run
alternately, each in its own process (devinterp with default process settings, rllc with
``sample_heads``'s CPU tuning), and the median ratio of their times is reported, with
both sets of estimates (2-standard-error agreement rule of docs/cli.md §6) and rllc's achieved
GFLOP/s against a matmul peak measured here. By default all chains share their
minibatches, as both libraries do by default; with ``--independent-batches`` every chain
has its own on both sides, so chains are independent and the ESS-based standard errors
behind the agreement check do not understate the truth.

By default both sides run the same few draws (devinterp only on a subset of heads, one
or more per layer; rllc on all 16, since it batches a layer's heads) and the time of the
full 16 heads × 4 chains × 200 draws point is extrapolated from the measured per-step
times (the output says so); ``--full`` runs the whole point on both sides (≈ 2 h of
devinterp on a 2-core CPU).

    python benchmarks/vs_devinterp.py [--full] [--draws 8] [--heads 0:1,1:6|all] [--repeats 3]
                                      [--precision int8|bfloat16|float32]
                                      [--independent-batches]
                                      [--train-steps 400] [--json]

``benchmarks/README.md`` has the measured figures and the commands that produced them.

Needs the optional extra ``bench`` (devinterp 2.0.1, transformer-lens 3.9.0): ``make bench``
installs it and runs this script with ``--draws 8 --repeats 3``; without it the script exits
with status 2.
"""

from __future__ import annotations

import os

# Set before torch loads OpenMP: on a shared 2-core machine, spinning OpenMP workers turn
# every parallel region into a wait for a descheduled thread. Both sides run with it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TQDM_DISABLE", "1")  # devinterp's per-chain bars

import argparse
import importlib.util
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from rllc.estimators import SGLDConfig, summarize
from rllc.estimators.mcse import epoch_draws
from rllc.kernels.cputune import tune_cpu
from rllc.kernels.precision import HELP as PRECISION_HELP
from rllc.kernels.precision import Precision
from rllc.models import AttentionOnlyTransformer, TransformerConfig, lm_loss
from rllc.models.fastpath import sample_heads
from rllc.models.transformer_lens import max_logit_diff, to_hooked_transformer

PAPER = TransformerConfig(n_layers=2, n_heads=8, d_model=256, d_head=32, n_ctx=256,
                          d_vocab=5000, positional="residual")
BATCH, CHAINS, FULL_DRAWS, INIT_BATCHES = 16, 4, 200, 32
EPS, GAMMA, NBETA = 1e-3, 200.0, 30.0


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def require_bench_extra() -> None:
    """Exit 2 with one line when the ``bench`` extra is not installed."""
    missing = [m for m in ("devinterp", "transformer_lens") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"vs_devinterp.py: {', '.join(missing)} not installed: run `make bench` "
              "(installs the bench extra: devinterp==2.0.1, transformer-lens==3.9.0)",
              file=sys.stderr)
        sys.exit(2)


# ---- the model and its data ------------------------------------------------------------

def synthetic_tokens(n: int, seed: int) -> torch.Tensor:
    """``[n, n_ctx]`` tokens with structure a 2-layer attention model can learn: Zipfian
    unigrams, and with probability 0.6 token t is a fixed function of token t−1 or t−2
    (bigram and skip-bigram tables)."""
    g = torch.Generator().manual_seed(seed)
    V, T = PAPER.d_vocab, PAPER.n_ctx
    zipf = 1.0 / torch.arange(1, V + 1, dtype=torch.float64)
    tokens = torch.multinomial(zipf / zipf.sum(), n * T, replacement=True, generator=g)
    tokens = tokens.view(n, T)
    table = torch.Generator().manual_seed(12345)  # the same rules for every split
    bigram, skip = torch.randperm(V, generator=table), torch.randperm(V, generator=table)
    for t in range(2, T):
        u = torch.rand(n, generator=g)
        tokens[:, t] = torch.where(u < 0.3, bigram[tokens[:, t - 1]],
                                   torch.where(u < 0.6, skip[tokens[:, t - 2]], tokens[:, t]))
    return tokens


CACHE = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                     "rllc", "bench")


def trained_model(steps: int) -> AttentionOnlyTransformer:
    """The paper-shaped model after ``steps`` AdamW steps on synthetic data (so that w* sits
    near a minimum and the heads carry signal); random init if ``steps`` is 0. Trained
    weights are cached in ``~/.cache/rllc/bench`` (training takes minutes on a CPU)."""
    torch.manual_seed(0)
    model = AttentionOnlyTransformer(PAPER)
    path = os.path.join(CACHE, f"paper-{steps}.pt")
    if steps and os.path.exists(path):
        model.load_state_dict(torch.load(path, weights_only=True))
        log(f"loaded the model trained {steps} steps from {path}")
    elif steps:
        data = synthetic_tokens(steps * BATCH, seed=1)
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.05)
        for i in range(steps):
            batch = data[i * BATCH : (i + 1) * BATCH]
            loss = lm_loss(model(batch), batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        log(f"trained {steps} steps: loss {loss.item():.3f}")
        os.makedirs(CACHE, exist_ok=True)
        torch.save(model.state_dict(), path + ".tmp")
        os.replace(path + ".tmp", path)
    return model.eval()


def default_precision(device: str) -> Precision:
    """rllc's precision when none is asked for: bfloat16 off the CPU; on a CPU int8 where it
    has bf16 dot products (AVX-512 BF16 or AMX, /proc/cpuinfo), else float32. Without them
    torch's bf16 and int8 matmuls fall back to scalar loops: 0.4 GFLOP/s against 46 for
    fp32 on an AVX2-only EPYC (a 2048³ ``torch.mm``)."""
    if device != "cpu":
        return Precision.BFLOAT16
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        flags = []
    return Precision.INT8 if {"avx512_bf16", "amx_bf16"} & set(flags) else Precision.FLOAT32


def check_same_function(model, tl, tokens: torch.Tensor) -> float:
    diff = max_logit_diff(model, tl, tokens)
    if diff > 1e-4:
        raise RuntimeError(f"TransformerLens logits differ from rllc's by {diff:.2e} > 1e-4")
    return diff


# ---- the two samplers ----------------------------------------------------------------

@dataclass
class Run:
    total_s: float  # wall time of the whole call(s)
    # steady-state seconds per (head, chain) SGLD step, by layer: the time between the
    # first and the last step's start over the steps between, so that one-off work of a
    # chain (its first step's allocations, teardown) does not inflate per-step times
    # measured on a few draws
    step_s: dict[int, float]
    fixed_s: float  # all the rest: per head (devinterp) or per point (rllc)
    llc: dict[str, tuple[float, float]]  # head → (λ̂, standard error)
    flops_per_step: dict[int, float] | None = None  # rllc: per (head, chain) step
    paired: dict[str, tuple[float, float]] | None = None  # rllc: the paired estimator's
    # devinterp: per-draw plain contributions nβ·(L_B(w_t) − L(w*)) [chain, draw] per head
    traces: dict[str, np.ndarray] | None = None
    results: dict | None = None  # rllc: sample_heads's SamplingResult per head


def devinterp_run(tl, tokens: torch.Tensor, heads: list[str], draws: int, workdir: str,
                  independent: bool, device: str, batch_size: int = BATCH,
                  seed: int = 100, init_batches: int = INIT_BATCHES) -> Run:
    """devinterp's ``llc`` once per head (its chains run one after another); ``seed`` is
    devinterp's ``init_seed`` (chain c: ``seed + c``; default devinterp's), L(w*) from
    ``init_batches`` batches per chain."""
    from datasets import Dataset
    from devinterp.slt import sampling
    from devinterp.slt.llc import llc
    from devinterp.slt.weight_restrictions import create_param_masks

    # Each chain's steady-state step time: the interval between its first and last step's
    # loss evaluation over the steps between. Everything else (L(w*) per chain, model
    # copies, Zarr stores, first-step allocations) is devinterp's per-head fixed cost.
    steady = {"s": 0.0, "n": 0}
    original = sampling.sample_single_chain

    def timed_chain(*args, evaluate, **kwargs):
        stamps: list[float] = []

        def timed_evaluate(*a, **k):
            stamps.append(time.perf_counter())
            return evaluate(*a, **k)

        try:
            return original(*args, evaluate=timed_evaluate, **kwargs)
        finally:
            if len(stamps) > 1:
                steady["s"] += stamps[-1] - stamps[0]
                steady["n"] += len(stamps) - 1

    dataset = Dataset.from_dict({"input_ids": tokens.numpy()}).with_format("torch")
    per_step: dict[int, list[float]] = {}
    fixed, estimates, traces = [], {}, {}
    # draws per whole epoch, for the SE's blocks and the burn-in (as SamplingResult.epoch)
    epoch = epoch_draws(len(tokens), batch_size, 1)
    sampling.sample_single_chain = timed_chain
    try:
        start_all = time.perf_counter()
        for head in heads:
            layer, h = (int(x) for x in head.split(":"))
            out = os.path.join(workdir, f"devinterp-{layer}-{h}.zarr")
            steady.update(s=0.0, n=0)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = llc(tl, dataset, {}, lr=EPS, n_beta=NBETA, localization=GAMMA,
                          param_masks=create_param_masks(tl, f"l{layer}h{h}"),
                          num_chains=CHAINS, num_draws=draws, batch_size=batch_size,
                          num_init_loss_batches=init_batches, output_path=out,
                          match_sampling_input_ids_across_chains=not independent,
                          init_seed=seed, device=device)
            seconds = time.perf_counter() - start
            trace = np.asarray(res.loss_trace.values, dtype=np.float64)  # [chain, step]
            traces[head] = NBETA * (trace - float(res.init_loss))
            est = summarize(traces[head], independent=independent, epoch=epoch)
            estimates[head] = (est.llc_mean, est.llc_stderr)
            shutil.rmtree(out, ignore_errors=True)  # devinterp never deletes its Zarr store
            step = steady["s"] / max(1, steady["n"])
            per_step.setdefault(layer, []).append(step)
            fixed.append(seconds - step * CHAINS * draws)
        total = time.perf_counter() - start_all
    finally:
        sampling.sample_single_chain = original
    return Run(total, {k: statistics.mean(v) for k, v in per_step.items()},
               statistics.mean(fixed), estimates, traces=traces)


def _devinterp_worker(conn, state: dict, tokens: torch.Tensor, tuned: bool,
                      device: str) -> None:
    """Child process: devinterp with default process settings (or rllc's), serving runs."""
    try:
        if tuned:
            tune_cpu()
        model = AttentionOnlyTransformer(PAPER)
        model.load_state_dict(state)
        tl = to_hooked_transformer(model, device)
        conn.send(("ready", check_same_function(model, tl, tokens[:4])))
        while (msg := conn.recv()) is not None:
            args, kwargs = msg
            conn.send(("run", devinterp_run(tl, tokens, *args, device, **kwargs)))
    except Exception:  # report to the parent instead of dying silently
        import traceback

        conn.send(("error", traceback.format_exc()))


class DevinterpProcess:
    """devinterp in a spawned process: it runs as a devinterp user would run it (default
    allocator and float settings), while rllc's process has ``sample_heads``'s CPU tuning
    (freed memory kept, denormals flushed). Calls block, so the two sides alternate and
    never overlap."""

    def __init__(self, model: AttentionOnlyTransformer, tokens: torch.Tensor,
                 tuned: bool, device: str) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.proc = ctx.Process(target=_devinterp_worker, daemon=True,
                                args=(child, state, tokens.cpu(), tuned, device))
        self.proc.start()
        self.logit_diff = self._receive("ready")

    def _receive(self, kind: str):
        tag, value = self.conn.recv()
        if tag == "error":
            raise RuntimeError(f"devinterp process failed:\n{value}")
        assert tag == kind, tag
        return value

    def run(self, heads: list[str], draws: int, workdir: str, independent: bool,
            **kwargs) -> Run:
        """``devinterp_run`` in the child (``kwargs``: its ``batch_size``, ``seed``,
        ``init_batches``)."""
        self.conn.send(((heads, draws, workdir, independent), kwargs))
        return self._receive("run")

    def close(self) -> None:
        self.conn.send(None)
        self.proc.join(timeout=30)


def rllc_run(model, tokens: torch.Tensor, heads: list[str], draws: int, precision: str,
             independent: bool, batch_size: int = BATCH, seed: int = 0,
             init_batches: int = INIT_BATCHES) -> Run:
    """rllc's ``sample_heads``: L(w*) once, then each layer's heads × chains as one batch."""
    cfg = SGLDConfig(step_size=EPS, localization=GAMMA, nbeta=NBETA, chains=CHAINS,
                     draws=draws, batch_size=batch_size, init_loss_batches=init_batches,
                     independent_batches=independent, seed=seed)
    runs: list[list[float]] = []  # when each SGLD step ended, per layer run

    def stamp(step: int, total: int) -> None:
        if step == 1:
            runs.append([])
        runs[-1].append(time.perf_counter())

    start = time.perf_counter()
    results = sample_heads(model, tokens, heads, cfg, precision=precision, progress=stamp)
    total = time.perf_counter() - start
    # one result per layer run (its first head's), in the order the layers ran
    firsts = {r.extra["batch_heads"][0]: r for r in results.values()}
    batches: dict[int, tuple[float, float, int]] = {}  # layer → (s/step, flops/step, heads)
    for (head, res), stamps in zip(firsts.items(), runs, strict=True):
        layer = int(head.split(":")[0])
        n = len(res.extra["batch_heads"])
        steady = (stamps[-1] - stamps[0]) / (len(stamps) - 1) if len(stamps) > 1 else (
            res.extra["batch_seconds"] / draws)
        batches[layer] = (steady, res.extra["flops_per_step"] * n, n)
    step_s = {layer: s / (CHAINS * n) for layer, (s, _, n) in batches.items()}
    flops = {layer: f / (CHAINS * n) for layer, (_, f, n) in batches.items()}
    fixed = total - sum(s * draws for s, _, _ in batches.values())
    estimates, paired = {}, {}
    for h, r in results.items():
        plain, pair = r.llc(estimator="plain"), r.llc(estimator="paired")
        estimates[h], paired[h] = (plain.llc_mean, plain.llc_stderr), (pair.llc_mean,
                                                                      pair.llc_stderr)
    return Run(total, step_s, fixed, estimates, flops, paired, results=results)


def full_point_seconds(run: Run, heads_per_layer: int, per_head_fixed: bool) -> float:
    """Seconds for 16 heads × 4 chains × 200 draws from measured per-step times."""
    steps = heads_per_layer * CHAINS * FULL_DRAWS
    fixed = run.fixed_s * (heads_per_layer * len(run.step_s) if per_head_fixed else 1)
    return fixed + sum(s * steps for s in run.step_s.values())


def matmul_peak(dtype: torch.dtype, device: str, n: int = 2048, repeats: int = 5) -> float:
    """Best GFLOP/s (GOP/s for int8: ``torch._int_mm``, int32 accumulation) of an n×n×n
    matmul in ``dtype`` on ``device``."""
    if dtype == torch.int8:
        a, b = (torch.randint(-127, 128, (n, n), dtype=dtype, device=device) for _ in range(2))
        mm = torch._int_mm
    else:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        mm = torch.mm
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    mm(a, b)
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        mm(a, b)
        sync()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def agree(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """docs/cli.md §6: a ± SEa and b ± SEb agree when |a − b| ≤ 2·√(SEa² + SEb²)."""
    return abs(a[0] - b[0]) <= 2 * math.hypot(a[1], b[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="all 16 heads × 200 draws on both sides (hours on a CPU)")
    parser.add_argument("--draws", type=int, default=8, help="draws per chain (default 8)")
    parser.add_argument("--heads", default="0:1,1:6",
                        help="heads devinterp samples when not --full (≥ one per layer), "
                        "or 'all'")
    parser.add_argument("--repeats", type=int, default=3, help="alternating timed repeats")
    parser.add_argument("--precision", type=Precision, choices=list(Precision),
                        help=f"rllc's matmul precision (default: int8 on a CPU with bf16 "
                        f"dot products, float32 on other CPUs, bfloat16 elsewhere): "
                        f"{PRECISION_HELP}")
    parser.add_argument("--train-steps", type=int, default=400,
                        help="AdamW steps before sampling (0: random init)")
    parser.add_argument("--samples", type=int, default=512, help="sequences in the dataset")
    parser.add_argument("--independent-batches", action="store_true",
                        help="each chain draws its own minibatches on both sides, so chains "
                        "are independent and the ESS-based standard errors of the agreement "
                        "check are honest (default: all chains share them, both libraries' "
                        "default, whose standard errors understate the truth)")
    parser.add_argument("--devinterp-tuned", action="store_true",
                        help="give devinterp's process rllc's CPU tuning too (freed memory "
                        "kept, denormals flushed: rllc.kernels.cputune)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where both sides sample (default: cuda when available)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.precision is None:  # int8 is CPU-only (rllc.kernels.precision)
        args.precision = default_precision(args.device)

    require_bench_extra()
    all_heads = PAPER.head_ids
    draws = FULL_DRAWS if args.full else args.draws
    dev_heads = (all_heads if args.full or args.heads == "all"
                 else [h.strip() for h in args.heads.split(",")])
    if {int(h.split(":")[0]) for h in dev_heads} != set(range(PAPER.n_layers)):
        sys.exit("--heads needs at least one head of every layer (per-layer step times differ)")
    threads = torch.get_num_threads()
    log(f"{threads} threads; measuring matmul peaks")
    peaks = {p: matmul_peak(getattr(torch, p.value), args.device)
             for p in Precision}  # int8: torch._int_mm

    model = trained_model(args.train_steps)
    tokens = synthetic_tokens(args.samples, seed=2)
    log("starting the devinterp process")
    devinterp = DevinterpProcess(model, tokens, args.devinterp_tuned, args.device)
    model, tokens = model.to(args.device), tokens.to(args.device)
    log(f"TransformerLens logits agree with rllc's to {devinterp.logit_diff:.1e}")
    tuning = tune_cpu()  # what sample_heads does by default; here before any timing
    # compile rllc's kernels for the timed shapes before timing (once per process)
    independent = args.independent_batches
    rllc_run(model, tokens, all_heads, 1, args.precision, independent)

    workdir = tempfile.mkdtemp(prefix="rllc-vs-devinterp-")
    dev_runs, rllc_runs, ratios = [], [], []
    try:
        for rep in range(args.repeats):
            order = ("devinterp", "rllc") if rep % 2 == 0 else ("rllc", "devinterp")
            for side in order:
                log(f"repeat {rep + 1}/{args.repeats}: {side}")
                if side == "devinterp":
                    dev_runs.append(devinterp.run(dev_heads, draws, workdir, independent))
                else:
                    rllc_runs.append(rllc_run(model, tokens, all_heads, draws, args.precision,
                                              independent))
            d, r = dev_runs[-1], rllc_runs[-1]
            if args.full:
                ratios.append(d.total_s / r.total_s)
            else:
                per_layer = PAPER.n_heads
                ratios.append(full_point_seconds(d, per_layer, True)
                              / full_point_seconds(r, per_layer, False))
    finally:
        devinterp.close()
        shutil.rmtree(workdir, ignore_errors=True)

    speedup = statistics.median(ratios)
    med = lambda runs, layer: statistics.median(x.step_s[layer] for x in runs)  # noqa: E731
    layers = range(PAPER.n_layers)
    dev_full = statistics.median(full_point_seconds(x, PAPER.n_heads, True) for x in dev_runs)
    rllc_full = statistics.median(full_point_seconds(x, PAPER.n_heads, False)
                                  for x in rllc_runs)
    flops = rllc_runs[0].flops_per_step
    gflops = (sum(flops[layer] for layer in layers)
              / sum(med(rllc_runs, layer) for layer in layers) / 1e9)
    # int8 runs do most of their work in bf16 (the int8 products are counted as FLOPs too)
    peak = peaks["bfloat16" if args.precision == "int8" else args.precision]
    dev_est, rllc_est = dev_runs[0].llc, rllc_runs[0].llc
    compared = [h for h in all_heads if h in dev_est]
    agreeing = sum(agree(dev_est[h], rllc_est[h]) for h in compared)

    print(f"rllc vs devinterp 2.0.1: paper-shaped model (d_model {PAPER.d_model}, "
          f"{PAPER.n_layers} × {PAPER.n_heads} heads, context {PAPER.n_ctx}, vocabulary "
          f"{PAPER.d_vocab}), batch {BATCH}, ε={EPS}, γ={GAMMA:g}, nβ={NBETA:g}, "
          f"{CHAINS} chains ({'independent' if independent else 'shared'} minibatches), "
          f"{threads} threads, device {args.device}, rllc precision {args.precision}")
    tuned = {True: "tuned (freed memory kept, denormals flushed)", False: "default settings"}
    print(f"process: rllc {tuned[all(tuning.values())]}, devinterp "
          f"{tuned[args.devinterp_tuned]} (each side in its own process)")
    if args.full:
        print(f"full point: {len(all_heads)} heads × {CHAINS} chains × {draws} draws on both "
              "sides")
    else:
        print(f"MEASURED on {draws} draws per chain (devinterp: heads {', '.join(dev_heads)}; "
              f"rllc: all {len(all_heads)}), EXTRAPOLATED per step to the full point "
              f"({len(all_heads)} heads × {CHAINS} chains × {FULL_DRAWS} draws)")
    print(f"\n{'':24}{'devinterp':>12}{'rllc':>12}{'ratio':>9}")
    for layer in layers:
        d, r = med(dev_runs, layer), med(rllc_runs, layer)
        print(f"{f'step, layer-{layer} head (s)':24}{d:12.3f}{r:12.4f}{d / r:8.1f}×")
    print(f"{'full point (s)':24}{dev_full:12.0f}{rllc_full:12.0f}{dev_full / rllc_full:8.1f}×")
    print(f"speedup (median of {args.repeats} alternating repeats): {speedup:.1f}×  "
          f"(each: {', '.join(f'{x:.1f}' for x in ratios)})")
    print(f"rllc: {gflops:.0f} GFLOP/s (matmul FLOPs of its steps) against a measured "
          f"{'bfloat16' if args.precision == 'int8' else args.precision} matmul peak of "
          f"{peak:.0f} GFLOP/s ({100 * gflops / peak:.0f}%); fp32 peak "
          f"{peaks['float32']:.0f}, bf16 peak {peaks['bfloat16']:.0f}, int8 peak "
          f"{peaks['int8']:.0f} GOP/s")
    # both libraries' estimator (plain) is compared; rllc's paired estimator, on the same
    # traces, shows how much of each standard error is minibatch noise
    paired = rllc_runs[0].paired or {}
    print(f"\n{'head':6}{'devinterp λ̂ ± SE':>22}{'rllc λ̂ ± SE':>22}  agree (2 SE)"
          f"{'rllc paired λ̂ ± SE':>24}")
    for h in all_heads:
        dv = f"{dev_est[h][0]:9.2f} ± {dev_est[h][1]:5.2f}" if h in dev_est else "—"
        rv = f"{rllc_est[h][0]:9.2f} ± {rllc_est[h][1]:5.2f}"
        ok = ("yes" if agree(dev_est[h], rllc_est[h]) else "NO") if h in dev_est else ""
        pv = f"{paired[h][0]:9.2f} ± {paired[h][1]:5.2f}" if h in paired else ""
        print(f"{h:6}{dv:>22}{rv:>22}  {ok:12}{pv:>24}")
    print(f"heads agreeing: {agreeing} of {len(compared)} compared")
    if args.json:
        print(json.dumps({
            "speedup": speedup,
            "heads_agreeing": agreeing,
            "heads_compared": len(compared),
            "gflops": gflops,
            "peak_gflops": peak,
            "peak_gflops_fp32": peaks["float32"],
            "peak_gflops_bf16": peaks["bfloat16"],
            "peak_gops_int8": peaks["int8"],
            "precision": args.precision,
            "extrapolated": not args.full,
            "draws": draws,
            "repeats": args.repeats,
            "ratios": ratios,
            "devinterp_step_s": {str(k): med(dev_runs, k) for k in layers},
            "rllc_step_s": {str(k): med(rllc_runs, k) for k in layers},
            "devinterp_full_point_s": dev_full,
            "rllc_full_point_s": rllc_full,
            "threads": threads,
            "device": args.device,
            "rllc_cpu_tuning": tuning,
            "devinterp_cpu_tuning": args.devinterp_tuned,
            "independent_batches": independent,
            "estimates": {h: {"rllc": rllc_est[h], "devinterp": dev_est.get(h),
                              "rllc_paired": paired.get(h)}
                          for h in all_heads},
        }))


if __name__ == "__main__":
    main()
