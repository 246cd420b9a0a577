"""The CPU thread policy: how many torch threads a process runs and how idle OpenMP
workers wait. Every entry point (the CLI's commands, ``rllc train``, the sweep's Ray
actors and its timing probe) takes its thread count from ``choose_threads`` and its wait
policy from ``wait_policy_env``; nothing else in rllc picks either.

Thread count (``choose_threads``), in order, the first that applies:

1. an explicit count (``--threads N``; ``TrainConfig.threads``, whose default is 1:
   ``threads: null`` hands training to the rules below);
2. ``RLLC_THREADS``, then ``OMP_NUM_THREADS`` (its first entry), when set;
3. one thread when a step does less than ``SMALL_STEP_FLOPS`` floating-point operations
   (all chains and rows together): its kernels are too small to split, so a second
   thread only adds wake-ups and barriers; the deep linear network of ``rllc estimate
   dln`` (≈ 2·10⁴ FLOPs per step) is such a problem;
4. otherwise every core this process may run on (``os.sched_getaffinity``, else
   ``os.cpu_count()``), or the CPUs a Ray actor reserved (``cores=``). The head fast path
   on the paper-shaped model (≈ 10¹² FLOPs per step) keeps all of them.

The choice depends only on those inputs (affinity mask, problem size, overrides), never
on the machine's current load, so a result's thread count (recorded as
``SamplingResult.extra["threads"]``) is reproducible.

Wait policy (``set_wait_policy``, ``wait_policy_env``): where the user set neither
``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``, ``OMP_WAIT_POLICY=PASSIVE`` with
``GOMP_SPINCOUNT=10000``. By default libgomp's idle workers spin for 300,000 iterations
after each parallel region; on a shared machine a spinning worker takes a core from
another process and a descheduled one stalls every barrier (measured on 2 cores: the
default ``rllc estimate dln`` 3× slower beside one busy process). Passive workers sleep
in the kernel, and Intel's and LLVM's runtimes honour the same variable; libgomp's
passive policy means a spin count of 0, which made the head fast path's layer-0 steps
7–16% slower on an idle machine (waking a sleeping worker for each of a step's many
parallel regions), so libgomp workers spin 10,000 iterations first: the fast path's
steps within 3% of spinning's when alone and within 7% of passive's beside a busy core,
where spinning's are 1.3× slower (``benchmarks/README.md``, ``contention.py --wait``). What the user set wins (``OMP_WAIT_POLICY``,
``GOMP_SPINCOUNT``, ``KMP_BLOCKTIME``). OpenMP reads these when the runtime loads, i.e. at
``import torch``, so they must be set before that: ``rllc.cli`` calls
``set_wait_policy`` first thing, Ray workers get them through ``wait_policy_env``
(``runtime_env={"env_vars": …}``), and a script using rllc as a library calls
``set_wait_policy()`` before importing torch.

This module imports nothing heavy (torch only inside ``use_threads``), so it can run
before torch loads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, MutableMapping

#: Floating-point operations per SGLD step (all rows together, ``dense_step_flops``) below
#: which a problem runs on one thread. Measured on the 2-core development machine with the
#: general (vmapped) sampler on MLPs of growing width, 16 chains, passive wait (``python
#: benchmarks/contention.py --crossover``, figures in ``benchmarks/README.md``): two
#: threads took 1.3–2.4× as long as one up to ≈ 3·10⁷ FLOPs per step, broke even at
#: ≈ 2.4·10⁸ and were 1.1–1.3× faster from ≈ 5·10⁸. The DLN of ``rllc estimate dln`` is
#: ≈ 2·10⁴; the head fast path on the paper-shaped model 2–9·10¹¹ (one layer's 32 rows).
SMALL_STEP_FLOPS = 3e8

#: The variables of OpenMP's idle wait that rllc passes on to the processes it starts.
WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
#: rllc's default wait policy, where the user set neither of its variables: sleep when
#: idle, after a short spin in libgomp (≈ 10⁴ pause iterations, well under a millisecond,
#: against its default of 300,000).
DEFAULT_WAIT = {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "10000"}


def affinity_cores() -> int:
    """The CPUs this process may run on: its affinity mask, else ``os.cpu_count()``."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def env_threads(environ: Mapping[str, str] | None = None) -> int | None:
    """The thread count the environment asks for: ``RLLC_THREADS``, else the first entry
    of ``OMP_NUM_THREADS``; None if neither is set. A malformed ``RLLC_THREADS`` is an
    error (``ValueError``); a malformed ``OMP_NUM_THREADS`` is ignored, as torch does."""
    env = os.environ if environ is None else environ
    raw = env.get("RLLC_THREADS", "").strip()
    if raw:
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise ValueError(f"RLLC_THREADS must be a positive integer, got {raw!r}")
        return value
    raw = env.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if raw.isdigit() and int(raw) >= 1:
        return int(raw)
    return None


def choose_threads(
    step_flops: float | None = None,
    *,
    cores: float | None = None,
    threads: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """The torch thread count for a problem (see the module's docstring for the rules).

    Args:
        step_flops: floating-point operations of one SGLD (or training) step, all rows
            together; None when unknown (then the cores are used).
        cores: CPUs the work may use (a Ray actor's ``num_cpus``); default: this
            process's affinity mask.
        threads: an explicit count, which wins over everything.
        environ: the environment to read overrides from (default ``os.environ``).
    """
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"threads must be ≥ 1, got {threads}")
        return int(threads)
    asked = env_threads(environ)
    if asked is not None:
        return asked
    if step_flops is not None and step_flops < SMALL_STEP_FLOPS:
        return 1
    return affinity_cores() if cores is None else max(1, int(cores))


def dense_step_flops(num_params: float, tokens: float, rows: float = 1) -> float:
    """Rough FLOPs of a forward and backward pass through ``num_params`` dense weights for
    ``tokens`` inputs in each of ``rows`` chains: 6 per weight per token (2 forward, 4
    backward). Good to an order of magnitude, which is all ``choose_threads`` needs."""
    return 6.0 * float(num_params) * float(tokens) * float(rows)


def wait_policy_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The wait-policy variables for this process and those it starts: ``DEFAULT_WAIT``
    where the user set neither ``OMP_WAIT_POLICY`` nor ``GOMP_SPINCOUNT``, else the
    user's values (with ``OMP_WAIT_POLICY=PASSIVE`` if only ``GOMP_SPINCOUNT`` was set)."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in WAIT_VARS if env.get(k)}
    if "OMP_WAIT_POLICY" in out or "GOMP_SPINCOUNT" in out:
        out.setdefault("OMP_WAIT_POLICY", DEFAULT_WAIT["OMP_WAIT_POLICY"])
        return out
    return {**DEFAULT_WAIT, **out}


def set_wait_policy(environ: MutableMapping[str, str] | None = None) -> bool:
    """Put rllc's default wait policy into the environment where the user set none (this
    process's OpenMP reads it when torch loads; child processes inherit it). Returns
    whether it came in time, i.e. torch was not imported yet."""
    env = os.environ if environ is None else environ
    for key, value in wait_policy_env(env).items():
        if not env.get(key):  # unset or empty
            env[key] = value
    return "torch" not in sys.modules


def use_threads(
    step_flops: float | None = None,
    *,
    cores: float | None = None,
    threads: int | None = None,
) -> int:
    """``torch.set_num_threads(choose_threads(…))`` (only when it changes: resizing the
    pool is not free) and return the count."""
    import torch

    n = choose_threads(step_flops, cores=cores, threads=threads)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
